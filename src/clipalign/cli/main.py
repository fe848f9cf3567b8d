"""Entry point of the ``clipalign`` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clipalign import __version__
from clipalign.cli import demo, download, evaluate, finetune, interactions, models, scan, score, sweep, words
from clipalign.cli.common import HelpFormatter, Parser, run_guarded


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; registering a command imports none of its implementation."""
    parser = argparse.ArgumentParser(
        prog="clipalign",
        description="Where an image and its caption disagree, from a pretrained CLIP model.",
        epilog="Try it offline: clipalign words examples/synthetic/<scene>.png CAPTION --model synthetic",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clipalign {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (words, score, interactions, evaluate, sweep, scan, finetune, demo, download, models):
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
