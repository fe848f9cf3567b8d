"""The synthetic world end to end through `clipalign eval`, the same code path as the real benchmarks.

Writes held-out scenes (seed 2, never seen in training), runs ``clipalign eval synthetic`` (word-level
LA and AP, ours and under the CLIP4DM authors' protocol) with 3 and 4 text layers, and ``clipalign eval
pointing-synthetic`` (pointing game) with the default interaction settings and with ``--exclip``, all
with the committed ``src/clipalign/checkpoints/synthetic-clip``, and tabulates them beside their
baselines in ``benchmarks/results/synthetic_world.{md,json}``, with the code version and every run's
settings. Usage: ``python benchmarks/eval_synthetic_world.py``.

``--model synthetic-siglip`` runs the same on the committed synthetic SigLIP (sigmoid loss) and writes
``benchmarks/results/synthetic_world_siglip.{md,json}``; another shipped alias ``synthetic-X`` writes
``synthetic_world_X``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import REPO, machine_info, run_line, write_results

from clipalign.cli.main import main as clipalign
from clipalign.datasets import load_synthetic
from clipalign.datasets.base import MisalignmentItem
from clipalign.evaluation.authors import target_of
from clipalign.evaluation.report import AUTHORS
from clipalign.models import MODEL_ALIASES
from clipalign.synthetic import write_dataset
from clipalign.text import split_words

SCENES, SEED = 200, 2
LAYERS = (3, 4)
POINTING = {"defaults": [], "--exclip": ["--exclip"]}
"""Pointing-game runs: label → extra ``clipalign eval`` options."""


def code_version() -> dict[str, Any]:
    """The git commit the run used, and whether the working tree had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}


def model_name(model: Path) -> str:
    """The model as the results name it: relative to the repository, so no local path is committed."""
    return str(model.relative_to(REPO)) if model.is_relative_to(REPO) else str(model)


MODEL = MODEL_ALIASES["synthetic"]
MODEL_NAME = model_name(MODEL)
"""The synthetic CLIP, which the other synthetic-world benchmarks evaluate."""


def results_stem(alias: str) -> str:
    """``synthetic_world`` for the synthetic CLIP, ``synthetic_world_X`` for the shipped ``synthetic-X``."""
    return "synthetic_world" + ("" if alias == "synthetic" else "_" + alias.removeprefix("synthetic-"))


def evaluate(benchmark: str, common: list[str], extra: list[str], out: Path, name: str) -> dict[str, Any]:
    """One ``clipalign eval`` run; its report.json, the model named ``name``."""
    assert clipalign(["eval", benchmark, *common, *extra]) == 0
    report = json.loads((out / benchmark / "report.json").read_text())
    report["settings"]["model"] = name
    return report


def random_word_la(foils: list[MisalignmentItem]) -> dict[str, float]:
    """Expected LA of a uniformly random word: ours (the foil word's position) and the authors' (any
    word whose lower-cased text equals the foil string, so a repeated word counts each time)."""
    ours, authors = [], []
    for item in foils:
        words = [w.text.lower() for w in split_words(item.caption)]
        ours.append(1 / len(words))
        authors.append(words.count(target_of(item)) / len(words))
    return {"ours": float(np.mean(ours)), "authors": float(np.mean(authors))}


def interaction_label(settings: dict[str, Any]) -> str:
    """A pointing row's settings in words, from its report."""
    rule = {"gauss": "Gauss–Legendre", "riemann": "right Riemann"}[settings["rule"]]
    blocks = (settings["text_block"], settings["image_block"])
    block = "last block" if blocks == (-1, -1) else f"blocks {blocks}"
    return (
        f"N={settings['steps']}, {rule}, {settings['normalize']} normalisation, "
        f"{settings['text_reference']} text reference, {block}"
    )


