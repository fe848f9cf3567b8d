"""Heatmaps of token×patch interactions over the original image (matplotlib, PNG).

Colours diverge around 0: green where image and words support each other, magenta where they
contradict; the same convention as the terminal output. Figures are built without pyplot, so
importing this module never changes the user's matplotlib backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from PIL import Image

from clipalign.results import Interactions
from clipalign.viz.layout import Piece, draw, keep_canvas, line_count, line_height, wrap, wrap_text
from clipalign.viz.palette import CMAP, diverging_norm

HIGHLIGHT = "#1b7837"


def _caption(result: Interactions, highlighted: set[int], fontsize: float) -> list[Piece]:
    """The caption's words, the highlighted ones bold and coloured."""
    return [
        Piece(
            w.word,
            {
                "fontsize": fontsize,
                "color": HIGHLIGHT if i in highlighted else "0.15",
                "fontweight": "bold" if i in highlighted else "normal",
            },
        )
        for i, w in enumerate(result.words)
    ]


def _overlay(ax: Axes, image: Image.Image, heat: np.ndarray, norm: TwoSlopeNorm, alpha: float) -> AxesImage:
    ax.imshow(image)
    mappable = ax.imshow(
        np.ma.masked_invalid(heat), cmap=CMAP, norm=norm, alpha=alpha, interpolation="nearest"
    )
    ax.set_axis_off()
    return mappable


def span_figure(
    image: Image.Image,
    result: Interactions,
    span: str | Sequence[int],
    occurrence: int | None = None,
    alpha: float = 0.6,
) -> Figure:
    """The caption (span marked, wrapped within the canvas) above the image with the span's
    interaction map over it, and a colour bar as tall as the image."""
    heat = result.span_heatmap(span, occurrence)
    words = {i for i, w in enumerate(result.words) if set(w.tokens) & set(result.span_rows(span, occurrence))}
    width, margin, bar_room = 7.0, 0.15, 1.25  # inches; the colour bar, its ticks and label on the right
    fig = Figure(dpi=110)
    caption = wrap(fig, _caption(result, words, 10), width - 2 * margin, gap=0.07)
    line_h = line_height(caption, 0.04)
    image_w = width - 2 * margin - bar_room
    image_h = min(image_w * image.height / image.width, 6.0)
    image_w = image_h * image.width / image.height
    height = margin + line_count(caption) * line_h + 0.1 + image_h + margin
    fig.set_size_inches(width, height)
    keep_canvas(fig)
    draw(fig, caption, margin, height - margin, line_h)
    ax = fig.add_axes((margin / width, margin / height, image_w / width, image_h / height))
    mappable = _overlay(ax, image, heat, diverging_norm(heat), alpha)
    cax = fig.add_axes(((margin + image_w + 0.15) / width, margin / height, 0.18 / width, image_h / height))
    fig.colorbar(mappable, cax=cax).set_label("interaction (+ supports, − contradicts)")
    return fig


def word_grid_figure(
    image: Image.Image, result: Interactions, columns: int = 4, alpha: float = 0.6
) -> Figure:
    """One heatmap per caption word (punctuation-only words skipped), sharing one colour scale."""
    indices = [i for i, w in enumerate(result.words) if any(ch.isalnum() for ch in w.word)]
    maps = [result.span_heatmap([i]) for i in indices]
    columns = max(1, min(columns, len(maps)))
    rows = -(-len(maps) // columns)
    width, height = image.size
    panel = 3.2
    fig = Figure(
        figsize=(panel * columns + 1, panel * rows * height / width + 0.6), dpi=100, layout="constrained"
    )
    axes = fig.subplots(rows, columns, squeeze=False)
    norm = diverging_norm(*maps)
    mappable = None
    for ax, i, heat in zip(axes.flat, indices, maps, strict=False):
        mappable = _overlay(ax, image, heat, norm, alpha)
        ax.set_title(wrap_text(fig, result.words[i].word, panel - 0.1, fontsize=11), fontsize=11)
    for ax in axes.flat[len(maps) :]:
        ax.set_axis_off()
    if mappable is not None:
        # a bar is at most `aspect` times as long as it is wide: let it span every row
        bar = fig.colorbar(mappable, ax=axes, fraction=0.02, pad=0.02, aspect=25 * rows)
        bar.set_label("interaction")
    fig.suptitle(wrap_text(fig, result.caption, panel * columns, fontsize=12), fontsize=12)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG."""
    out = Path(path)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out
