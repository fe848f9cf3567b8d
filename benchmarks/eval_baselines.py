"""Pointing game of the first-order baselines beside our interactions, on the synthetic world.

Writes the held-out scenes of ``eval_synthetic_world.py`` (200 scenes, seed 2, never seen in training),
and for every object phrase ("red star") with its exact box computes a patch map with our interactions
(default settings, the phrase's token rows summed, as ``clipalign eval pointing-synthetic`` does) and
with each baseline of :data:`clipalign.attribution.baselines.BASELINES` (its defaults, the phrase's own
text embedded; MaskCLIP also without its residual), all with the committed
``src/clipalign/checkpoints/synthetic-clip``. Each map is spread over the image's pixels and scored
with the same ``pointing_game`` (accuracy: the maximum inside the box; energy: the share of positive
mass inside it). Writes ``benchmarks/results/baselines_synthetic.{md,json}``
with the seconds per phrase of each method. Usage: ``python benchmarks/eval_baselines.py``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import machine_info, run_line, write_results
from eval_synthetic_world import MODEL, MODEL_NAME, SCENES, SEED, code_version
from PIL import Image

from clipalign import TokenPatchInteractions, load_model
from clipalign.attribution.baselines import PatchMap, get_baseline
from clipalign.datasets.base import PointingItem
from clipalign.datasets.synthetic import load_synthetic_pointing
from clipalign.evaluation.measures import pointing_game
from clipalign.models.base import ClipAdapter
from clipalign.results import Interactions
from clipalign.synthetic import write_dataset

IG_STEPS = 20
LABELS = {
    "interactions": "interactions (ours, second order, defaults)",
    "maskclip": "MaskCLIP (value path of the last block, with its residual and MLP)",
    "maskclip-bare": "MaskCLIP, `residual=False` (the bare value path)",
    "ig": f"Integrated Gradients (pixels, {IG_STEPS} Gauss–Legendre steps, mean-colour baseline)",
    "clipsurgery": "CLIP Surgery (v–v path, feature surgery against the empty text)",
    "gradeclip": "Grad-ECLIP (gradient-weighted values × loosened attention)",
    "random": "random map (seed 0)",
    "centre": "centred Gaussian",
}
Heatmaps = Callable[[ClipAdapter, Sequence[PointingItem]], list[np.ndarray]]


def interaction_heatmaps(model: ClipAdapter, items: Sequence[PointingItem]) -> list[np.ndarray]:
    """Our heatmaps: one interaction matrix per (image, caption), the phrase's words' rows summed."""
    method = TokenPatchInteractions(model)
    cache: dict[tuple[Path, str], Interactions] = {}
    out = []
    for item in items:
        key = (item.image, item.caption)
        if key not in cache:
            [cache[key]] = method.attribute([item.image], [item.caption], on_error="raise")
        result = cache[key]
        words = [
            i for i, w in enumerate(result.words) if w.start < item.phrase_end and w.end > item.phrase_start
        ]
        out.append(result.span_heatmap(words))
    return out


SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "ig": ("ig", {"steps": IG_STEPS}),
    "maskclip-bare": ("maskclip", {"residual": False}),
}
"""Rows that are not a registered baseline with its defaults: row → (baseline, settings)."""


def baseline_heatmaps(row: str) -> Heatmaps:
    """Heatmaps of one baseline row, every phrase a pair (image, caption, phrase characters)."""
    name, settings = SETTINGS.get(row, (row, {}))

    def run(model: ClipAdapter, items: Sequence[PointingItem]) -> list[np.ndarray]:
        method = get_baseline(name, model, **settings)
        results = method.attribute(
            [it.image for it in items],
            [it.caption for it in items],
            [(it.phrase_start, it.phrase_end) for it in items],
            on_error="raise",
        )
        return [r.heatmap() for r in results if isinstance(r, PatchMap)]

    return run


def evaluate(model: ClipAdapter, items: Sequence[PointingItem], heatmaps: Heatmaps) -> dict[str, Any]:
    """Accuracy and energy over the phrases, and the seconds the method took per phrase."""
    start = time.perf_counter()
    maps = heatmaps(model, items)
    seconds = time.perf_counter() - start
    scored = [pointing_game(heat, item.boxes) for heat, item in zip(maps, items, strict=True)]
    return {
        "accuracy": float(np.mean([hit for hit, _ in scored])),
        "energy": float(np.mean([energy for _, energy in scored])),
        "seconds_per_phrase": seconds / len(items),
    }


def box_fraction(item: PointingItem) -> float:
    """Share of the image inside the phrase's boxes: the energy of a uniform map."""
    with Image.open(item.image) as image:
        width, height = image.size
    return pointing_game(np.ones((height, width)), item.boxes)[1]


def markdown(report: dict[str, Any]) -> str:
    """The results table, ready to quote."""
    machine = report["machine"]
    lines = [
        run_line(report)
        + f"torch {machine['torch']}, transformers {machine['transformers']} · {machine['cpu']}",
        "",
        f"Model `{report['model']}` · {report['scenes']} held-out scenes (seed {report['seed']}) · "
        f"{report['phrases']} object phrases, each with its exact box · uniform-map energy "
        f"{report['uniform_energy']:.3f}",
        "",
        "| method (phrase → patch map) | accuracy | energy | ms / phrase |",
        "|---|--:|--:|--:|",
    ]
    for name, row in report["methods"].items():
        lines.append(
            f"| {LABELS[name]} | {row['accuracy']:.3f} | {row['energy']:.3f} | "
            f"{1000 * row['seconds_per_phrase']:.1f} |"
        )
    lines += [
        "",
        "Accuracy: the map's maximum lies in the object's box; energy: the share of the map's positive "
        "mass inside it (`clipalign.evaluation.measures.pointing_game`, the same scoring as `clipalign eval "
        "pointing-*`). First-order maps embed the phrase alone; ours slices the caption's interaction "
        "matrix at the phrase's tokens. Times are wall-clock on the CPU above, interactions computing one "
        "matrix per caption (shared by its phrases), the baselines batching 16 phrases.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    model = load_model(MODEL, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        annotations = write_dataset(Path(tmp) / "data", n=SCENES, seed=SEED)
        items = load_synthetic_pointing(annotations, annotations.parent / "images")
        methods = {row: baseline_heatmaps(row) for row in LABELS if row != "interactions"}
        methods = {"interactions": interaction_heatmaps, **methods}
        rows = {}
        for name, heatmaps in methods.items():
            rows[name] = evaluate(model, items, heatmaps)
            print(name, rows[name], flush=True)
        uniform = [box_fraction(item) for item in items]
    report = {
        "command": "python benchmarks/eval_baselines.py",
        "code": code_version(),
        "machine": machine_info(),
        "model": MODEL_NAME,
        "scenes": SCENES,
        "seed": SEED,
        "phrases": len(items),
        "uniform_energy": float(np.mean(uniform)),
        "settings": {
            "rows": {row: {"method": m, **kw} for row, (m, kw) in SETTINGS.items()},
            "interactions": TokenPatchInteractions(model).settings.to_dict(),
        },
        "methods": rows,
    }
    write_results("baselines_synthetic", report, markdown(report))


if __name__ == "__main__":
    main()
