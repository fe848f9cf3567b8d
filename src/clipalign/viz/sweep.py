"""Figures of a CLIP4DM sweep (``clipalign sweep``): ε × layers heatmaps and precision–recall curves.

They take plain arrays, so any grid can be drawn; built without pyplot, like :mod:`clipalign.viz.heatmap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

_CMAP = "viridis"


@dataclass(frozen=True)
class Curve:
    """One precision–recall curve: its legend label, the points, and whether it is a reference (dashed)."""

    label: str
    recall: np.ndarray
    precision: np.ndarray
    dashed: bool = False


def epsilon_label(epsilon: float) -> str:
    """ε as the tables and axes print it: ``-5e-05``, ``0``."""
    return f"{epsilon:g}"


def heatmap_figure(
    values: Mapping[str, Mapping[str, np.ndarray]], layers: Sequence[int], epsilons: Sequence[float]
) -> Figure:
    """One panel per template (rows of ``values``) and metric (its columns): a (layers × ε) array, each
    cell written out; a metric keeps one colour scale across templates so that its panels compare.
    NaN cells (no value) stay blank."""
    templates = list(values)
    metrics = list(values[templates[0]])
    width = max(3.2, 0.8 * len(epsilons) + 1.6)
    height = max(2.4, 0.42 * len(layers) + 1.4)
    fig = Figure(figsize=(width * len(metrics), height * len(templates)), dpi=110, layout="constrained")
    axes = fig.subplots(len(templates), len(metrics), squeeze=False)
    cmap = colormaps[_CMAP]
    for col, metric in enumerate(metrics):
        stacked = np.stack([values[t][metric] for t in templates])
        finite = stacked[np.isfinite(stacked)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = Normalize(low, high if high > low else low + 1e-9)
        for row, template in enumerate(templates):
            ax = axes[row, col]
            grid = values[template][metric]
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
            for (i, j), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    shade = cmap(norm(value))
                    ink = "black" if 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.5 else "white"
                    ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8, color=ink)
            ax.set_xticks(range(len(epsilons)), [epsilon_label(e) for e in epsilons], fontsize=8)
            ax.set_yticks(range(len(layers)), [str(n) for n in layers], fontsize=8)
            ax.set_xlabel("ε")
            ax.set_ylabel("text layers")
            ax.set_title(f"{metric}\ntemplate {template}", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    return fig


def pr_figure(panels: Mapping[str, Sequence[Curve]], *, chance: float, positive: str) -> Figure:
    """One panel of precision–recall curves per title; ``chance`` (the share of positives) is the level of
    random scores, drawn as a dotted line; ``positive`` names the positive class on the y axis."""
    fig = Figure(figsize=(5.0 * len(panels), 4.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, curves) in zip(axes, panels.items(), strict=True):
        for curve in curves:
            style = {"linestyle": "--", "color": "black"} if curve.dashed else {}
            ax.step(curve.recall, curve.precision, where="post", label=curve.label, linewidth=1.4, **style)
        ax.axhline(chance, color="0.5", linestyle=":", linewidth=1, label=f"random scores ({chance:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel(f"precision ({positive} captions positive)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="best")
    return fig
