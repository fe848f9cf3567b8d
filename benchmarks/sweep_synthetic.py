"""CLIP4DM's ablations (ε × text layers × template) on the synthetic world, through `clipalign sweep`.

Writes held-out scenes (seed 2, as ``eval_synthetic_world.py``), runs ``clipalign eval synthetic`` once
with the default settings, then ``clipalign sweep synthetic`` over ε ∈ {−1e-4, −5e-5, −1e-5, 0},
layers 1–4 (the synthetic CLIP has 4 text layers) and the templates none and "A photo depicts ", then
the same sweep again: the first sweep reuses the eval's cell and scores each other (layers, template)
once, the second scores nothing. Results (the table, timings, how much each run scored) go to
``benchmarks/results/sweep_synthetic.{md,json}`` with the heatmap and PR curves as
``sweep_synthetic_heatmap.png`` and ``sweep_synthetic_pr.png``. Usage:
``python benchmarks/sweep_synthetic.py`` (a few minutes on one CPU core).
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, machine_info, run_line, write_results
from eval_synthetic_world import MODEL, MODEL_NAME, SCENES, SEED, code_version

from clipalign.cli.main import main as clipalign
from clipalign.synthetic import write_dataset

GRID = ["--epsilon=-1e-4,-5e-5,-1e-5,0", "--layers", "1,2,3,4", "--template", ",A photo depicts "]
COMMAND = "python benchmarks/sweep_synthetic.py"
FIGURES = {"heatmap.png": "sweep_synthetic_heatmap.png", "pr_curves.png": "sweep_synthetic_pr.png"}


def timed(argv: list[str]) -> float:
    """Run one ``clipalign`` command; its wall time in seconds."""
    start = time.perf_counter()
    assert clipalign(argv) == 0
    return time.perf_counter() - start


def markdown(report: dict[str, Any], table: str) -> str:
    """The sweep's own table (from its ``sweep.md``) under the run's provenance and timings."""
    machine, runs = report["machine"], report["runs"]
    first, again = runs["sweep"], runs["sweep_again"]
    body = table.split("\n", 2)[2].replace(str(MODEL), MODEL_NAME)  # no "# Sweep" title, no local path
    groups = len(report["grid"]["layers"]) * len(report["grid"]["template"])
    return "\n".join(
        [
            run_line(report)
            + f"torch {machine['torch']} ({machine['torch_threads']} thread) · {machine['cpu']}",
            "",
            f"{report['data']['scenes']} held-out scenes (seed {report['data']['seed']}), "
            f"{report['items']} pairs; `clipalign eval synthetic` first (layers 3, ε = −5e-5, template "
            f'"A photo depicts ": {runs["eval"]["seconds"]:.1f} s), then `clipalign sweep synthetic '
            f"{shlex.join(GRID)}` twice: {first['seconds']:.1f} s ({first['scored']} pairs scored by the "
            f"model: {first['scored'] // report['items']} of the {groups} (layers, template) passes, "
            f"the eval's reused; {first['derived']} records derived), "
            f"then {again['seconds']:.1f} s ({again['scored']} scored, {again['derived']} derived). "
            "Times include loading the model.",
            "",
            body.replace("(heatmap.png)", "(sweep_synthetic_heatmap.png)").replace(
                "(pr_curves.png)", "(sweep_synthetic_pr.png)"
            ),
        ]
    )


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        annotations = write_dataset(Path(tmp) / "data", n=SCENES, seed=SEED)
        out = Path(tmp) / "out"
        common = ["--annotations", str(annotations), "--images", str(annotations.parent / "images")]
        common += ["--model", str(MODEL), "--out", str(out), "--no-progress", "--device", "cpu"]
        runs: dict[str, dict[str, Any]] = {"eval": {"seconds": timed(["eval", "synthetic", *common])}}
        for name in ("sweep", "sweep_again"):
            seconds = timed(["sweep", "synthetic", *common, *GRID])
            sweep = json.loads((out / "sweep-synthetic" / "sweep.json").read_text())
            runs[name] = {"seconds": seconds, "scored": sweep["scored"], "derived": sweep["derived"]}
        folder = out / "sweep-synthetic"
        table = (folder / "sweep.md").read_text()
        for source, target in FIGURES.items():
            shutil.copyfile(folder / source, RESULTS_DIR / target)
    report = {
        "command": COMMAND,
        "code": code_version(),
        "machine": machine_info(),
        "model": MODEL_NAME,
        "data": {"scenes": SCENES, "seed": SEED},
        "runs": runs,
        **{k: sweep[k] for k in ("grid", "items", "positive", "pr_epsilon", "best")},
        "settings": {**sweep["settings"], "model": MODEL_NAME},
        "cells": [{k: c[k] for k in ("template", "layers", "epsilon", "headline")} for c in sweep["cells"]],
        "figures": list(FIGURES.values()),
    }
    write_results("sweep_synthetic", report, markdown(report, table))


if __name__ == "__main__":
    main()
