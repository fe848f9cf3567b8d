"""Text laid out inside a matplotlib canvas: each piece measured as drawn, lines wrapped to a width.

Matplotlib draws text where it is told, even past the figure's edge, and ``bbox_inches="tight"``
counts a text's glyphs but not the box drawn around it; so the pictures measure every piece (its box
and outline included), wrap lines to the width available, break a piece wider than a whole line into
parts, and mark the whole canvas as drawn (:func:`keep_canvas`) so that cropping never cuts a box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


@dataclass(frozen=True)
class Piece:
    """A run of text and its matplotlib text properties (font size, colour, ``bbox``...)."""

    text: str
    style: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Placed:
    """A piece on its line: ``x`` (inches from the left of the text area) is where its drawn box
    starts; the text itself is anchored ``inset`` inches to the right of that."""

    piece: Piece
    line: int
    x: float
    width: float
    height: float
    inset: float


def measure(fig: Figure, renderer: RendererBase, piece: Piece) -> tuple[float, float, float]:
    """Width and height of ``piece`` as drawn (its box and outline included), and how far its text
    starts right of the box's left edge; in inches."""
    text = fig.text(0, 0, piece.text, **piece.style)
    glyphs = text.get_window_extent(renderer)
    patch = text.get_bbox_patch()
    if patch is None:
        text.remove()
        return glyphs.width / fig.dpi, glyphs.height / fig.dpi, 0.0
    text.update_bbox_position_size(renderer)
    drawn = patch.get_window_extent(renderer)
    edge = patch.get_linewidth() * fig.dpi / 72  # the outline is stroked half outside the path
    text.remove()
    width, height = drawn.width + edge, drawn.height + edge
    return width / fig.dpi, height / fig.dpi, (glyphs.x0 - drawn.x0 + edge / 2) / fig.dpi


def renderer_of(fig: Figure) -> RendererBase:
    """An Agg renderer for ``fig`` at its dpi, which measurements and the saved PNG share."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    return canvas.get_renderer()


def _parts(fig: Figure, renderer: RendererBase, piece: Piece, available: float) -> list[Piece]:
    """``piece`` whole if it fits ``available`` inches, else broken into consecutive parts that do."""
    if measure(fig, renderer, piece)[0] <= available:
        return [piece]
    parts, rest = [], piece.text
    while rest:
        low, high = 1, len(rest)  # the longest prefix that fits, one character at least
        while low < high:
            middle = (low + high + 1) // 2
            if measure(fig, renderer, Piece(rest[:middle], piece.style))[0] <= available:
                low = middle
            else:
                high = middle - 1
        parts.append(Piece(rest[:low], piece.style))
        rest = rest[low:]
    return parts


def wrap(fig: Figure, pieces: list[Piece], available: float, gap: float) -> list[Placed]:
    """Greedy lines no wider than ``available`` inches, ``gap`` inches between pieces on a line."""
    renderer = renderer_of(fig)
    placed: list[Placed] = []
    line, x = 0, 0.0
    for piece in (part for whole in pieces for part in _parts(fig, renderer, whole, available)):
        width, height, inset = measure(fig, renderer, piece)
        if x > 0 and x + width > available:
            line, x = line + 1, 0.0
        placed.append(Placed(piece, line, x, width, height, inset))
        x += width + gap
    return placed


def line_count(placed: list[Placed]) -> int:
    """How many lines :func:`wrap` used."""
    return placed[-1].line + 1 if placed else 0


def wrap_text(fig: Figure, text: str, available: float, **style: Any) -> str:
    """``text`` with line breaks (at spaces, or inside a word too long for a line) so that no line is
    wider than ``available`` inches: for titles, which matplotlib does not wrap by measure."""
    renderer = renderer_of(fig)
    lines: list[str] = []
    for word in text.split():
        for part in _parts(fig, renderer, Piece(word, style), available):
            candidate = f"{lines[-1]} {part.text}" if lines else part.text
            if lines and measure(fig, renderer, Piece(candidate, style))[0] <= available:
                lines[-1] = candidate
            else:
                lines.append(part.text)
    return "\n".join(lines)


def draw(fig: Figure, placed: list[Placed], left: float, top: float, line_height: float) -> None:
    """Draw wrapped pieces, the area's left edge at ``left`` and its first line's top at ``top``
    (inches from the figure's lower left; the figure has its final size), lines ``line_height`` apart.

    Positions are given as fractions of the figure, which ``bbox_inches="tight"`` shifts together
    with the axes (inches from the corner would not be).
    """
    width, height = fig.get_size_inches()
    for p in placed:
        fig.text(
            (left + p.x + p.inset) / width,
            (top - (p.line + 0.5) * line_height) / height,
            p.piece.text,
            va="center",
            **p.piece.style,
        )


def line_height(placed: list[Placed], leading: float) -> float:
    """The height of one wrapped line: its tallest piece plus ``leading`` (inches)."""
    return max((p.height for p in placed), default=0.0) + leading


def keep_canvas(fig: Figure) -> None:
    """Mark the whole figure as drawn, so that ``bbox_inches="tight"`` keeps the laid-out canvas
    (text boxes near its edge included) instead of cropping to the glyphs."""
    fig.patches.append(
        Rectangle((0, 0), 1, 1, transform=fig.transFigure, facecolor="none", edgecolor="none", zorder=-10)
    )
