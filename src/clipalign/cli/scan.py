"""``clipalign scan INPUT --out OUT`` and ``clipalign report OUT``: score whole datasets into Parquet."""

from __future__ import annotations

import argparse
import functools
from typing import Any

from rich.console import Console

from clipalign import __version__
from clipalign.attribution.words import CLIP4DM
from clipalign.cli.common import add_model_options, open_model, print_json
from clipalign.runners.local import ScanResult, scan
from clipalign.runners.sources import Columns, open_source
from clipalign.runners.summary import ScanSummary, histogram, summarize


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scan", help="score every image-caption pair of a dataset into Parquet")
    p.add_argument(
        "input", help="JSONL/CSV/Parquet table, tar shards ('shards/{00000..00099}.tar'), or an image dir"
    )
    p.add_argument("--out", required=True, help="scores.parquet (one file) or a directory of Parquet parts")
    p.add_argument(
        "--captions", help="with an image directory: JSON {file: caption} or [{file_name, caption}]"
    )
    p.add_argument("--image-column", default="image", help="table column with image paths (default image)")
    p.add_argument(
        "--caption-column", default="caption", help="caption column / tar JSON field (default caption)"
    )
    p.add_argument("--key-column", help="table column with a unique key (default: the image path)")
    p.add_argument("--base-dir", help="resolve relative image paths here (default: the table's directory)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per forward/backward")
    p.add_argument(
        "--part-size", type=int, default=4096, help="rows per Parquet part (the resume granularity)"
    )
    p.add_argument("--workers", type=int, default=4, help="image decoding threads")
    p.add_argument("--overwrite", action="store_true", help="discard earlier output and start again")
    p.add_argument("--histogram", help="also write a PNG histogram of F-CLIPScore")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--layers", type=int, default=3, help="last text layers averaged (default 3)")
    p.add_argument("--epsilon", type=float, default=-5e-5, help="misalignment threshold (default -5e-5)")
    add_model_options(p)
    ray_group = p.add_argument_group("engine", "--engine ray runs the scan on a Ray cluster (clipalign[ray])")
    ray_group.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="local process or Ray Data (default local)",
    )
    ray_group.add_argument(
        "--num-gpus", type=int, default=0, help="ray: total GPUs, one model actor per GPU (default 0: CPU)"
    )
    ray_group.add_argument(
        "--num-cpus", type=float, default=1.0, help="ray: CPUs per actor, its torch threads (default 1)"
    )
    ray_group.add_argument(
        "--concurrency", type=int, default=1, help="ray: CPU actors when --num-gpus is 0 (default 1)"
    )
    ray_group.add_argument(
        "--ray-address",
        help="ray: cluster to join, e.g. auto or ray://head:10001 (default: RAY_ADDRESS, else a local Ray)",
    )
    p.set_defaults(func=run_scan)

    r = subparsers.add_parser("report", help="summarize a scan's Parquet output again")
    r.add_argument("scores", help="the scan's --out (file or directory)")
    r.add_argument("--histogram", help="write a PNG histogram of F-CLIPScore")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=run_report)


def _settings(args: argparse.Namespace, columns: Columns, model_name: str) -> dict[str, Any]:
    """What the output's metadata records (and what a resumed run must match); engine-independent."""
    return {
        "clipalign": __version__,
        "model": model_name,
        "dtype": args.dtype,
        "layers": args.layers,
        "epsilon": args.epsilon,
        "template": args.template,
        "input": args.input,
        "captions": args.captions,
        "columns": [columns.image, columns.caption, columns.key],
    }


def run_scan(args: argparse.Namespace) -> int:
    columns = Columns(args.image_column, args.caption_column, args.key_column)
    # a missing input fails here, before any model loads (Ray's read task opens the source again)
    samples = open_source(args.input, columns, args.captions, args.base_dir)
    if args.engine == "ray":
        result = _scan_ray(args, columns)
    else:
        model = open_model(args)
        attributor = CLIP4DM(
            model,
            layers=args.layers,
            template=args.template,
            epsilon=args.epsilon,
            batch_size=args.batch_size,
        )
        result = scan(
            samples,
            attributor,
            args.out,
            _settings(args, columns, model.name),
            batch_size=args.batch_size,
            part_size=args.part_size,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    console = Console()
    if result.resumed_from:
        console.print(f"resumed after {result.resumed_from} items already written")
    _show(summarize(result.output), args.histogram, console)
    console.print(f"wrote {result.output}")
    return 0


def _scan_ray(args: argparse.Namespace, columns: Columns) -> ScanResult:
    """``--engine ray``: the same scan on Ray Data (the sample stream is rebuilt in a Ray task)."""
    try:
        from clipalign.runners.ray_engine import scan_ray
    except ImportError as exc:
        raise ValueError(f"--engine ray needs Ray Data: pip install 'clipalign[ray]' ({exc})") from exc
    return scan_ray(
        functools.partial(open_source, args.input, columns, args.captions, args.base_dir),
        str(args.model),
        args.out,
        _settings(args, columns, str(args.model)),
        dtype=args.dtype,
        device=args.device,
        layers=args.layers,
        epsilon=args.epsilon,
        template=args.template,
        batch_size=args.batch_size,
        part_size=args.part_size,
        workers=args.workers,
        num_gpus=args.num_gpus,
        num_cpus=args.num_cpus,
        concurrency=args.concurrency,
        address=args.ray_address,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def run_report(args: argparse.Namespace) -> int:
    summary = summarize(args.scores)
    if args.json:
        print_json(summary.to_dict())
        if args.histogram:
            histogram(summary, args.histogram)
        return 0
    _show(summary, args.histogram, Console())
    return 0


def _show(summary: ScanSummary, histogram_path: str | None, console: Console) -> None:
    console.print(summary.table())
    console.print(summary.failure_line(), highlight=False)
    if summary.top_misaligned:
        console.print(
            "most frequent misaligned words: " + ", ".join(f"{w} ({n})" for w, n in summary.top_misaligned)
        )
    if histogram_path:
        console.print(f"histogram: {histogram(summary, histogram_path)}")
