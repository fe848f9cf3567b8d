"""``clipalign eval mismatch --on BENCHMARK ...``: the mismatch penalty over a pointing benchmark's
captions that name two objects (see :mod:`clipalign.evaluation.mismatch`)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from clipalign.cli.common import model_spec, open_model


def evaluate_mismatch(args: argparse.Namespace) -> int:
    """Load ``--on``'s items, score their two-object captions with our interactions, print the shares."""
    from clipalign.attribution.interactions import TokenPatchInteractions
    from clipalign.cli.evaluate import pointing_settings, print_failures
    from clipalign.datasets.base import PointingItem
    from clipalign.evaluation.benchmark import LOADER_OPTIONS, load_items
    from clipalign.evaluation.mismatch import mismatch_table, run_mismatch

    if args.method != "interactions" or args.per_class is not None:
        raise ValueError("mismatch scores our interactions: --method and --per-class do not apply")
    on = args.on or "pointing-coco"
    settings = pointing_settings(argparse.Namespace(**{**vars(args), "benchmark": on}))
    options = {name: getattr(args, name) for name in LOADER_OPTIONS}
    items = load_items(on, args.annotations, args.images, **options)
    spec = model_spec(args)
    method = TokenPatchInteractions(open_model(spec), settings=settings)
    outcome = run_mismatch(
        on,
        [it for it in items if isinstance(it, PointingItem)],  # every --on choice loads pointing items
        method,
        args.out,
        model_settings=spec.to_dict(),
        progress=not args.no_progress,
        limit=args.limit,
        loader=options,
    )
    console = Console()
    selection = outcome.metrics["selection"]
    console.print(
        f"mismatch on {on}: {selection['two_objects']} captions naming two objects "
        f"(of {selection['captions']}), {outcome.metrics['failed']} failed"
    )
    header, rows = mismatch_table(outcome.metrics)
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if outcome.failures_path is not None:
        print_failures(outcome.failures_path, "pair")
    console.print(f"wrote {outcome.md_path} and {outcome.json_path}", soft_wrap=True)
    return 0
