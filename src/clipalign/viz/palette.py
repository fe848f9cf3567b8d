"""Colours for scores, shared by the HTML and PNG pictures: the heatmaps' diverging map and norm."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm, to_hex, to_rgb

CMAP = "PiYG"
"""The diverging colour map of every picture: magenta below 0 (contradicts), green above (supports)."""

MISALIGNED_EDGE = "#111111"
"""Outline of a misaligned word, in every picture."""


def _peak(*maps: np.ndarray) -> float:
    """The largest |value| over all maps (NaN ignored), or 1 when there are no maps or it is not > 0."""
    peak = max(float(np.nanmax(np.abs(m))) for m in maps) if maps else 0.0
    return peak if peak > 0 else 1.0


def diverging_norm(*maps: np.ndarray) -> TwoSlopeNorm:
    """A colour scale centred at 0 and symmetric, shared by all maps: from −peak to +peak."""
    peak = _peak(*maps)
    return TwoSlopeNorm(vmin=-peak, vcenter=0.0, vmax=peak)


def score_peak(scores: Sequence[float] | np.ndarray) -> float:
    """The end of :func:`score_norm`'s scale for ``scores``: max |score|, or 1 if none is non-zero."""
    values = np.asarray(scores, dtype=np.float64)
    return _peak(values) if values.size else _peak()


def score_norm(scores: Sequence[float] | np.ndarray) -> TwoSlopeNorm:
    """The heatmaps' colour scale for ``scores``: centred at 0, from −peak to +peak (peak = max |score|)."""
    values = np.asarray(scores, dtype=np.float64)
    return diverging_norm(values) if values.size else diverging_norm()


def score_colours(scores: Sequence[float]) -> list[str]:
    """Hex colour of each score on :func:`score_norm`'s scale."""
    values = np.asarray(scores, dtype=np.float64)
    return [to_hex(c) for c in colormaps[CMAP](score_norm(values)(values))]


def gradient(stops: int = 11) -> list[str]:
    """The colour map from −peak to +peak as ``stops`` hex colours (for legends)."""
    return [to_hex(c) for c in colormaps[CMAP](np.linspace(0.0, 1.0, stops))]


def ink(colour: str) -> str:
    """Near-black or white text, whichever reads better on the background ``colour``."""
    r, g, b = to_rgb(colour)
    return "#111111" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "#ffffff"
