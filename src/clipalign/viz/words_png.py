"""A PNG picture of a word alignment: the image, the caption coloured word by word, scores, colour bar.

Same colours as the heatmaps and the HTML page (green supports, magenta contradicts, centred at 0);
misaligned words are boxed. Built without pyplot, like :mod:`clipalign.viz.heatmap`.
"""

from __future__ import annotations

from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from PIL import Image

from clipalign.results import WordAlignment
from clipalign.viz.palette import CMAP, MISALIGNED_EDGE, ink, score_colours, score_norm
from clipalign.viz.terminal import score_line

_FONT = 13.0
_LINE = 0.42  # inches per caption line
_MARGIN = 0.25  # inches
_PAD = 0.16  # inches a word's box adds to its text
_MAX_IMAGE_HEIGHT = 6.0  # inches


def _layout(widths: list[float], available: float, gap: float) -> list[tuple[int, float]]:
    """Greedy wrap: (line, x) of each word, given word widths and the available width (inches)."""
    places, line, x = [], 0, 0.0
    for width in widths:
        if x > 0 and x + width > available:
            line, x = line + 1, 0.0
        places.append((line, x))
        x += width + gap
    return places


def _style(result: WordAlignment, colours: list[str], i: int) -> dict[str, Any]:
    """Text properties of caption item ``i``: a scored word on its colour, or the note on cut words."""
    if i >= len(result.words):
        return {"color": "0.45", "fontstyle": "italic"}
    misaligned = result.words[i].misaligned
    box = {
        "boxstyle": "round,pad=0.25",
        "facecolor": colours[i],
        "edgecolor": MISALIGNED_EDGE if misaligned else colours[i],
        "linewidth": 2.2 if misaligned else 0,
    }
    return {"color": ink(colours[i]), "fontweight": "bold" if misaligned else "normal", "bbox": box}


def words_figure(image: Image.Image, result: WordAlignment, width: float = 7.0) -> Figure:
    """The image above its caption (each word on its score's colour, misaligned boxed) and the scores."""
    scores = [w.score for w in result.words]
    colours = score_colours(scores)
    texts = [w.word for w in result.words]
    if result.truncated_words:
        texts.append(f"[+{len(result.truncated_words)} words cut at the context limit]")
    fig = Figure(dpi=110)
    renderer = FigureCanvasAgg(fig).get_renderer()
    styles = [_style(result, colours, i) for i in range(len(texts))]
    widths = [
        fig.text(0, 0, t, fontsize=_FONT, **s).get_window_extent(renderer).width / fig.dpi
        for t, s in zip(texts, styles, strict=True)
    ]
    fig.texts.clear()
    places = _layout([w + _PAD for w in widths], width - 2 * _MARGIN, gap=0.1)
    lines = places[-1][0] + 1 if places else 1
    image_h = min(width * image.height / image.width, _MAX_IMAGE_HEIGHT)
    image_w = image_h * image.width / image.height
    height = image_h + lines * _LINE + 1.5
    fig.set_size_inches(width, height)

    ax = fig.add_axes(((1 - image_w / width) / 2, 1 - image_h / height, image_w / width, image_h / height))
    ax.imshow(image)
    ax.set_axis_off()
    top = height - image_h - 0.3
    for text, style, (line, x) in zip(texts, styles, places, strict=True):
        fig.text(
            _MARGIN + x + _PAD / 2,
            top - line * _LINE,
            text,
            fontsize=_FONT,
            va="top",
            transform=fig.dpi_scale_trans,
            **style,
        )
    fig.text(
        _MARGIN,
        0.95,
        score_line(result).plain,
        fontsize=9,
        color="0.2",
        transform=fig.dpi_scale_trans,
        wrap=True,
    )
    norm = score_norm(scores)
    bar = fig.colorbar(
        ScalarMappable(norm, colormaps[CMAP]),
        cax=fig.add_axes((0.25, 0.3 / height, 0.5, 0.14 / height)),
        orientation="horizontal",
    )
    bar.set_label("word score (+ supports, − contradicts); boxed = misaligned", fontsize=9)
    low, high = norm.vmin, norm.vmax  # read after the colour bar, which widens a degenerate scale
    assert low is not None and high is not None  # score_norm sets both ends
    bar.set_ticks([low, 0.0, high], labels=[f"{low:.1e}", "0", f"+{high:.1e}"])
    bar.ax.tick_params(labelsize=8)
    return fig
