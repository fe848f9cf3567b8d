"""CPU benchmark of what a demo user waits for: word scores, the first heatmap, later heatmaps and boxes.

For each shipped example scene, ``DemoEngine`` (the demo's model-side code, without the web server) on a
seeded random tiny and ViT-B/32-sized CLIP with the real tokenizer checks the suggested caption: word
scores (CLIP4DM), the token×patch interactions that the first click on a word computes (default
``--steps 10``, and ``--steps 4``), then one heatmap PNG per word and the words under a box, which reuse
them. One warm-up pass over the first scene comes first. From the repository root:

    python benchmarks/bench_demo.py [--quick]

Results go to ``benchmarks/results/demo_cpu.{json,md}`` (``demo_cpu_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from common import (
    load_average_1min,
    load_cpu_model,
    machine_info,
    model_configs,
    require_shared_data,
    save_model,
    write_results,
)

from clipalign.demo.engine import DemoEngine, Upload, check_upload, heatmap_png
from clipalign.models.base import InteractionAdapter
from clipalign.settings import InteractionSettings

STEPS = (10, 4)  # the demo's default, and the cheaper setting README suggests
MAX_PIXELS = 40_000_000
BOX = (0.25, 0.25, 0.5, 0.5)  # x, y, w, h as fractions of the image: its centre quarter


def scenes(limit: int | None) -> list[tuple[str, Upload, str]]:
    """The example scenes that ship with the package: (name, checked upload, suggested caption)."""
    folder = files("clipalign") / "examples"
    entries = json.loads((folder / "examples.json").read_text("utf-8"))[:limit]
    return [
        (e["name"], check_upload((folder / e["file"]).read_bytes(), MAX_PIXELS), e["caption"])
        for e in entries
    ]


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def one_scene(engine: DemoEngine, upload: Upload, caption: str) -> dict[str, float]:
    """Seconds for each step a user triggers on one scene, in the order the page runs them."""
    (alignment, _notes), words_s = timed(engine.words, upload, caption)
    interactions, first_s = timed(engine.token_patch, upload, caption)
    start = time.perf_counter()
    for index in range(len(alignment.words)):
        heatmap_png(interactions, [index], upload.display_size)
    per_heatmap = (time.perf_counter() - start) / max(1, len(alignment.words))
    x, y, w, h = (round(f * s) for f, s in zip(BOX, (upload.width, upload.height) * 2, strict=True))
    _, box_s = timed(interactions.box_word_scores, (x, y, w, h))
    return {"words_s": words_s, "interactions_s": first_s, "heatmap_png_s": per_heatmap, "box_s": box_s}


def bench_model(adapter: InteractionAdapter, steps: int, examples: list[tuple[str, Upload, str]]) -> dict:
    """Warm up on the first scene, then time every scene; medians over scenes."""
    engine = DemoEngine(adapter, interactions=InteractionSettings(steps=steps))
    _, warm_upload, warm_caption = examples[0]
    one_scene(engine, warm_upload, warm_caption)
    load_before = load_average_1min()
    per_scene = {name: one_scene(engine, upload, caption) for name, upload, caption in examples}
    keys = next(iter(per_scene.values())).keys()
    return {
        "per_scene": per_scene,
        "median": {k: statistics.median(s[k] for s in per_scene.values()) for k in keys},
        "load_average_1min": {"before": load_before, "after": load_average_1min()},
    }


def markdown(report: dict[str, Any]) -> str:
    """One table a README can quote: median seconds per step, per model and N."""
    m = report["machine"]
    lines = [
        f"`{report['command']}` (from the repository root) · {m['date'][:10]} · {m['cpu']}, {m['cpu_count']} "
        f"cores, {m['torch_threads']} torch threads · torch {m['torch']} · fp32 · median over "
        f"{report['settings']['scenes']} example scenes",
        "",
        "| model | steps N | word scores (s) | first heatmap: interactions (s) | each heatmap PNG (s) "
        "| box → words (s) | load before → after |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    for name, by_steps in report["models"].items():
        for steps, r in by_steps.items():
            med, load = r["median"], r["load_average_1min"]
            lines.append(
                f"| {name} | {steps} | {med['words_s']:.3f} | {med['interactions_s']:.3f} "
                f"| {med['heatmap_png_s']:.3f} | {med['box_s']:.4f} "
                f"| {load['before']:.1f} → {load['after']:.1f} |"
            )
    lines += [
        "",
        "`DemoEngine` as `clipalign demo` runs it, without the web server: *word scores* is what *Check "
        "caption* computes; the first click on a word computes the *interactions* (last blocks, "
        "Gauss–Legendre with N nodes), which every later click and box reuses; *each heatmap PNG* is one "
        "word's map drawn at display size; *box → words* scores the words for the centre quarter of the "
        "image. Weights are random (seeded): speed depends on the architecture only.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first two scenes only")
    args = parser.parse_args(argv)
    require_shared_data()
    examples = scenes(2 if args.quick else None)
    report: dict[str, Any] = {
        "command": "python benchmarks/bench_demo.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "settings": {"scenes": len(examples), "steps": list(STEPS), "box": list(BOX), "device": "cpu"},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in model_configs().items():
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            adapter = load_cpu_model(save_model(config, Path(tmp) / name))
            report["models"][name] = {str(n): bench_model(adapter, n, examples) for n in STEPS}

    stem = "demo_cpu_quick" if args.quick else "demo_cpu"
    write_results(stem, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
