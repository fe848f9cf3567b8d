"""Fine-tuning for grounding, offline: the bundled synthetic CLIP on a shifted world it never saw.

The shifted world (``clipalign.synthetic``, ``world="shifted"``) draws the same layouts as the default
one in six other colours (pink, teal, brown, white, black, lime). This script writes shifted training
scenes (seed 10) as a JSONL of (image, true caption) pairs, held-out shifted scenes (seed 11) and held-out
scenes of the original world (seed 2, never used in training the model), then

1. evaluates the committed ``--model synthetic`` on both held-out sets: pointing game (accuracy,
   energy) with ``clipalign eval pointing-synthetic`` and word-level LA with ``clipalign eval synthetic``;
2. fine-tunes it with ``clipalign finetune`` on the shifted pairs, once per ``--l2-init`` value in
   :data:`L2_INIT` (0: no pull to the starting weights), each run evaluating a subset of the shifted
   held-out set every :data:`EVAL_EVERY` steps (``--eval``), starting with the starting model;
3. evaluates every fine-tuned model on both held-out sets as in 1 (does it improve out of domain, does it
   forget the original world?).

Writes ``benchmarks/results/finetune_synthetic.{md,json}`` and ``finetune_synthetic.png`` (the training
losses and the held-out curves of every run). Usage: ``python benchmarks/finetune_synthetic.py``; one
torch thread, well under 20 minutes on 2 CPU cores (the results file records the time it took).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, machine_info, run_line, write_results
from eval_synthetic_world import code_version

from clipalign.cli.main import main as clipalign
from clipalign.synthetic import write_dataset
from clipalign.training.progress import CURVE_METRICS, read_metrics

TRAIN_SCENES, TRAIN_SEED = 2000, 10
HELDOUT_SCENES = 150
WORLDS = {"shifted": 11, "original": 2}
"""Held-out world → its seed (the original world's seed 2 is the one eval_synthetic_world.py uses)."""
L2_INIT = (0.0, 1.0)
"""``--l2-init`` λ of each run: none, and exCLIP's default weight of its L2 term."""
STEPS, BATCH, LR, WARMUP = 200, 32, 3e-4, 20
EVAL_EVERY, CURVE_ITEMS = 50, 120
"""Held-out curve: every EVAL_EVERY steps on the first CURVE_ITEMS items of the shifted held-out set."""
WORD_LAYERS = 4
"""Text layers for word-level LA: the synthetic CLIP's best (benchmarks/results/synthetic_world.md)."""


def evaluate(model: str, data: dict[str, Path], out: Path) -> dict[str, Any]:
    """Pointing game and word-level LA of ``model`` on one held-out set: the headline numbers."""
    common = ["--annotations", str(data["annotations"]), "--images", str(data["images"])]
    common += ["--model", model, "--out", str(out), "--no-progress"]
    assert clipalign(["eval", "pointing-synthetic", *common]) == 0
    assert clipalign(["eval", "synthetic", *common, "--layers", str(WORD_LAYERS)]) == 0
    pointing = json.loads((out / "pointing-synthetic" / "report.json").read_text())["metrics"]
    words = json.loads((out / "synthetic" / "report.json").read_text())["metrics"]
    return {
        "accuracy": pointing["accuracy"],
        "energy": pointing["energy"],
        "LA": words["LA"],
        "phrases": pointing["items"],
        "pairs": words["items"],
    }


def finetune(model: str, train: Path, l2_init: float, shifted: dict[str, Path], out: Path) -> dict[str, Any]:
    """One ``clipalign finetune`` run; its log and timing."""
    curve = f"--annotations {shifted['annotations']} --images {shifted['images']} --limit {CURVE_ITEMS}"
    started = time.perf_counter()
    argv = ["finetune", str(train), "--model", model, "--out", str(out), "--overwrite", "--no-progress"]
    argv += ["--max-steps", str(STEPS), "--epochs", "100", "--batch-size", str(BATCH), "--lr", str(LR)]
    argv += ["--warmup", str(WARMUP), "--min-lr", "0.1", "--l2-init", str(l2_init), "--seed", "0"]
    argv += ["--eval-every", str(EVAL_EVERY), "--eval", f"pointing-synthetic {curve}"]
    argv += ["--eval", f"synthetic {curve} --layers {WORD_LAYERS}"]
    assert clipalign(argv) == 0
    return {"seconds": time.perf_counter() - started, "log": read_metrics(out / "metrics.jsonl")}


def draw(runs: dict[str, dict[str, Any]], path: Path) -> None:
    """Training loss (left) and held-out shifted-world curves (right) of every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for (label, run), colour in zip(runs.items(), ("C0", "C1", "C2", "C3"), strict=False):
        train = [r for r in run["log"] if "loss" in r]
        left.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, color=colour, label=label)
        evals = [r for r in run["log"] if "eval" in r]
        for metric, style in zip(CURVE_METRICS, ("-", ":", "--"), strict=True):
            bench = "synthetic" if metric == "LA" else "pointing-synthetic"
            xs = [r["step"] for r in evals]
            ys = [r["eval"][bench][metric] for r in evals]
            right.plot(xs, ys, style, marker="o", ms=3, color=colour, label=f"{label}: {metric}")
    left.set(xlabel="step", ylabel="contrastive loss (shifted training pairs)", yscale="log")
    right.set(xlabel="step", ylabel=f"shifted held-out (first {CURVE_ITEMS} items)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    """The before/after table, ready to quote."""
    machine, data = report["machine"], report["data"]
    lines = [
        run_line(report)
        + f"torch {machine['torch']} · {report['seconds'] / 60:.1f} min on {machine['cpu_count']} CPUs "
        f"({machine['torch_threads']} torch thread)",
        "",
        f"Model `synthetic` fine-tuned on {data['train_scenes']} shifted-world scenes "
        f"(seed {data['train_seed']}, true captions only): {STEPS} steps of {BATCH} pairs, AdamW lr {LR:g} "
        f"(warm-up {WARMUP}, cosine to 10 %), weight decay 1e-4. "
        f"Held-out: {HELDOUT_SCENES} scenes per world (shifted seed {WORLDS['shifted']}, "
        f"original seed {WORLDS['original']}); pointing game with the default interactions, word-level LA "
        f"with CLIP4DM layers={WORD_LAYERS}.",
        "",
        "| model | shifted: pointing acc. | shifted: energy | shifted: LA | original: pointing acc. | "
        "original: energy | original: LA | fine-tuning time |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label, row in report["results"].items():
        s, o = row["shifted"], row["original"]
        seconds = f"{row['seconds']:.0f} s" if "seconds" in row else "—"
        lines.append(
            f"| {label} | {s['accuracy']:.3f} | {s['energy']:.3f} | {s['LA']:.3f} | {o['accuracy']:.3f} | "
            f"{o['energy']:.3f} | {o['LA']:.3f} | {seconds} |"
        )
    lines += [
        "",
        "Pointing: the heatmap's maximum inside the object's box (accuracy) and its positive mass there "
        '(energy), for each object\'s "colour shape" phrase. LA: the lowest word of a one-word foil '
        "caption is the changed word. Curves: `finetune_synthetic.png`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    code = code_version()  # the code that runs, before anything can change the working tree
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_annotations = write_dataset(root / "train", TRAIN_SCENES, TRAIN_SEED, world="shifted")
        scenes = json.loads(train_annotations.read_text())["scenes"]
        train = root / "train.jsonl"
        rows = [{"image": f"train/images/{s['file_name']}", "caption": s["caption"]} for s in scenes]
        train.write_text("".join(json.dumps(r) + "\n" for r in rows))
        heldout = {}
        for world, seed in WORLDS.items():
            annotations = write_dataset(
                root / world, HELDOUT_SCENES, seed, world="shifted" if world == "shifted" else "default"
            )
            heldout[world] = {"annotations": annotations, "images": annotations.parent / "images"}
        results: dict[str, dict[str, Any]] = {
            "synthetic (before)": {
                w: evaluate("synthetic", d, root / "eval" / "base" / w) for w, d in heldout.items()
            }
        }
        runs = {}
        for l2 in L2_INIT:
            label = f"fine-tuned, --l2-init {l2:g}" if l2 else "fine-tuned, no --l2-init"
            out = root / f"ft-{l2:g}"
            runs[label] = finetune("synthetic", train, l2, heldout["shifted"], out)
            row = {w: evaluate(str(out), d, root / "eval" / out.name / w) for w, d in heldout.items()}
            results[label] = {**row, "seconds": runs[label]["seconds"]}
        draw(runs, RESULTS_DIR / "finetune_synthetic.png")
    report = {
        "command": "python benchmarks/finetune_synthetic.py",
        "code": code,
        "machine": machine_info(),
        "seconds": time.perf_counter() - started,
        "data": {"train_scenes": TRAIN_SCENES, "train_seed": TRAIN_SEED, "heldout_scenes": HELDOUT_SCENES},
        "settings": {
            "steps": STEPS,
            "batch_size": BATCH,
            "lr": LR,
            "warmup": WARMUP,
            "l2_init": list(L2_INIT),
        },
        "results": results,
        "curves": {label: [r for r in run["log"] if "eval" in r] for label, run in runs.items()},
        "losses": {label: [r["loss"] for r in run["log"] if "loss" in r] for label, run in runs.items()},
    }
    write_results("finetune_synthetic", report, markdown(report))


if __name__ == "__main__":
    main()
