"""``clipalign scan INPUT --out OUT`` and ``clipalign report OUT``: score whole datasets into Parquet."""

from __future__ import annotations

import argparse
import functools
from typing import TYPE_CHECKING, Any

from rich.console import Console

from clipalign import __version__
from clipalign.cli.common import (
    add_model_options,
    add_word_options,
    model_spec,
    open_model,
    print_json,
    printable,
    word_settings,
)
from clipalign.settings import ModelSpec, RaySettings, ScanSettings, WordSettings

if TYPE_CHECKING:
    from clipalign.runners.sources import Columns
    from clipalign.runners.summary import ScanSummary


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scan", help="score every image-caption pair of a dataset into Parquet")
    p.add_argument(
        "input", help="JSONL/CSV/Parquet table, tar shards ('shards/{00000..00099}.tar'), or an image dir"
    )
    p.add_argument("--out", required=True, help="scores.parquet (one file) or a directory of Parquet parts")
    p.add_argument(
        "--captions", help="with an image directory: JSON {file: caption} or [{file_name, caption}]"
    )
    p.add_argument("--image-column", default="image", help="table column with image paths (default: image)")
    p.add_argument(
        "--caption-column", default="caption", help="caption column / tar JSON field (default: caption)"
    )
    p.add_argument("--key-column", help="table column with a unique key (default: the image path)")
    p.add_argument("--base-dir", help="resolve relative image paths here (default: the table's directory)")
    scan_default = ScanSettings()
    p.add_argument(
        "--part-size",
        type=int,
        default=scan_default.part_size,
        help=f"rows per Parquet part, the resume granularity (default: {scan_default.part_size})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=scan_default.workers,
        help="threads that decode and preprocess images, per actor with --engine ray "
        f"(default: {scan_default.workers})",
    )
    p.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="decode JPEGs at reduced size (PIL draft mode, both sides ≥ 2× the model input): faster, "
        "slightly different pixels and scores (default: off)",
    )
    p.add_argument("--overwrite", action="store_true", help="discard earlier output and start again")
    p.add_argument("--histogram", help="also write a PNG histogram of F-CLIPScore")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    add_word_options(p, mode=False)
    _add_ray_options(p)
    p.set_defaults(func=run_scan)

    r = subparsers.add_parser("report", help="summarize a scan's Parquet output again")
    r.add_argument("scores", help="the scan's --out (file or directory)")
    r.add_argument("--histogram", help="write a PNG histogram of F-CLIPScore")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=run_report)


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    """--engine and what :func:`_ray_settings` reads."""
    default = RaySettings()
    group = parser.add_argument_group(
        "engine", "--engine ray runs the scan on a Ray cluster (extra: pip install -e '.[ray]')"
    )
    group.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="local process or Ray Data (default: local)",
    )
    group.add_argument(
        "--num-gpus",
        type=int,
        default=default.num_gpus,
        help="ray: total GPUs, one model actor per GPU (default: 0, CPU only)",
    )
    group.add_argument(
        "--num-cpus",
        type=float,
        default=default.num_cpus,
        help=f"ray: CPUs per actor, its torch threads (default: {default.num_cpus:g})",
    )
    group.add_argument(
        "--concurrency",
        type=int,
        default=default.concurrency,
        help=f"ray: CPU actors when --num-gpus is 0 (default: {default.concurrency})",
    )
    group.add_argument(
        "--ray-address",
        help="ray: cluster to join, e.g. auto or ray://head:10001 (default: RAY_ADDRESS, else a local Ray)",
    )


def _scan_settings(args: argparse.Namespace) -> ScanSettings:
    """Part size, decoding threads, --overwrite and --no-progress as one :class:`ScanSettings`."""
    return ScanSettings(
        part_size=args.part_size,
        workers=args.workers,
        overwrite=args.overwrite,
        jpeg_draft=args.jpeg_draft,
        progress=not args.no_progress,
    )


def _ray_settings(args: argparse.Namespace) -> RaySettings:
    """The --engine ray options as one :class:`RaySettings` (validated only when that engine runs)."""
    return RaySettings(
        num_gpus=args.num_gpus,
        num_cpus=args.num_cpus,
        concurrency=args.concurrency,
        address=args.ray_address,
    )


def _metadata(
    args: argparse.Namespace, columns: Columns, spec: ModelSpec, words: WordSettings
) -> dict[str, Any]:
    """What the output's metadata records (and what a resumed run must match); engine-independent.
    ``jpeg_draft`` changes the scores, so it is recorded when on (absent, it reads as off, as before)."""
    return {
        "clipalign": __version__,
        **spec.to_dict(),
        **words.to_dict(),
        "input": args.input,
        "captions": args.captions,
        "columns": [columns.image, columns.caption, columns.key],
        **({"jpeg_draft": True} if args.jpeg_draft else {}),
    }


def run_scan(args: argparse.Namespace) -> int:
    from clipalign.attribution.words import CLIP4DM
    from clipalign.runners.local import scan
    from clipalign.runners.output import OutputComplete, PartWriter
    from clipalign.runners.sources import Columns, open_source
    from clipalign.runners.summary import summarize

    columns = Columns(args.image_column, args.caption_column, args.key_column)
    spec, words, options = model_spec(args), word_settings(args), _scan_settings(args)
    metadata = _metadata(args, columns, spec, words)
    # a missing input fails here, before any model loads (Ray's read task opens the source again)
    samples = open_source(args.input, columns, args.captions, args.base_dir)
    # so does a bad, busy or complete --out: the writer checks and locks it now
    console = Console()
    try:
        writer = PartWriter(args.out, metadata, options)
    except OutputComplete as done:
        console.print(
            f"{printable(done.out)} is already complete with these settings: nothing to score "
            "(--overwrite scores it again)",
            highlight=False,
            soft_wrap=True,
        )
        _show(summarize(done.out), args.histogram, console)
        return 0
    with writer:
        if args.engine == "ray":
            try:
                from clipalign.runners.ray_engine import scan_ray
            except ImportError as exc:
                raise ValueError(
                    f"--engine ray needs Ray Data: pip install -e '.[ray]' in the clipalign checkout ({exc})"
                ) from exc
            # the sample stream is rebuilt in a Ray task
            source = functools.partial(open_source, args.input, columns, args.captions, args.base_dir)
            cluster = _ray_settings(args)
            result = scan_ray(source, spec, writer, metadata, words=words, options=options, cluster=cluster)
        else:
            attributor = CLIP4DM(open_model(spec), settings=words)
            result = scan(samples, attributor, writer, metadata, options=options)
    if result.resumed_from:
        console.print(f"resumed after {result.resumed_from} items already written")
    _show(summarize(result.output), args.histogram, console)
    console.print(f"wrote {result.output}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from clipalign.runners.summary import histogram, summarize

    summary = summarize(args.scores)
    if args.json:
        print_json(summary.to_dict())
        if args.histogram:
            histogram(summary, args.histogram)
        return 0
    _show(summary, args.histogram, Console())
    return 0


def _show(summary: ScanSummary, histogram_path: str | None, console: Console) -> None:
    from clipalign.runners.summary import histogram

    console.print(summary.table())
    console.print(summary.failure_line(), highlight=False)
    if summary.top_misaligned:
        console.print(
            "most frequent misaligned words: " + ", ".join(f"{w} ({n})" for w, n in summary.top_misaligned)
        )
    if histogram_path:
        console.print(f"histogram: {histogram(summary, histogram_path)}")
