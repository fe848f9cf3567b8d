"""``clipalign scan INPUT --out OUT`` and ``clipalign report OUT``: score whole datasets into Parquet."""

from __future__ import annotations

import argparse

from rich.console import Console

from clipalign import __version__
from clipalign.attribution.words import CLIP4DM
from clipalign.cli.common import add_model_options, open_model, print_json
from clipalign.runners.local import scan
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
    p.set_defaults(func=run_scan)

    r = subparsers.add_parser("report", help="summarize a scan's Parquet output again")
    r.add_argument("scores", help="the scan's --out (file or directory)")
    r.add_argument("--histogram", help="write a PNG histogram of F-CLIPScore")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=run_report)


def run_scan(args: argparse.Namespace) -> int:
    columns = Columns(args.image_column, args.caption_column, args.key_column)
    samples = open_source(args.input, columns, args.captions, args.base_dir)
    model = open_model(args)
    settings = {
        "clipalign": __version__,
        "model": model.name,
        "dtype": args.dtype,
        "layers": args.layers,
        "epsilon": args.epsilon,
        "template": args.template,
        "input": args.input,
        "captions": args.captions,
        "columns": [columns.image, columns.caption, columns.key],
    }
    attributor = CLIP4DM(
        model, layers=args.layers, template=args.template, epsilon=args.epsilon, batch_size=args.batch_size
    )
    result = scan(
        samples,
        attributor,
        args.out,
        settings,
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
