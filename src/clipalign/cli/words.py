"""``clipalign words IMAGE CAPTION``: per-word misalignment scores for one pair."""

from __future__ import annotations

import argparse

from rich.console import Console

from clipalign.cli.common import add_pair_arguments, attribute_pair, print_json
from clipalign.viz.terminal import score_line, word_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("words", help="which words of a caption the image contradicts (CLIP4DM)")
    add_pair_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, result = attribute_pair(args)
    if args.json:
        settings = {"model": model.name, "layers": args.layers, "template": args.template}
        print_json({**settings, **result.to_dict()})
    else:
        console = Console()
        console.print(word_table(result))
        console.print(score_line(result))
    return 0
