"""``clipalign eval faithfulness --on POINTING-BENCHMARK ...``: insertion/deletion curves of the pointing
methods (see :mod:`clipalign.evaluation.faithfulness`). Options here; heavy imports only in :func:`run`."""

from __future__ import annotations

import argparse
from typing import Any, get_args

from clipalign.evaluation.faithfulness_settings import (
    CurveNormalize,
    FaithfulnessSettings,
    MaskValue,
    Score,
)
from clipalign.settings import TextReference

ANALYSIS = "faithfulness"
"""The ``eval`` positional choice that runs this analysis."""


def add_options(parser: argparse.ArgumentParser) -> None:
    """The faithfulness options; None = not given, so :class:`FaithfulnessSettings` fills the default."""
    default = FaithfulnessSettings()
    group = parser.add_argument_group("faithfulness (eval faithfulness --on POINTING-BENCHMARK)")
    group.add_argument(
        "--mask-value",
        choices=get_args(MaskValue),
        help="a masked patch becomes: baseline = all-zero normalised pixels (the processor's mean colour, "
        "the interactions' and IG's reference), mean = the image's mean colour, zero = black "
        f"(default: {default.mask_value})",
    )
    group.add_argument(
        "--curve-steps",
        type=int,
        help=f"curve points: the fractions 0, 1/S, ..., 1 of the players masked (default: {default.steps})",
    )
    group.add_argument(
        "--score",
        choices=get_args(Score),
        help="image side: cosine of the masked image with the caption or with the phrase alone "
        f"(default: {default.score})",
    )
    group.add_argument(
        "--curve-normalize",
        choices=get_args(CurveNormalize),
        help="unmasked = curves divided by the unmasked score; range = fully masked 0, unmasked 1; "
        f"difference = minus the unmasked score (default: {default.normalize})",
    )
    group.add_argument(
        "--text-mask",
        choices=get_args(TextReference),
        help=f"a masked token becomes this reference's filler (default: {default.text_mask})",
    )
    group.add_argument(
        "--orderings",
        type=int,
        help=f"random orders averaged into the floor (default: {default.orderings})",
    )
    group.add_argument(
        "--floor-seed", type=int, help=f"seed of the floor's random orders (default: {default.seed})"
    )


def faithfulness_settings(args: argparse.Namespace) -> FaithfulnessSettings:
    """The defaults, changed by the options given."""
    given: dict[str, Any] = {
        "mask_value": args.mask_value,
        "steps": args.curve_steps,
        "score": args.score,
        "normalize": args.curve_normalize,
        "text_mask": args.text_mask,
        "orderings": args.orderings,
        "seed": args.floor_seed,
    }
    return FaithfulnessSettings(**{k: v for k, v in given.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """Load the benchmark named by ``--on``, compute every method's curves (cached), print the tables."""
    from rich.console import Console
    from rich.table import Table

    from clipalign.cli.common import model_spec, open_model, stderr
    from clipalign.cli.evaluate import pointing_methods, pointing_settings
    from clipalign.datasets.base import PointingItem
    from clipalign.evaluation.benchmark import LOADER_OPTIONS, load_items
    from clipalign.evaluation.faithfulness import SIDE_TITLES, SIDES, methods_rows, run_faithfulness

    settings = faithfulness_settings(args)
    args.on = args.on or "pointing-coco"
    interactions = pointing_settings(argparse.Namespace(**{**vars(args), "benchmark": args.on}))
    methods = pointing_methods(args)
    options = {name: getattr(args, name) for name in LOADER_OPTIONS}
    items = load_items(args.on, args.annotations, args.images, limit=args.limit, **options)
    spec = model_spec(args)
    outcome = run_faithfulness(
        args.on,
        [item for item in items if isinstance(item, PointingItem)],
        open_model(spec),
        args.out,
        spec=spec,
        methods=methods,
        interactions=interactions,
        settings=settings,
        progress=not args.no_progress,
        loader=options,
    )
    console = Console()
    console.print(f"faithfulness on {args.on}: {outcome.metrics['items']} items")
    for side in SIDES:
        if side in outcome.metrics:
            header, rows = methods_rows(outcome.metrics[side])
            table = Table(*header, title=SIDE_TITLES[side])
            for row in rows:
                table.add_row(*row)
            console.print(table)
    if outcome.failures_path is not None:
        stderr.print(f"[yellow]some items failed; list: {outcome.failures_path}[/]", soft_wrap=True)
    paths = (outcome.md_path, outcome.json_path, outcome.png_path)
    console.print(f"wrote {', '.join(map(str, paths))}", soft_wrap=True)
    return 0