def markdown(report: dict[str, Any]) -> str:
    """The results tables, ready to quote."""
    words, pointing, data = report["word_level"], report["pointing"], report["data"]
    machine = report["machine"]
    first = next(iter(words.values()))
    settings = first["settings"]
    lines = [
        run_line(report) + f"torch {machine['torch']}, transformers {machine['transformers']}",
        "",
        f"Model `{report['model']}` · {data['scenes']} held-out scenes (seed {data['seed']}): "
        f"{data['pairs']} pairs, {data['foils']} one-word foils · {data['phrases']} object phrases · "
        f"word unit `{settings['unit']}`, ε = {settings['epsilon']}, template {settings['template']!r}",
        "",
        f"| word level | LA, ours | LA, {AUTHORS} | AP F-CLIPScore, ours | AP CLIPScore |",
        "|---|--:|--:|--:|--:|",
    ]
    for layers, run in words.items():
        m = run["metrics"]
        ap = m["AP"]["misaligned-positive"]
        lines.append(
            f"| CLIP4DM, layers={layers} | {m['LA']:.3f} | {m['authors']['LA']:.3f} | "
            f"{ap['F-CLIPScore']:.3f} | {ap['CLIPScore']:.3f} |"
        )
    random, chance = report["random"], report["random"]["word_la"]
    lines += [
        f"| random word / random score | {chance['ours']:.3f} | {chance['authors']:.3f} | "
        f"{random['foil_share']:.3f} | {random['foil_share']:.3f} |",
        "",
        "| pointing game (object phrase → heatmap) | accuracy | energy |",
        "|---|--:|--:|",
    ]
    for label, run in pointing.items():
        m = run["metrics"]
        lines.append(
            f"| interactions, {label} ({interaction_label(run['settings'])}) | {m['accuracy']:.3f} | "
            f"{m['energy']:.3f} |"
        )
    base = next(iter(pointing.values()))["metrics"]
    lines += [
        f"| random point / uniform map | {base['random_accuracy']:.3f} | {base['uniform_energy']:.3f} |",
        f"| centre point | {base['centre_accuracy']:.3f} | — |",
        "",
        "LA, ours: the lowest non-punctuation word is the foil word. "
        f"LA, {AUTHORS}: their main.py — the lowest word below ε must equal the foil string (no word "
        "below ε is a miss; a random word hits wherever the foil string recurs). "
        "AP: misaligned (foil) captions positive, ranked by −score; the foil share is "
        "the AP of random scores. Pointing: accuracy = the heatmap's maximum inside the object's box, "
        "energy = positive mass inside it.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        choices=sorted(MODEL_ALIASES),
        default="synthetic",
        help="a checkpoint that ships with clipalign (default: synthetic, the synthetic CLIP)",
    )
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    model = MODEL_ALIASES[args.model]
    name = model_name(model)
    with tempfile.TemporaryDirectory() as tmp:
        annotations = write_dataset(Path(tmp) / "data", n=SCENES, seed=SEED)
        images = annotations.parent / "images"
        out = Path(tmp) / "out"
        common = ["--annotations", str(annotations), "--images", str(images), "--model", str(model)]
        common += ["--out", str(out), "--no-progress"]
        words = {
            str(layers): evaluate("synthetic", common, ["--layers", str(layers)], out, name)
            for layers in LAYERS
        }
        pointing = {
            label: evaluate("pointing-synthetic", common, extra, out, name)
            for label, extra in POINTING.items()
        }
        items = load_synthetic(annotations, images)
    foils = [it for it in items if not it.aligned]
    keep = ("settings", "headline", "metrics", "seconds")
    report = {
        "command": " ".join(["python benchmarks/eval_synthetic_world.py", *map(shlex.quote, given)]),
        "code": code_version(),
        "machine": machine_info(),
        "model": name,
        "data": {
            "scenes": SCENES,
            "seed": SEED,
            "pairs": len(items),
            "foils": len(foils),
            "phrases": next(iter(pointing.values()))["metrics"]["items"],
        },
        "random": {
            "word_la": random_word_la(foils),
            "foil_share": len(foils) / len(items),
        },
        "word_level": {k: {f: r[f] for f in keep} for k, r in words.items()},
        "pointing": {k: {f: r[f] for f in keep} for k, r in pointing.items()},
    }
    write_results(results_stem(args.model), report, markdown(report))


if __name__ == "__main__":
    main()
