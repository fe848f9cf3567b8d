"""``clipalign score IMAGE CAPTION [--reference R ...]``: CLIPScore, RefCLIPScore and F-CLIPScore."""

from __future__ import annotations

import argparse

from rich.console import Console

from clipalign.cli.common import add_pair_arguments, attribute_pair, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="CLIPScore, RefCLIPScore (with references) and F-CLIPScore")
    add_pair_arguments(p)
    p.add_argument(
        "--reference", action="append", default=[], help="a reference caption (repeat for several)"
    )
    p.add_argument(
        "--convention",
        default="hessel",
        choices=["hessel", "clip4dm"],
        help="RefCLIPScore: best reference, unscaled (hessel, the default) or the first one ×2.5 (clip4dm: "
        "the CLIP4DM code)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from clipalign.metrics import ref_clip_score, reference_cosines
    from clipalign.results import word_row
    from clipalign.text import CaptionError, validate_caption
    from clipalign.viz.terminal import coloured_caption, score_table

    for reference in args.reference:
        try:
            validate_caption(reference)
        except CaptionError as exc:
            raise CaptionError(f"--reference {reference!r}: {exc}") from None
    model, settings, result, _ = attribute_pair(args)
    ref = None
    if args.reference:
        ref_cos, mask = reference_cosines(model, [args.caption], [args.reference], settings.template)
        ref = float(ref_clip_score(torch.tensor([result.cosine]), ref_cos, mask, args.convention)[0])
    row = word_row(result)
    scores = {
        **{k: row[k] for k in ("caption", "cosine", "clipscore")},
        "refclipscore": ref,
        "f_clipscore": row["f_clipscore"],
        "references": args.reference,
        "reference_convention": args.convention,
        **{k: row[k] for k in ("spans", "truncated_words")},
        "model": model.name,
    }
    if args.json:
        print_json(scores)
        return 0
    console = Console()
    console.print(coloured_caption(result))
    console.print(score_table(result, ref, args.convention))
    return 0
