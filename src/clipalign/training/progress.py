"""Evaluation during training, the metrics log and its curve.

Each evaluation is a ``clipalign eval`` benchmark run (:func:`~clipalign.evaluation.benchmark.run_benchmark`)
on the current weights, written to ``OUT/eval/step-NNNNNNNN/`` (its own cache, so no step reuses another's
scores). Every training step and every evaluation is one JSON line of ``OUT/metrics.jsonl``;
:func:`draw_curves` draws them into ``OUT/curves.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipalign.datasets.base import MisalignmentItem, PointingItem
from clipalign.models.base import ClipAdapter
from clipalign.settings import InteractionSettings, ModelSpec, WordSettings
from clipalign.training.towers import evaluating, hf_model

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
CURVE_METRICS = ("accuracy", "energy", "LA")
"""The benchmark numbers drawn: pointing-game accuracy and energy, word-level localisation accuracy."""


@dataclass(frozen=True)
class Evaluation:
    """One benchmark to run during training, its items loaded once."""

    benchmark: str
    items: list[MisalignmentItem] | list[PointingItem]
    words: WordSettings | None = None
    interactions: InteractionSettings | None = None
    methods: tuple[str, ...] = ("interactions",)
    label: str = field(default="")

    @property
    def name(self) -> str:
        return self.label or self.benchmark


def evaluate(
    evaluations: Sequence[Evaluation], model: ClipAdapter, out: Path, step: int, dtype: str
) -> dict[str, dict[str, float]]:
    """Run every evaluation on the model's current weights; their scalar metrics by evaluation name.

    The model is in eval mode with gradients off meanwhile, and torch's random state is put back after,
    so an evaluation never changes the course of training.
    """
    from clipalign.evaluation.benchmark import run_benchmark

    results: dict[str, dict[str, float]] = {}
    spec = ModelSpec(name=f"{out.name}@step-{step}", dtype=dtype)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]), evaluating(hf_model(model)):
        for ev in evaluations:
            run = run_benchmark(
                ev.benchmark,
                ev.items,
                model,
                out / "eval" / f"step-{step:08d}" / ev.name,
                spec=spec,
                words=ev.words,
                interactions=ev.interactions,
                methods=ev.methods,
                progress=False,
            )
            results[ev.name] = {
                k: float(v)
                for k, v in run.metrics.items()
                if isinstance(v, (int, float)) and k not in ("items",)
            }
    return results


class MetricsLog:
    """``OUT/metrics.jsonl``: one JSON object per line, each with its ``step``."""

    def __init__(self, path: Path, *, resume_at: int | None, enabled: bool = True) -> None:
        """Start the log; when resuming at step ``resume_at`` keep only the lines up to that step (a killed
        run may have logged steps that the resumed one does again)."""
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept: list[str] = []
        if resume_at is not None and path.is_file():
            kept = [
                line
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_at
            ]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics log."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def draw_curves(metrics: Path, out: Path, title: str = "") -> Path:
    """The training loss per step and each evaluation's :data:`CURVE_METRICS` per step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    panels = 2 if evals else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="loss")
    if any(r.get("l2_init") for r in train):
        ax.plot(
            [r["step"] for r in train], [r["l2_init"] for r in train], lw=1, label="L2 to initial weights"
        )
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if evals:
        ax = axes[0][1]
        for name in dict.fromkeys(n for r in evals for n in r["eval"]):
            for metric in CURVE_METRICS:
                points = [
                    (r["step"], r["eval"][name][metric]) for r in evals if metric in r["eval"].get(name, {})
                ]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o", ms=3, label=f"{name} {metric}")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out metric")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
