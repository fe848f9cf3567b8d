"""``clipalign interactions IMAGE CAPTION``: which image regions each caption word matches or contradicts."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from rich.console import Console

from clipalign.cli.common import (
    PairError,
    add_interaction_options,
    add_model_options,
    check_output,
    interaction_settings,
    model_spec,
    open_model,
    print_json,
    printable,
    writing,
)

if TYPE_CHECKING:
    from clipalign.attribution.fixlip import WithinModality
    from clipalign.results import Interactions


def _box(value: str) -> tuple[float, float, float, float]:
    """--box x,y,w,h: four finite numbers, width and height > 0 (NaN would give all-NaN scores)."""
    try:
        x, y, w, h = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h (four numbers), got {value!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise argparse.ArgumentTypeError(f"box values must be finite numbers, got {value!r}")
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"box width and height must be > 0, got {value!r}")
    return x, y, w, h


def _indices(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected word indices like 5,6, got {value!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("interactions", help="token×patch interactions (second order), heatmaps")
    p.add_argument("image", help="image file")
    p.add_argument("caption", help="caption")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--span", help="caption phrase to map onto the image, e.g. 'black dog'")
    where.add_argument("--words", type=_indices, help="word indices (0-based) to map, e.g. 5,6")
    p.add_argument("--occurrence", type=int, help="with --span: use only its k-th occurrence (1-based)")
    p.add_argument("--box", type=_box, help="x,y,w,h in original pixels: which words this region supports")
    p.add_argument("--grid", action="store_true", help="one heatmap per word (with --out)")
    p.add_argument("--out", help="write the heatmap (or --grid) as PNG here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--method",
        choices=("interactions", "fixlip"),
        default="interactions",
        help="interactions: ours (integrated Jacobians); fixlip: FIxLIP's weighted Banzhaf interactions "
        "from masked forwards (needs the analysis extra; minutes per pair on a CPU at its budget)",
    )
    p.add_argument(
        "--budget",
        type=int,
        help="fixlip: game values per explanation (default: the authors' 1048576 = 2**20)",
    )
    p.add_argument(
        "--within",
        action="store_true",
        help="fixlip: also the within-modality interactions (token×token, patch×patch), from the "
        "authors' full second-order model (up to 64 patches)",
    )
    add_model_options(p)
    add_interaction_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from clipalign.attribution.interactions import TokenPatchInteractions
    from clipalign.images import describe_source, load_image
    from clipalign.results import ItemError
    from clipalign.text import validate_caption

    if args.occurrence is not None and args.span is None:
        raise ValueError("--occurrence needs --span")
    if args.grid and not args.out:
        raise ValueError("--grid draws one heatmap per word: give --out FILE.png")
    if args.out and not (args.span or args.words or args.grid):
        raise ValueError("--out needs --span, --words or --grid to know what to draw")
    check_output(args.out)
    settings = interaction_settings(args)
    validate_caption(args.caption)
    image = load_image(args.image)
    if args.budget is not None and args.method != "fixlip":
        raise ValueError("--budget applies to --method fixlip only")
    if args.within and args.method != "fixlip":
        raise ValueError("--within applies to --method fixlip only")
    model = open_model(model_spec(args))
    report: dict = {"model": model.name}
    result: Interactions | ItemError
    if args.method == "fixlip":
        from clipalign.attribution.fixlip import FIxLIP

        changes = {"budget": args.budget} if args.budget is not None else {}
        fixlip = FIxLIP(model, within=args.within, **changes)
        [result] = fixlip.attribute([image], [args.caption])  # an Interactions subclass
    else:
        method = TokenPatchInteractions(model, settings=settings)
        [result] = method.attribute([image], [args.caption])
        report["text_reference"] = method.text_reference
    if isinstance(result, ItemError):
        raise PairError(result.error)
    result = replace(result, source=describe_source(args.image))  # the decoded image was attributed
    span = args.span if args.span is not None else args.words
    report.update(result.to_dict())
    if span is not None:
        rows = result.span_rows(span, args.occurrence)
        report["span"] = {
            "span": span,
            "rows": rows,
            "grid_values": result.span_grid(span, args.occurrence).tolist(),
        }
    if args.box is not None:
        words = result.box_word_scores(args.box)
        report["box"] = {
            "box": list(args.box),
            "words": [{"word": w, "score": s} for w, s in words],
            "tokens": result.box_token_scores(args.box).tolist(),
        }
    if args.out:
        from clipalign.viz.heatmap import save, span_figure, word_grid_figure

        fig = (
            word_grid_figure(image, result)
            if args.grid
            else span_figure(image, result, span, args.occurrence)
        )
        with writing(args.out):
            report["out"] = str(save(fig, args.out))
    if args.json:
        print_json(report)
    else:
        _print_summary(result, report)
    return 0


def _print_summary(result: Interactions, report: dict) -> None:
    """The result in words: completeness, each word against the whole image (and the box), the span's
    patch grid; every number signed and in full, the span's words marked."""
    from clipalign.viz.terminal import completeness_line, grid_tables, interaction_table

    console = Console()
    console.print(str(result), highlight=False)
    console.print(completeness_line(result), highlight=False)
    box = report.get("box")
    selected = (
        {i for i, w in enumerate(result.words) if set(w.tokens) & set(report["span"]["rows"])}
        if "span" in report
        else None
    )
    console.print(
        interaction_table(
            result,
            box_scores=[w["score"] for w in box["words"]] if box else None,
            box_name="box " + ",".join(f"{v:g}" for v in box["box"]) if box else "box",
            selected=selected,
        )
    )
    if "span" in report:
        rows, cols = result.grid
        title = f"span {report['span']['span']!r} on the {rows}×{cols} patch grid, top row first"
        for table in grid_tables(report["span"]["grid_values"], title, console.width):
            console.print(table)
    within = getattr(result, "within", None)
    if within is not None:
        for line in within_lines(result, within):
            console.print(line, highlight=False)
    if "out" in report:
        console.print(f"wrote {printable(report['out'])}", highlight=False)


def within_lines(result: Interactions, within: WithinModality, count: int = 3) -> list[str]:
    """FIxLIP's strongest within-modality pairs in words: tokens by their text, patches by (row, column)."""
    cols = result.grid[1]

    def patch(k: int) -> str:
        return f"({k // cols},{k % cols})"

    token_pairs = within.strongest("tokens", count)
    patch_pairs = within.strongest("patches", count)
    tokens = ", ".join(f"{result.tokens[a]!r}–{result.tokens[b]!r} {v:+.4g}" for a, b, v in token_pairs)
    patches = ", ".join(f"{patch(a)}–{patch(b)} {v:+.4g}" for a, b, v in patch_pairs)
    return [
        f"strongest token×token: {tokens or 'none'}",
        f"strongest patch×patch (row,col): {patches or 'none'}",
    ]
