"""Bar charts of per-class results (``clipalign eval pointing-* --per-class``): a PNG, built without pyplot.

One horizontal bar pair per class, in the table's order (highest energy on top): pointing-game
accuracy and energy, with the energy a uniform heatmap would have (the boxes' share of the image)
marked on each class's energy bar, so a class can be judged against its chance level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_ROW = 0.32  # inches per class
_BAR = 0.38  # bar thickness, in rows
_COLOURS = {"accuracy": "#4c72b0", "energy": "#dd8452"}


def class_bars(per_class: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Draw ``per_class`` (``{"by": key, "rows": {class: pointing metrics}}``) into ``path`` (PNG).

    Classes whose items all failed have no bars. Returns ``path``.
    """
    names = list(per_class["rows"])
    rows = [per_class["rows"][name] for name in names]
    y = np.arange(len(names))[::-1]  # the first class on top
    figure = Figure(figsize=(7.0, 1.2 + _ROW * max(len(names), 1)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for offset, metric in ((_BAR / 2, "accuracy"), (-_BAR / 2, "energy")):
        values = [row.get(metric, np.nan) for row in rows]
        axes.barh(y + offset, values, height=_BAR, color=_COLOURS[metric], label=metric)
    uniform = [row.get("uniform_energy", np.nan) for row in rows]
    axes.scatter(uniform, y - _BAR / 2, marker="|", s=120, color="black", label="uniform energy", zorder=3)
    axes.set_yticks(y, [f"{name} ({row['items']})" for name, row in zip(names, rows, strict=True)])
    axes.set_xlim(0, 1)
    axes.set_xlabel("pointing game")
    axes.set_ylabel(f"{per_class['by']} (items)")
    axes.set_title(title or f"per {per_class['by']}")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=100)
    return out
