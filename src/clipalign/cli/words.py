"""``clipalign words IMAGE CAPTION``: per-word misalignment scores for one pair."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.console import Console

from clipalign.cli.common import (
    add_pair_arguments,
    attribute_pair,
    check_output,
    print_json,
    printable,
    stderr,
    writing,
)

if TYPE_CHECKING:
    from PIL import Image

    from clipalign.results import WordAlignment


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("words", help="which words of a caption the image contradicts (CLIP4DM)")
    add_pair_arguments(p)
    p.add_argument("--html", help="also write a self-contained HTML page (image, coloured words, scores)")
    p.add_argument("--png", help="also write the same picture as PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipalign.viz.terminal import coloured_caption, score_line, word_table

    check_output(args.html)
    check_output(args.png)
    model, settings, result, image = attribute_pair(args)
    if args.html or args.png:
        _write_pictures(args, image, result, model.name)
    if args.json:
        print_json(
            {
                "model": model.name,
                "layers": settings.layers,
                "template": settings.template,
                **result.to_dict(),
            }
        )
    else:
        console = Console()
        console.print(coloured_caption(result))
        console.print(word_table(result))
        console.print(score_line(result))
    return 0


def _write_pictures(
    args: argparse.Namespace, image: Image.Image, result: WordAlignment, model_name: str
) -> None:
    """--html / --png: the image, the caption coloured word by word, and the scores."""
    from clipalign.viz.heatmap import save
    from clipalign.viz.html import save_html
    from clipalign.viz.words_png import words_figure

    if args.html:
        with writing(args.html):
            written = save_html(image, result, args.html, model_name)
        stderr.print(f"wrote {printable(written)}", highlight=False)
    if args.png:
        with writing(args.png):
            written = save(words_figure(image, result), args.png)
        stderr.print(f"wrote {printable(written)}", highlight=False)
