"""``clipalign eval BENCHMARK --annotations FILE --images DIR``: a paper benchmark, cached and resumable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from clipalign.cli import faithfulness
from clipalign.cli.common import (
    add_model_options,
    add_quadrature_options,
    add_word_options,
    blocks,
    model_spec,
    open_model,
    stderr,
    word_settings,
)
from clipalign.datasets import BENCHMARK_NAMES, POINTING_NAMES
from clipalign.settings import InteractionSettings, WordSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate on a paper benchmark (FOIL, nocaps-FOIL, HAT, ...)")
    p.add_argument(
        "benchmark",
        choices=(*BENCHMARK_NAMES, "mismatch", faithfulness.ANALYSIS),
        metavar="BENCHMARK",
        help="one of %(choices)s",
    )
    p.add_argument(
        "--on",
        choices=POINTING_NAMES,
        help="mismatch, faithfulness: the pointing benchmark whose captions and boxes are read (default "
        "pointing-coco)",
    )
    p.add_argument(
        "--per-class",
        nargs="?",
        const="category",
        metavar="KEY",
        help="pointing-*: metrics per class (item meta KEY, default category: COCO category, Flickr30k "
        "phrase type, synthetic shape; e.g. color), a sorted table and OUT/BENCHMARK/per_class.png",
    )
    p.add_argument(
        "--annotations", required=True, help="annotation file (or directory) in its original format"
    )
    p.add_argument("--images", required=True, help="directory of the benchmark's images")
    p.add_argument("--out", default="eval-results", help="reports and per-item cache go to OUT/BENCHMARK/")
    p.add_argument("--limit", type=int, help="only the first N items, for a quick look")
    p.add_argument(
        "--nli-model", default=None, help="SeeTRUE-Feedback: NLI classifier (default: bart-large-mnli)"
    )
    p.add_argument("--prompts", help="richhf: Pick-a-Pic prompts file (see clipalign.datasets)")
    p.add_argument("--instances", help="pointing-coco: COCO instances_*.json")
    p.add_argument(
        "--split",
        help="pointing-flickr30k: train, val, test (default, the paper's) or all; "
        "pointing-coco: split of --karpathy (default val)",
    )
    p.add_argument(
        "--karpathy",
        help="pointing-coco: Karpathy's dataset_coco.json; scores the images of its --split only",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    add_word_options(
        p,
        epsilon_help=f"CLIP4DM threshold (default: {WordSettings().epsilon}, or the value the authors "
        "used on the benchmark where it differs)",
    )
    _add_pointing_options(p)
    faithfulness.add_options(p)
    p.set_defaults(func=run)


def _add_pointing_options(parser: argparse.ArgumentParser) -> None:
    """The interaction settings of the pointing games; None = not given, so that --exclip can fill them."""
    group = parser.add_argument_group("interactions (pointing-* benchmarks)")
    group.add_argument(
        "--exclip",
        action="store_true",
        help="exCLIP's settings: 10 right-Riemann steps, its normalisation, last block (the options below "
        "still override)",
    )
    add_quadrature_options(group, given_only=True)
    group.add_argument(
        "--method",
        default="interactions",
        help="comma-separated methods scored side by side: interactions (ours), fixlip (FIxLIP, the "
        "authors' budget: slow), maskclip, ig, clipsurgery, gradeclip, random, centre (first-order "
        "baselines); the first is the headline",
    )


def pointing_settings(args: argparse.Namespace) -> InteractionSettings | None:
    """The pointing games' :class:`InteractionSettings` (None for the other benchmarks, which refuse
    the interaction options): the defaults, or exCLIP's with ``--exclip``, changed by the options given."""
    given = {"steps": args.steps, "rule": args.rule, "normalize": args.normalize, **blocks(args)}
    changes = {name: value for name, value in given.items() if value is not None}
    from clipalign.evaluation.benchmark import is_pointing

    if not is_pointing(args.benchmark):
        if changes or args.exclip or args.method != "interactions":
            raise ValueError(
                "--exclip, --steps, --rule, --normalize, --block and --method apply to pointing-* only"
            )
        return None
    # --batch-size (pairs per call) applies to the pointing games' interactions too
    changes["batch_size"] = args.batch_size
    return InteractionSettings.exclip(**changes) if args.exclip else InteractionSettings(**changes)


