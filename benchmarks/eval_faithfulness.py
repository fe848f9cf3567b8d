"""Insertion/deletion faithfulness of the pointing methods on the synthetic world, first and second order.

Writes ``--scenes`` held-out scenes (seed 2, never seen in training; 25 by default, so the run takes a few
minutes on a CPU) and runs :func:`clipalign.evaluation.faithfulness.run_faithfulness` — what ``clipalign
eval faithfulness --on pointing-synthetic`` runs — with our interactions (defaults), FIxLIP (at a budget of
2**14 game values: the authors' 2**20 takes about a minute per caption here), Integrated Gradients,
MaskCLIP, CLIP Surgery, Grad-ECLIP, a random map and a centred Gaussian, all with the committed
``src/clipalign/checkpoints/synthetic-clip``, in two settings: the defaults (the caption's cosine tracked,
patches masked to the processor's mean colour) and the phrase's own cosine tracked. The curves of each
are also read with the ``difference`` normalisation (no recomputation: it acts on the cached raw curves),
and fixed patch orders (the phrase's box first, centre first, corner first, edges first) are scored beside.
Writes ``benchmarks/results/faithfulness_synthetic.{md,json,png}`` (the PNG: the default setting's mean
curves). Usage: ``python benchmarks/eval_faithfulness.py [--scenes N]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS_DIR, machine_info, run_line, write_results
from eval_synthetic_world import MODEL, MODEL_NAME, SEED, code_version

from clipalign import load_model
from clipalign.attribution.baselines import BASELINES
from clipalign.attribution.fixlip import FIxLIP
from clipalign.datasets.base import PointingItem
from clipalign.datasets.synthetic import load_synthetic_pointing
from clipalign.evaluation.faithfulness import (
    FLOOR,
    SIDE_TITLES,
    SIDES,
    PairGame,
    area,
    descending,
    normalized,
    run_faithfulness,
)
from clipalign.evaluation.faithfulness_settings import FaithfulnessSettings
from clipalign.images import load_image
from clipalign.images.geometry import box_patch_weights
from clipalign.settings import ModelSpec
from clipalign.synthetic import write_dataset

FIXLIP_BUDGET = 2**14
REFERENCE_ORDERS = ("box-first", "centre-first", "corner-first", "edge-first")
"""Fixed patch orders read beside the methods (default settings, ``difference`` curves): the phrase's exact
box first (by overlap), the patches nearest the image centre first, nearest the top-left corner first,
farthest from the centre first."""
METHODS = ("interactions", "fixlip", "ig", "maskclip", "clipsurgery", "gradeclip", "random", "centre")
RUNS = {
    "defaults (caption cosine, `baseline` mask)": {},
    "phrase cosine, `baseline` mask": {"score": "phrase"},
}
"""Run label → FaithfulnessSettings changes; each run's curves are read with two normalisations."""
NORMALIZATIONS = ("unmasked", "difference")
LABELS = {"fixlip": f"fixlip (budget {FIXLIP_BUDGET:,})", FLOOR: f"{FLOOR} (floor)"}


