"""Heatmaps of token×patch interactions over the original image (matplotlib, PNG).

Colours diverge around 0: green where image and words support each other, magenta where they
contradict; the same convention as the terminal output. Figures are built without pyplot, so
importing this module never changes the user's matplotlib backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea
from PIL import Image

from clipalign.results import Interactions
from clipalign.viz.palette import CMAP, diverging_norm

HIGHLIGHT = "#1b7837"


def _caption_box(result: Interactions, highlighted: set[int], fontsize: float) -> HPacker:
    """The caption as written, the highlighted words bold and coloured."""
    parts: list[Artist] = []
    for i, w in enumerate(result.words):
        props = {"fontsize": fontsize, "color": HIGHLIGHT if i in highlighted else "0.15"}
        if i in highlighted:
            props["fontweight"] = "bold"
        parts.append(TextArea(w.word + " ", textprops=props))
    return HPacker(children=parts, pad=0, sep=0)


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
    """The image with the span's interaction map over it, a colour bar, and the caption, span marked."""
    heat = result.span_heatmap(span, occurrence)
    words = {i for i, w in enumerate(result.words) if set(w.tokens) & set(result.span_rows(span, occurrence))}
    width, height = image.size
    fig = Figure(figsize=(7, 7 * height / width + 0.9), dpi=110)
    ax = fig.subplots()
    mappable = _overlay(ax, image, heat, diverging_norm(heat), alpha)
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("interaction (+ supports, − contradicts)")
    box = AnchoredOffsetbox(
        loc="lower left",
        child=_caption_box(result, words, 10),
        pad=0.1,
        frameon=False,
        bbox_to_anchor=(0.0, 1.01),
        bbox_transform=ax.transAxes,
        borderpad=0.0,
    )
    ax.add_artist(box)
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
        ax.set_title(result.words[i].word, fontsize=11)
    for ax in axes.flat[len(maps) :]:
        ax.set_axis_off()
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, fraction=0.02, pad=0.02).set_label("interaction")
    fig.suptitle(result.caption, fontsize=12)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG."""
    out = Path(path)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out