def pointing_methods(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--method`` names, checked before anything loads."""
    from clipalign.evaluation.benchmark import POINTING_METHODS

    names = tuple(name.strip() for name in args.method.split(",") if name.strip())
    unknown = [name for name in names if name not in POINTING_METHODS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"--method takes distinct names among {', '.join(POINTING_METHODS)}; got {args.method!r}"
        )
    return names


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "mismatch":
        from clipalign.cli.mismatch import evaluate_mismatch

        return evaluate_mismatch(args)
    if args.benchmark == faithfulness.ANALYSIS:
        return faithfulness.run(args)
    if args.on is not None:
        raise ValueError("--on applies to mismatch and faithfulness only")
    from clipalign.evaluation.benchmark import (
        LOADER_OPTIONS,
        check_class_key,
        default_word_settings,
        is_pointing,
        load_items,
        run_benchmark,
    )

    interactions = pointing_settings(args)
    methods = pointing_methods(args)
    options = {name: getattr(args, name) for name in LOADER_OPTIONS}
    items = load_items(args.benchmark, args.annotations, args.images, limit=args.limit, **options)
    if args.per_class is not None:  # before the model loads
        check_class_key(items, args.per_class)
    spec = model_spec(args)
    pointing = is_pointing(args.benchmark)
    words = None if pointing else word_settings(args, **default_word_settings(args.benchmark))
    outcome = run_benchmark(
        args.benchmark,
        items,
        open_model(spec),
        args.out,
        spec=spec,
        words=words,
        interactions=interactions,
        methods=methods,
        nli_model=args.nli_model,
        progress=not args.no_progress,
        per_class=args.per_class,
    )
    reports = [outcome.md_path, outcome.json_path, *([outcome.chart_path] if outcome.chart_path else [])]
    _print(args.benchmark, outcome.metrics, reports, outcome.failures_path, spec.name)
    return 0


def _print(
    benchmark: str, metrics: dict, reports: list[Path], failures_path: Path | None, model: str
) -> None:
    """The headline table (published, authors' protocol, our variants), per-group rows, failures."""
    from clipalign.evaluation.report import (
        COLUMNS,
        backbone_of,
        group_table,
        headline_table,
        methods_table,
        per_class_table,
    )

    console = Console()
    console.print(f"{benchmark}: {metrics.get('items', 0)} items, {metrics.get('failed', 0)} failed")
    tables = [headline_table(benchmark, metrics, backbone_of(model))]
    for extra in (methods_table(metrics), per_class_table(metrics), group_table(benchmark, metrics)):
        if extra is not None:
            tables.append(extra)
    for header, rows in tables:
        table = Table(*header)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for column in COLUMNS.get(benchmark, ()):
        console.print(f"[bold]{column.label}[/]: {column.legend}")
    if failures_path is not None:
        print_failures(failures_path, "item")
    console.print(f"wrote {' and '.join(map(str, reports))}", soft_wrap=True)


def print_failures(failures_path: Path, unit: str) -> None:
    """On stderr: how many ``unit``s failed, by reason, and the file that lists them."""
    from clipalign.evaluation.report import failures_by_kind

    failures = [json.loads(line) for line in failures_path.read_text(encoding="utf-8").splitlines()]
    reasons = ", ".join(f"{len(r)} {kind}" for kind, r in failures_by_kind(failures).items())
    stderr.print(
        f"[yellow]{len(failures)} {unit}(s) failed ({reasons}); list: {failures_path}[/]", soft_wrap=True
    )