def reference_orders(model: Any, items: list[PointingItem]) -> dict[str, Any]:
    """Insertion − deletion (image side, caption cosine, ``difference`` curves) of fixed patch orders, and
    the share of the phrases' box area that lies in the central quarter of the patch grid."""
    rows, cols = model.patch_grid
    y, x = np.mgrid[0:rows, 0:cols]
    from_centre = ((y - (rows - 1) / 2) ** 2 + (x - (cols - 1) / 2) ** 2).ravel()
    fixed = {
        "centre-first": descending(-from_centre),
        "corner-first": descending(-(y**2 + x**2).ravel()),
        "edge-first": descending(from_centre),
    }
    central = np.zeros((rows, cols))
    central[rows // 4 : rows - rows // 4, cols // 4 : cols - cols // 4] = 1
    areas: dict[str, list[float]] = {name: [] for name in REFERENCE_ORDERS}
    shares = []
    settings = FaithfulnessSettings(normalize="difference")
    for item in items:
        image = load_image(item.image)
        game = PairGame(model, item, image, settings)
        geometry = model.image_geometry(*image.size)
        weights = sum(box_patch_weights(box, geometry, (rows, cols)) for box in item.boxes)
        shares.append(float((weights * central).sum() / weights.sum()))
        for name, order in {"box-first": descending(weights.ravel()), **fixed}.items():
            curves = normalized(game.curves("image", [order]), settings.normalize)
            assert curves is not None  # never for "difference"
            areas[name].append(area(curves["insertion"]) - area(curves["deletion"]))
    return {
        "difference": {name: float(np.mean(values)) for name, values in areas.items()},
        "central_quarter_box_share": float(np.mean(shares)),
    }


def goal(rows: dict[str, dict[str, Any]]) -> str:
    """Whether our interactions lead every first-order baseline on insertion − deletion, and which lead."""
    ours = rows["interactions"]["difference"]
    ahead = [name for name in BASELINES if name in rows and rows[name]["difference"] >= ours]
    if not ahead:
        return f"met: interactions ({ours:.3f}) ahead of every first-order baseline"
    return f"missed: {', '.join(ahead)} at or above interactions ({ours:.3f})"


def table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """One side's rows, sorted by insertion − deletion (the floor where it falls)."""
    lines = [
        "| method | items | insertion − deletion ↑ | deletion AUC ↓ | insertion AUC ↑ |",
        "|---|--:|--:|--:|--:|",
    ]
    for name, row in sorted(rows.items(), key=lambda kv: -kv[1].get("difference", float("-inf"))):
        lines.append(
            f"| {LABELS.get(name, name)} | {row['items']} | {row['difference']:.3f} | "
            f"{row['deletion_auc']:.3f} | {row['insertion_auc']:.3f} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """Every run's tables, ready to quote."""
    machine = report["machine"]
    lines = [
        run_line(report)
        + f"torch {machine['torch']}, transformers {machine['transformers']} · {machine['cpu']}",
        "",
        f"Model `{report['model']}` · {report['scenes']} held-out scenes (seed {report['seed']}) · "
        f"{report['phrases']} object phrases · curve steps {report['steps']} · floor: "
        f"{report['orderings']} random orders per item · {report['seconds']:.0f} s in all",
    ]
    for label, run in report["runs"].items():
        for how, metrics in run["metrics"].items():
            lines += ["", f"## {label} · curves normalised by `{how}`"]
            for side in SIDES:
                if side in metrics:
                    lines += ["", f"**{SIDE_TITLES[side]}**", "", *table(metrics[side])]
            lines += ["", f"Goal (image side, insertion − deletion): {goal(metrics['image'])}."]
    fixed = report["reference_orders"]
    lines += [
        "",
        "## Fixed orders (defaults, `difference` curves, image side)",
        "",
        "| order | insertion − deletion ↑ |",
        "|---|--:|",
        *(f"| {name} | {value:.3f} |" for name, value in fixed["difference"].items()),
        "",
        f"Share of the phrases' box area in the central quarter of the patch grid: "
        f"{fixed['central_quarter_box_share']:.3f}.",
    ]
    lines += [
        "",
        "Image side: patches masked in the order of each method's map for the phrase; text side: the "
        "caption's word tokens in the order of their interactions with the phrase's box (second-order "
        "methods only); joint: token–patch pairs in the order of their interactions. Masked patches: "
        "all-zero normalised pixels (the processor's mean colour); masked tokens: exCLIP's filler `!`. "
        "`unmasked`: curves divided by the item's unmasked score (items with an unmasked score ≤ 0 are "
        "left out, hence fewer items under the phrase cosine); `difference`: the unmasked score "
        "subtracted (cosine units). Areas: trapezoid rule over the fractions 0…1, averaged over items.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=25, help="held-out scenes (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(MODEL, device="cpu")
    spec = ModelSpec(name=MODEL_NAME)
    base = FaithfulnessSettings()
    runs: dict[str, Any] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        annotations = write_dataset(Path(tmp) / "data", n=args.scenes, seed=SEED)
        items = load_synthetic_pointing(annotations, annotations.parent / "images")
        built = {"fixlip": FIxLIP(model, budget=FIXLIP_BUDGET)}
        for label, changes in RUNS.items():
            runs[label] = {"settings": base.replace(**changes).to_dict(), "metrics": {}}
            for how in NORMALIZATIONS:
                settings = base.replace(**changes, normalize=how)
                outcome = run_faithfulness(
                    "pointing-synthetic",
                    items,
                    model,
                    Path(tmp) / "out" / label,
                    spec=spec,
                    methods=METHODS,
                    settings=settings,
                    built=built,
                )
                runs[label]["metrics"][how] = outcome.metrics
                if not changes and how == base.normalize:
                    shutil.copy(outcome.png_path, RESULTS_DIR / "faithfulness_synthetic.png")
                print(
                    label, how, {n: r["difference"] for n, r in outcome.metrics["image"].items()}, flush=True
                )
        fixed = reference_orders(model, items)
    report = {
        "command": "python benchmarks/eval_faithfulness.py"
        + (f" --scenes {args.scenes}" if args.scenes != 25 else ""),
        "code": code_version(),
        "machine": machine_info(),
        "model": MODEL_NAME,
        "scenes": args.scenes,
        "seed": SEED,
        "phrases": len(items),
        "steps": base.steps,
        "orderings": base.orderings,
        "fixlip_budget": FIXLIP_BUDGET,
        "seconds": time.perf_counter() - start,
        "runs": runs,
        "reference_orders": fixed,
    }
    write_results("faithfulness_synthetic", report, markdown(report))


if __name__ == "__main__":
    main()
