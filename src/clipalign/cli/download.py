"""``clipalign download nocaps|richhf --annotations FILE --out DIR``: a benchmark's images, resumable.

Only argparse is imported here; the download code (and Pillow, pyarrow) load when the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

FAILURES_NAME = "download-failures.jsonl"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "download", help="fetch a benchmark's images (nocaps-FOIL, Rich-HF), resumable and verified"
    )
    which = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    nocaps = which.add_parser(
        "nocaps", help="nocaps-FOIL images from the coco_url of nocaps' validation captions file"
    )
    nocaps.add_argument("--annotations", required=True, help="nocaps-val-foil.json")
    nocaps.add_argument("--meta", required=True, help="nocaps_val_4500_captions.json (maps names to URLs)")
    richhf = which.add_parser("richhf", help="Rich-HF images and prompts from Pick-a-Pic v1 Parquet files")
    richhf.add_argument("--annotations", required=True, help="Rich-HF test.tfrecord")
    richhf.add_argument(
        "--pickapic",
        required=True,
        help="a Pick-a-Pic v1 Parquet file or folder of them (with jpg_0/jpg_1, or image_0_url/image_1_url)",
    )
    for sub in (nocaps, richhf):
        _add_common(sub)
        sub.set_defaults(func=run)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder the images go to (created if needed)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--retries", type=int, default=3, help="retries per file after the first try (default 3)")
    p.add_argument(
        "--backoff", type=float, default=1.0, help="seconds before the first retry, doubling (default 1)"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--checksums", help="md5sum-style file ('<md5>  <file name>' lines) to verify against")
    p.add_argument(
        "--failures", help=f"where failed files are listed, one JSON line each (default OUT/{FAILURES_NAME})"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _need_file(path: str, what: str) -> Path:
    """``path`` as a Path; a missing file is a one-line error instead of a traceback."""
    if not Path(path).exists():
        raise ValueError(f"{what} not found: {path}")
    return Path(path)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clipalign.datasets.download import (
        DownloadOptions,
        FileResult,
        FileTask,
        PickAPicImages,
        download_all,
        nocaps_tasks,
        read_checksums,
        richhf_uids,
        write_failures,
    )

    options = DownloadOptions(
        workers=args.workers, retries=args.retries, backoff=args.backoff, timeout=args.timeout
    )
    out = Path(args.out)
    checksums = read_checksums(_need_file(args.checksums, "checksum file")) if args.checksums else None
    annotations = _need_file(args.annotations, "annotation file")
    tasks: list[FileTask | FileResult] | PickAPicImages
    if args.dataset == "nocaps":
        tasks = nocaps_tasks(
            annotations, _need_file(args.meta, "nocaps meta file"), limit=args.limit, checksums=checksums
        )
    else:
        uids = richhf_uids(annotations, limit=args.limit)
        tasks = PickAPicImages(uids, _need_file(args.pickapic, "Pick-a-Pic table"), checksums=checksums)
    failures_path = Path(args.failures) if args.failures else out / FAILURES_NAME

    bar = tqdm(total=len(tasks), unit="file", disable=args.no_progress, file=sys.stderr)

    def report(result: FileResult) -> None:
        bar.update()
        if result.status == "failed":
            bar.write(f"failed: {result.name}: {result.error}", file=sys.stderr)

    with bar:
        summary = download_all(tasks, out, options, on_result=report)
    if isinstance(tasks, PickAPicImages) and tasks.prompts:
        _write_prompts(out / "prompts.json", tasks.prompts)
    write_failures(failures_path, summary.failures)
    line = f"{summary.ok} downloaded, {summary.skipped} already complete, {summary.failed} failed"
    print(line + (f"; failures listed in {failures_path}" if summary.failed else ""))
    return 1 if summary.failed else 0


def _write_prompts(path: Path, prompts: dict[str, str]) -> None:
    """Merge ``prompts`` into ``path`` (uid → prompt, what ``eval richhf --prompts`` reads), atomically."""
    merged: dict[str, str] = {}
    if path.exists():
        merged.update(json.loads(path.read_text(encoding="utf-8")))
    merged.update(prompts)
    temp = path.with_name(f".{path.name}.part")
    temp.write_text(json.dumps(merged, ensure_ascii=False, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(temp, path)
