"""``clipalign sweep BENCHMARK``: CLIP4DM's ε × text layers × template grid, over ``eval``'s cache."""

from __future__ import annotations

import argparse

from clipalign.cli.common import add_model_options, add_word_options, model_spec, open_model
from clipalign.datasets import BENCHMARK_NAMES
from clipalign.settings import WordSettings
from clipalign.text.alignment import DEFAULT_TEMPLATE

EPSILONS = "-1e-4,-5e-5,-1e-5,0"
LAYERS = "1,2,3,4,6,12"
TEMPLATES = f",{DEFAULT_TEMPLATE}"
"""The grid of the CLIP4DM paper's ablations: four thresholds, six layer counts, no template and theirs."""

WORD_BENCHMARKS = tuple(name for name in BENCHMARK_NAMES if not name.startswith("pointing"))
"""The benchmarks with word-level annotations (pointing games have no ε, layers or template to sweep)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="ε × text layers × template grid on a word-level benchmark (cached with eval), PR curves",
        description="Score a word-level benchmark at every (ε, layers, template) of a grid: a table, an "
        "ε × layers heatmap per template and metric, and precision-recall curves of F-CLIPScore against "
        "CLIPScore, in OUT/sweep-BENCHMARK/. The model runs once per (layers, template): ε only thresholds "
        "the word scores. Each cell is cached as `clipalign eval` caches those settings (OUT/BENCHMARK/"
        "cache), so earlier eval runs are reused and a rerun or an interrupted sweep computes only what "
        "is missing.",
        conflict_handler="resolve",  # --layers, --epsilon and --template below take lists
    )
    p.add_argument("benchmark", choices=WORD_BENCHMARKS, metavar="BENCHMARK", help="one of %(choices)s")
    p.add_argument(
        "--annotations", required=True, help="annotation file (or directory) in its original format"
    )
    p.add_argument("--images", required=True, help="directory of the benchmark's images")
    p.add_argument(
        "--out",
        default="eval-results",
        help="results go to OUT/sweep-BENCHMARK/, the per-item caches (shared with eval) to OUT/BENCHMARK/",
    )
    p.add_argument("--limit", type=int, help="only the first N items, for a quick look")
    p.add_argument("--prompts", help="richhf: Pick-a-Pic prompts file (see clipalign.datasets)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_options(p)
    add_word_options(p)
    group = p.add_argument_group("grid (comma-separated values)")
    group.add_argument(
        "--epsilon",
        default=EPSILONS,
        help=f"thresholds ε; write --epsilon=-1e-4,... (the leading '-') (default: {EPSILONS})",
    )
    group.add_argument(
        "--layers", default=LAYERS, help=f"numbers of last text layers averaged (default: {LAYERS})"
    )
    group.add_argument(
        "--template",
        default=TEMPLATES,
        help='templates read before the caption; an empty one is "" (default: "","A photo depicts ", i.e. '
        "none and the paper's)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from clipalign.evaluation.benchmark import load_items
    from clipalign.evaluation.sweep import SweepGrid, run_sweep, table

    grid = SweepGrid.parse(epsilon=args.epsilon, layers=args.layers, template=args.template)
    words = WordSettings(mode=args.mode, unit=args.word_unit, batch_size=args.batch_size)
    options = {"prompts": args.prompts}
    items = load_items(args.benchmark, args.annotations, args.images, limit=args.limit, **options)
    spec = model_spec(args)
    outcome = run_sweep(
        args.benchmark,
        items,
        open_model(spec),
        args.out,
        spec=spec,
        grid=grid,
        words=words,
        progress=not args.no_progress,
        loader=options,
    )
    console = Console()
    console.print(
        f"{args.benchmark}: {grid.size} cells · {outcome.scored} items scored by the model, "
        f"{outcome.derived} records derived from cached word scores"
    )
    header, rows = table(outcome.cells, mark=lambda text: f"{text} ★")
    for template in dict.fromkeys(row[0] for row in rows):  # one table per template, in grid order
        rendered = Table(title=f"template {template}")
        for name in header[1:]:
            rendered.add_column(name, overflow="fold")
        for row in rows:
            if row[0] == template:
                rendered.add_row(*row[1:])
        console.print(rendered)
    console.print("★ best in its column")
    written = [outcome.md_path, outcome.json_path, *outcome.figures]
    console.print(f"wrote {', '.join(map(str, written))}", soft_wrap=True, highlight=False)
    return 0
