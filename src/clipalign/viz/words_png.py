"""A PNG picture of a word alignment: the image, the caption coloured word by word, scores, colour bar.

Same colours as the heatmaps and the HTML page (green supports, magenta contradicts, centred at 0);
misaligned words are boxed. Built without pyplot, like :mod:`clipalign.viz.heatmap`.
"""

from __future__ import annotations

from typing import Any

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from PIL import Image

from clipalign.results import Word, WordAlignment
from clipalign.viz.layout import Piece, draw, keep_canvas, line_count, line_height, wrap
from clipalign.viz.palette import CMAP, MISALIGNED_EDGE, ink, score_colours, score_norm
from clipalign.viz.terminal import score_line

_FONT = 13.0
_WIDTH = 7.0  # inches: the canvas
_MARGIN = 0.25  # inches around everything
_GAP = 0.1  # inches between caption words on a line
_LEADING = 0.12  # inches between caption lines
_MAX_IMAGE_HEIGHT = 6.0  # inches
_BAR = 0.14  # inches: the colour bar's height
_BAR_LABELS = 0.38  # inches below the bar for its ticks and label


def _style(word: Word, colour: str) -> dict[str, Any]:
    """Text properties of a scored word: on its colour, boxed and bold when misaligned."""
    box = {
        "boxstyle": "round,pad=0.25",
        "facecolor": colour,
        "edgecolor": MISALIGNED_EDGE if word.misaligned else colour,
        "linewidth": 2.2 if word.misaligned else 0,
    }
    return {
        "fontsize": _FONT,
        "color": ink(colour),
        "fontweight": "bold" if word.misaligned else "normal",
        "bbox": box,
    }


def _caption(result: WordAlignment) -> list[Piece]:
    """The caption's words on their colours, then the note on words cut at the context limit."""
    colours = score_colours([w.score for w in result.words])
    pieces = [Piece(w.word, _style(w, c)) for w, c in zip(result.words, colours, strict=True)]
    if result.truncated_words:
        note = f"(+{len(result.truncated_words)} words cut at the context limit)"
        pieces.append(Piece(note, {"fontsize": _FONT, "color": "0.45", "fontstyle": "italic"}))
    return pieces


def _scores(result: WordAlignment) -> list[Piece]:
    """The score line in parts that may go to separate lines."""
    style = {"fontsize": 9, "color": "0.2"}
    return [Piece(part, style) for part in score_line(result).plain.split("   ")]


def words_figure(image: Image.Image, result: WordAlignment, width: float = _WIDTH) -> Figure:
    """The image above its caption (each word on its score's colour, misaligned boxed), the scores and
    the colour scale; every word wrapped within the canvas (a word too long for a line is broken)."""
    fig = Figure(dpi=110)
    available = width - 2 * _MARGIN
    caption = wrap(fig, _caption(result), available, gap=_GAP)
    scores = wrap(fig, _scores(result), available, gap=0.3)
    caption_line, scores_line = line_height(caption, _LEADING), line_height(scores, 0.05)
    caption_h, scores_h = line_count(caption) * caption_line, line_count(scores) * scores_line
    image_h = min(available * image.height / image.width, _MAX_IMAGE_HEIGHT)
    image_w = image_h * image.width / image.height
    height = _MARGIN + image_h + 0.25 + caption_h + 0.15 + scores_h + 0.2 + _BAR + _BAR_LABELS + _MARGIN
    fig.set_size_inches(width, height)
    keep_canvas(fig)

    ax = fig.add_axes(
        ((width - image_w) / 2 / width, 1 - (_MARGIN + image_h) / height, image_w / width, image_h / height)
    )
    ax.imshow(image, interpolation="nearest" if image_h * fig.dpi >= 2 * image.height else "antialiased")
    ax.set_axis_off()
    top = height - _MARGIN - image_h - 0.25
    draw(fig, caption, _MARGIN, top, caption_line)
    draw(fig, scores, _MARGIN, top - caption_h - 0.15, scores_line)

    norm = score_norm([w.score for w in result.words])
    bar = fig.colorbar(
        ScalarMappable(norm, colormaps[CMAP]),
        cax=fig.add_axes((0.25, (_MARGIN + _BAR_LABELS) / height, 0.5, _BAR / height)),
        orientation="horizontal",
    )
    bar.set_label("word score (+ supports, − contradicts); boxed = misaligned", fontsize=9)
    low, high = norm.vmin, norm.vmax  # read after the colour bar, which widens a degenerate scale
    assert low is not None and high is not None  # score_norm sets both ends
    bar.set_ticks([low, 0.0, high], labels=[f"{low:.1e}", "0", f"+{high:.1e}"])
    bar.ax.tick_params(labelsize=8)
    return fig
