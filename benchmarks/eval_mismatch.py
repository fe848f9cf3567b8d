"""The mismatch penalty and the per-class pointing game on the synthetic world, through `clipalign eval`.

Writes the held-out scenes of ``eval_synthetic_world.py`` (seed 2), runs ``clipalign eval mismatch --on
pointing-synthetic`` with the default interaction settings and with ``--exclip``, and ``clipalign eval
pointing-synthetic --per-class`` by shape and by colour, all with the committed synthetic checkpoint,
and writes ``benchmarks/results/mismatch_synthetic.{md,json}`` and the two per-class charts
``benchmarks/results/per_class_synthetic_{shape,color}.png``. Usage: ``python benchmarks/eval_mismatch.py``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, machine_info, run_line, write_results
from eval_synthetic_world import MODEL, MODEL_NAME, SCENES, SEED, code_version, interaction_label

from clipalign.cli.main import main as clipalign
from clipalign.evaluation.mismatch import PUBLISHED, ROWS
from clipalign.synthetic import write_dataset

SETTINGS = {"defaults": [], "--exclip": ["--exclip"]}
"""Mismatch runs: label → extra ``clipalign eval`` options."""
CLASSES = {"shape": [], "color": ["color"]}
"""Per-class runs: the class → the ``--per-class`` argument (shape is the synthetic default)."""


def run(argv: list[str], report: Path) -> dict[str, Any]:
    """One ``clipalign eval`` run and its report.json, the model named by :data:`MODEL_NAME`."""
    assert clipalign(["eval", *argv]) == 0
    result = json.loads(report.read_text())
    result["settings"]["model"] = MODEL_NAME
    return result


def markdown(report: dict[str, Any]) -> str:
    """The results tables, ready to quote."""
    machine = report["machine"]
    selection = next(iter(report["mismatch"].values()))["metrics"]["selection"]
    lines = [
        run_line(report) + f"torch {machine['torch']}, transformers {machine['transformers']}",
        "",
        f"Model `{report['model']}` · {SCENES} held-out scenes (seed {SEED}): "
        f"{selection['two_objects']} captions name exactly two objects with different phrases "
        f"({selection['one_object']} one object, {selection['three_or_more']} three, "
        f"{selection['same_object']} two with the same phrase or boxes)",
        "",
        "| mismatch penalty | " + " | ".join(label for _, label, _ in ROWS) + " | own > cross |",
        "|---|" + "--:|" * (len(ROWS) + 1),
    ]
    for label, result in report["mismatch"].items():
        m = result["metrics"]
        cells = [f"{m[key]['share']:.3f} ({m[key]['matching']}/{m[key]['count']})" for key, _, _ in ROWS]
        lines.append(
            f"| interactions, {label} ({interaction_label(result['settings'])}) | "
            + " | ".join(cells)
            + f" | {m['own_above_cross']:.3f} |"
        )
    published = [f"{PUBLISHED[key]:.3f}" if key in PUBLISHED else "—" for key, _, _ in ROWS]
    lines += [f"| published (arXiv 2408.14153, CLIP on real captions) | {' | '.join(published)} | — |", ""]
    lines += ["| mean attribution | " + " | ".join(label for _, label, _ in ROWS[:2]) + " |", "|---|--:|--:|"]
    for label, result in report["mismatch"].items():
        m = result["metrics"]
        lines.append(f"| {label} | {m['own_positive']['mean']:.3g} | {m['cross_negative']['mean']:.3g} |")
    for by, result in report["per_class"].items():
        per_class = result["metrics"]["per_class"]
        lines += [
            "",
            f"| pointing game per {by} ({result['metrics']['items']} phrases) | items | accuracy | energy "
            "| uniform energy |",
            "|---|--:|--:|--:|--:|",
        ]
        for name, m in per_class["rows"].items():
            figures = " | ".join(f"{m[key]:.3f}" for key in ("accuracy", "energy", "uniform_energy"))
            lines.append(f"| {name} | {m['items']} | {figures} |")
        lines += ["", f"Chart: `benchmarks/results/per_class_synthetic_{by}.png`."]
    lines += [
        "",
        "Own: each phrase's attribution to its own object's box (sum of the phrase tokens' interactions "
        "with every patch, weighted by the share of the patch inside the box) is positive; cross: to the "
        "other object's box, negative. Per class: the pointing game of the default interactions on the "
        "phrases of each shape or colour, sorted by energy; uniform energy = the boxes' share of the image.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        annotations = write_dataset(Path(tmp) / "data", n=SCENES, seed=SEED)
        out = Path(tmp) / "out"
        common = ["--annotations", str(annotations), "--images", str(annotations.parent / "images")]
        common += ["--model", str(MODEL), "--out", str(out), "--no-progress"]
        mismatch_report = out / "mismatch" / "pointing-synthetic" / "report.json"
        mismatch = {
            label: run(["mismatch", "--on", "pointing-synthetic", *common, *extra], mismatch_report)
            for label, extra in SETTINGS.items()
        }
        per_class = {}
        for by, key in CLASSES.items():
            argv = ["pointing-synthetic", *common, "--per-class", *key]
            per_class[by] = run(argv, out / "pointing-synthetic" / "report.json")
            chart = RESULTS_DIR / f"per_class_synthetic_{by}.png"
            shutil.copyfile(out / "pointing-synthetic" / "per_class.png", chart)
    keep = ("settings", "metrics", "seconds")
    report = {
        "command": "python benchmarks/eval_mismatch.py",
        "code": code_version(),
        "machine": machine_info(),
        "model": MODEL_NAME,
        "data": {"scenes": SCENES, "seed": SEED},
        "mismatch": {k: {f: r[f] for f in keep} for k, r in mismatch.items()},
        "per_class": {k: {f: r[f] for f in keep} for k, r in per_class.items()},
    }
    write_results("mismatch_synthetic", report, markdown(report))


if __name__ == "__main__":
    main()
