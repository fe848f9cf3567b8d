"""The faithfulness curves as a PNG: one row per side (image, text, joint), deletion and insertion panels,
one mean normalised curve per method and the random floor dashed. Built without pyplot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SIDE_LABELS = {
    "image": "image side (patches)",
    "text": "text side (tokens)",
    "joint": "joint (token–patch pairs)",
}
FLOOR_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.6}


def plot_curves(
    metrics: dict[str, Any], path: str | Path, *, title: str = "", floor: str = "random order"
) -> Path:
    """Draw each side's mean curves (``metrics[side][method]["curves"]``) into ``path``; returns it.

    The legend gives each method's area (deletion ↓ / insertion ↑); the row named ``floor`` is dashed.
    """
    sides = [side for side in SIDE_LABELS if side in metrics]
    figure = Figure(figsize=(10, 3.2 * max(len(sides), 1)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(len(sides), 1), 2, squeeze=False)
    for row, side in enumerate(sides):
        for col, kind in enumerate(("deletion", "insertion")):
            ax = axes[row][col]
            for name, m in metrics[side].items():
                if "curves" not in m:
                    continue
                curve = np.asarray(m["curves"][kind])
                x = np.linspace(0, 1, len(curve))
                style = FLOOR_STYLE if name == floor else {"linewidth": 1.4}
                ax.plot(x, curve, label=f"{name} ({m[f'{kind}_auc']:.3f})", **style)
            ax.set_title(
                f"{SIDE_LABELS[side]}: {kind} ({'lower' if kind == 'deletion' else 'higher'} is better)"
            )
            ax.set_xlabel(f"fraction of players {'masked' if kind == 'deletion' else 'unmasked'}")
            ax.set_ylabel("normalised score")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out
