"""CPU time per explanation of FIxLIP (weighted Banzhaf, masked forwards) beside our interactions, and
their pointing game on synthetic scenes with exact boxes.

1. Speed: the same held-out synthetic scenes (image + true caption) explained by
   ``TokenPatchInteractions`` (default settings: Gauss–Legendre, N = 10, last blocks) and by
   ``FIxLIP`` (p = 0.5, 64 text coalitions, the authors' pointing-game protocol) with two models: the
   shipped synthetic CLIP (``--model synthetic``, 8×8 patches) at the authors' budget 2**20, and a
   seeded random CLIP with the ``openai/clip-vit-base-patch32`` architecture (7×7 patches; its config
   from ``../shared/data``) at a budget the CPU allows (``--b32-budget``, default 2**14). FIxLIP's time
   is linear in its image coalitions (one image-tower forward each; the 64 text forwards and the fit
   are small), so the B/32 time at 2**20 is also given, extrapolated from the measured one and marked so.
   One warm-up explanation per method, then each pair timed.
2. Pointing game (``--scenes``, 0 to skip): both methods on the pointing items of held-out synthetic
   scenes (each object's "colour shape" phrase and its exact box) with the synthetic CLIP, through the
   same ``score_pointing`` code as ``clipalign eval pointing-synthetic``.

From the repository root: ``python benchmarks/bench_fixlip.py [--quick]``; results in
``benchmarks/results/fixlip_cpu.{json,md}`` (``fixlip_cpu_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from common import (
    B32,
    REPO,
    load_average_1min,
    load_cpu_model,
    machine_info,
    model_configs,
    require_shared_data,
    save_model,
    write_results,
)

from clipalign import load_model
from clipalign.attribution.fixlip import FIxLIP, FIxLIPSettings
from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.datasets.synthetic import load_synthetic_pointing
from clipalign.evaluation.cache import ResultCache
from clipalign.evaluation.runner import pointing_metrics, score_pointing
from clipalign.models.base import ClipAdapter
from clipalign.synthetic import write_dataset

AUTHORS_BUDGET = 2**20  # their pointing game: 64 text coalitions × 2**14 image coalitions
SEED = 2  # held-out scenes, as eval_synthetic_world.py
SYNTHETIC = "synthetic"


def timed(
    method: TokenPatchInteractions | FIxLIP,
    pairs: Sequence[tuple[Path, str]],
    warmup: TokenPatchInteractions | FIxLIP | None,
) -> dict[str, Any]:
    """Seconds per explanation over ``pairs``, after one warm-up explanation by ``warmup`` (the same
    method, for FIxLIP at a small budget: the same code path without minutes of forwards) if given."""
    if warmup is not None:
        warmup.attribute([pairs[0][0]], [pairs[0][1]], on_error="raise")
    seconds = []
    result = None
    for image, caption in pairs:
        start = time.perf_counter()
        [result] = method.attribute([image], [caption], on_error="raise")
        seconds.append(time.perf_counter() - start)
    assert result is not None
    return {
        "seconds": seconds,
        "median": statistics.median(seconds),
        "image_coalitions": getattr(result, "image_coalitions", None),
        "text_coalitions": getattr(result, "text_coalitions", None),
    }


def speed(name: str, model: ClipAdapter, pairs: Sequence[tuple[Path, str]], budget: int) -> dict[str, Any]:
    """Ours and FIxLIP at ``budget`` on ``pairs`` with one model, and the load around the runs.

    Below the authors' budget FIxLIP is also timed at a quarter of it, and its time at the authors'
    budget extrapolated along the line through the two (a fixed part: text forwards, preprocessing,
    the fit; and a part proportional to the image coalitions)."""
    load = [load_average_1min()]
    ours_method = TokenPatchInteractions(model)
    ours = timed(ours_method, pairs, ours_method)
    fixlip = timed(FIxLIP(model, budget=budget), pairs, FIxLIP(model, budget=2**10))
    row: dict[str, Any] = {"model": name, "budget": budget, "ours": ours, "fixlip": fixlip}
    if budget != AUTHORS_BUDGET:
        quarter = timed(FIxLIP(model, budget=budget // 4), pairs, None)
        per_image = (fixlip["median"] - quarter["median"]) / (
            fixlip["image_coalitions"] - quarter["image_coalitions"]
        )
        image_at_authors = AUTHORS_BUDGET // fixlip["text_coalitions"]
        row["fixlip_quarter_budget"] = quarter
        row["fixlip_at_authors_budget_extrapolated"] = fixlip["median"] + per_image * (
            image_at_authors - fixlip["image_coalitions"]
        )
    load.append(load_average_1min())
    row["load_1min"] = load
    return row


def pointing(model: ClipAdapter, annotations: Path, budgets: Sequence[int], out: Path) -> dict[str, Any]:
    """Pointing-game metrics and seconds of ours and of FIxLIP at each of ``budgets`` on the scenes'
    objects, keyed ``interactions`` and ``fixlip-<budget>``."""
    items = load_synthetic_pointing(annotations, annotations.parent / "images")
    methods: dict[str, TokenPatchInteractions | FIxLIP] = {"interactions": TokenPatchInteractions(model)}
    methods.update({f"fixlip-{b}": FIxLIP(model, budget=b) for b in budgets})
    report = {}
    for label, method in methods.items():
        settings = method.settings.to_dict()
        cache = ResultCache(out / label, {"method": label, **settings})
        start = time.perf_counter()
        records = score_pointing(items, method, cache, progress=False)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        report[label] = {"settings": settings, "metrics": pointing_metrics(records), "seconds": seconds}
    return report


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"`{report['command']}` (from the repository root) · {m['date'][:10]} · {m['cpu']}, "
        f"{m['cpu_count']} cores, {m['torch_threads']} torch threads · torch {m['torch']} · fp32, CPU",
        "",
        "| model | method | budget (image × text coalitions) | s / explanation (median) | × ours |",
        "|---|---|---|--:|--:|",
    ]
    for row in report["speed"]:
        ours, fix = row["ours"]["median"], row["fixlip"]
        lines.append(f"| {row['model']} | ours (N = 10, Gauss) | — | {ours:.3g} | 1× |")
        coalitions = f"{fix['image_coalitions']} × {fix['text_coalitions']}"
        lines.append(
            f"| {row['model']} | FIxLIP, p = 0.5 | {row['budget']:,} ({coalitions}) | {fix['median']:.3g} | "
            f"{fix['median'] / ours:,.0f}× |"
        )
        extrapolated = row.get("fixlip_at_authors_budget_extrapolated")
        if extrapolated is not None:
            lines.append(
                f"| {row['model']} | FIxLIP, p = 0.5, **extrapolated** | {AUTHORS_BUDGET:,} "
                f"({AUTHORS_BUDGET // fix['text_coalitions']} × {fix['text_coalitions']}) | "
                f"{extrapolated:.3g} | {extrapolated / ours:,.0f}× |"
            )
    lines += [
        "",
        f"{report['pairs']} held-out synthetic scenes (image + true caption) per model, one warm-up "
        "explanation per method, then each pair timed (tokenising, preprocessing and loading included). "
        "*Ours*: `TokenPatchInteractions(model)` at its defaults. *FIxLIP*: `FIxLIP(model, budget=B)`: "
        "64 text coalitions × B / 64 image coalitions, one image-tower forward per image coalition and "
        "one text-tower forward per text coalition (batches of 64), the B game values their products, "
        "then the weighted least-squares fit; the authors' pointing-game budget is 2**20. An "
        "*extrapolated* row continues the line through the times at the budget shown and at a quarter of "
        "it to the authors' 16,384 image coalitions (FIxLIP's time is a fixed part plus one image forward "
        "per image coalition). 1-min load average around each model's runs: "
        + "; ".join(
            f"{r['model']} {r['load_1min'][0]:.1f} → {r['load_1min'][1]:.1f}" for r in report["speed"]
        )
        + " (the machine is shared: absolute times are upper bounds, the ratios the point).",
    ]
    if report.get("pointing"):
        p = report["pointing"]
        lines += [
            "",
            f"Pointing game, synthetic CLIP, {p['scenes']} held-out scenes (seed {SEED}), "
            f"{p['interactions']['metrics']['items']} object phrases with exact boxes:",
            "",
            "| method | accuracy | energy | seconds (all phrases) |",
            "|---|--:|--:|--:|",
        ]
        for label in [k for k in p if k == "interactions" or k.startswith("fixlip-")]:
            r = p[label]
            name = "ours" if label == "interactions" else f"FIxLIP, budget {r['settings']['budget']:,}"
            metrics = r["metrics"]
            lines.append(
                f"| {name} | {metrics['accuracy']:.3f} | {metrics['energy']:.3f} | {r['seconds']:.1f} |"
            )
        base = p["interactions"]["metrics"]  # the random and uniform baselines
        chance, uniform = base["random_accuracy"], base["uniform_energy"]
        lines += [
            f"| random point / uniform map | {chance:.3f} | {uniform:.3f} | — |",
            "",
            "Accuracy: the phrase heatmap's maximum lies inside the object's box; energy: the share of "
            "the heatmap's positive mass inside it (`score_pointing`, as `clipalign eval "
            "pointing-synthetic`).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs, small budgets, 5 scenes")
    parser.add_argument("--pairs", type=int, default=3, help="pairs timed per model")
    parser.add_argument(
        "--b32-budget", type=int, default=2**14, help="FIxLIP budget for the B/32-sized model"
    )
    parser.add_argument("--scenes", type=int, default=20, help="pointing-game scenes (0: skip)")
    parser.add_argument(
        "--pointing-budgets",
        type=int,
        nargs="+",
        default=[2**16, AUTHORS_BUDGET],
        help="FIxLIP budgets, pointing",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.pairs, args.b32_budget, args.scenes, args.pointing_budgets = 2, 2**10, 5, [2**12]
    require_shared_data()
    synthetic_budget = 2**12 if args.quick else AUTHORS_BUDGET
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        annotations = write_dataset(work / "data", n=max(args.pairs, args.scenes), seed=SEED)
        scenes = load_synthetic_pointing(annotations, annotations.parent / "images")
        pairs = list(dict.fromkeys((it.image, it.caption) for it in scenes))[: args.pairs]
        synthetic = load_model(SYNTHETIC_CLIP, device="cpu")
        rows = [speed(SYNTHETIC, synthetic, pairs, synthetic_budget)]
        b32 = load_cpu_model(save_model(model_configs()[B32], work / "b32"))
        rows.append(speed(B32, b32, pairs, args.b32_budget))
        del b32
        point = None
        if args.scenes:
            few = write_dataset(work / "pointing", n=args.scenes, seed=SEED)
            point = {"scenes": args.scenes, **pointing(synthetic, few, args.pointing_budgets, work / "cache")}
    command = " ".join(["python benchmarks/bench_fixlip.py", *sys.argv[1:]])
    report = {
        "command": command,
        "machine": machine_info(),
        "pairs": len(pairs),
        "settings": {"fixlip": FIxLIPSettings().to_dict(), "synthetic_budget": synthetic_budget},
        "speed": rows,
        "pointing": point,
        "model_files": str(SYNTHETIC_CLIP.relative_to(REPO)) if SYNTHETIC_CLIP.is_relative_to(REPO) else None,
    }
    write_results("fixlip_cpu_quick" if args.quick else "fixlip_cpu", report, markdown(report))


if __name__ == "__main__":
    main()
