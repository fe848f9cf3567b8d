"""``clipalign words IMAGE CAPTION``: per-word misalignment scores for one pair."""

from __future__ import annotations

import argparse

from rich.console import Console

from clipalign.attribution import CLIP4DM
from clipalign.cli.common import (
    add_model_options,
    add_word_options,
    open_model,
    print_json,
    warnings_to_stderr,
)
from clipalign.results import ItemError
from clipalign.viz.terminal import score_line, word_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("words", help="which words of a caption the image contradicts (CLIP4DM)")
    p.add_argument("image", help="image file")
    p.add_argument("caption", help="caption to check")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_model_options(p)
    add_word_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = open_model(args)
    attributor = CLIP4DM(model, layers=args.layers, template=args.template, epsilon=args.epsilon)
    with warnings_to_stderr():
        [result] = attributor.attribute([args.image], [args.caption], mode=args.mode, on_error="raise")
    assert not isinstance(result, ItemError)
    if args.json:
        print_json(
            {"model": model.name, "layers": args.layers, "template": args.template, **result.to_dict()}
        )
    else:
        console = Console()
        console.print(word_table(result))
        console.print(score_line(result))
    return 0
