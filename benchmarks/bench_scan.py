"""Throughput of `clipalign scan`'s local engine against a naive loop, and where the time goes.

For the tiny and the ViT-B/32-sized random CLIP on CPU, on the same generated JSONL of JPEG photos:

- engine: `clipalign.runners.local.scan` (threads decode ahead of the model, batch 32);
- naive: one pair at a time, image decoded in the main thread, batch 1;
- decode only: every image decoded in the main thread (`load_image`), no model;
- model only: `CLIP4DM.attribute` on the already decoded images, batch 32.

If the engine runs at the model-only rate, the model, not decoding, is the bottleneck (the goal).
Usage: ``python benchmarks/bench_scan.py [--quick]`` (writes benchmarks/results/scan_cpu.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    B32,
    TINY,
    load_average_1min,
    load_cpu_model,
    machine_info,
    model_configs,
    require_shared_data,
    save_model,
    write_results,
)
from PIL import Image

from clipalign import CLIP4DM, load_image
from clipalign.runners.local import result_row, scan
from clipalign.runners.sources import Columns, table_samples
from clipalign.settings import ScanSettings

CAPTIONS = [
    "a red bus parked next to a tall building",
    "two dogs run across a snowy field",
    "a bowl of fruit on a wooden table",
    "a man rides a bicycle down a busy street",
]


def make_dataset(directory: Path, n: int, seed: int = 0) -> Path:
    """n pairs over min(n, 64) distinct 640×480 JPEG photos-like images, as a JSONL table."""
    rng = np.random.default_rng(seed)
    distinct = min(n, 64)
    for i in range(distinct):
        base = rng.integers(0, 256, (1, 1, 3))
        noise = rng.normal(0, 40, (480, 640, 3))
        pixels = np.clip(base + noise + np.linspace(0, 60, 640)[None, :, None], 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(directory / f"{i}.jpg", quality=90)
    table = directory / "pairs.jsonl"
    with table.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps({"image": f"{i % distinct}.jpg", "caption": f"{CAPTIONS[i % 4]} ({i})"}) + "\n"
            )
    return table


def bench_model(name: str, model_dir: Path, work: Path, n: int) -> dict[str, Any]:
    model = load_cpu_model(model_dir)
    attributor = CLIP4DM(model, batch_size=32)
    data = work / f"data-{name}"
    data.mkdir()
    table = make_dataset(data, n)
    samples = list(table_samples(table, Columns()))
    load_before = load_average_1min()
    times: dict[str, float] = {}

    start = time.perf_counter()
    options = ScanSettings(progress=False)
    scan(table_samples(table, Columns()), attributor, work / f"out-{name}", {"bench": name}, options=options)
    times["engine"] = time.perf_counter() - start

    start = time.perf_counter()
    images = [load_image(s.image) for s in samples]  # type: ignore[arg-type]
    times["decode_only"] = time.perf_counter() - start

    start = time.perf_counter()
    attributor.attribute(images, [s.caption for s in samples])  # type: ignore[misc]
    times["model_only"] = time.perf_counter() - start

    start = time.perf_counter()
    for sample in samples:
        image = load_image(sample.image)  # type: ignore[arg-type]
        [result] = attributor.attribute([image], [sample.caption])  # type: ignore[list-item]
        result_row(sample, result)  # type: ignore[arg-type]
    times["naive"] = time.perf_counter() - start

    rate = {k: n / v for k, v in times.items()}
    decode_share = times["decode_only"] / (times["decode_only"] + times["model_only"])
    return {
        "pairs": n,
        "seconds": times,
        "pairs_per_second": rate,
        "engine_over_naive": times["naive"] / times["engine"],
        "engine_over_model_only": rate["engine"] / rate["model_only"],
        "decode_share_single_thread": decode_share,
        "load_average": [load_before, load_average_1min()],
    }


def markdown(results: dict[str, Any], command: str) -> str:
    info = results["machine"]
    lines = [
        f"`{command}` · {info['date']} · {info['cpu']}, {info['cpu_count']} cores, "
        f"{info['torch_threads']} torch threads · one run each, same data; 640×480 JPEGs",
        "",
        "| model | pairs | engine (pairs/s) | naive loop (pairs/s) | engine / naive | model only (pairs/s) | "
        "engine / model only | decode share (1 thread) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in results["models"].items():
        p = r["pairs_per_second"]
        cells = [
            name,
            str(r["pairs"]),
            f"{p['engine']:.1f}",
            f"{p['naive']:.1f}",
            f"{r['engine_over_naive']:.2f}×",
            f"{p['model_only']:.1f}",
            f"{r['engine_over_model_only']:.2f}",
            f"{r['decode_share_single_thread']:.0%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "*engine / model only* near 1 means decoding is hidden behind the model (the goal: the model is the "
        "bottleneck). *decode share* is decoding's part of decode + model when both run in one thread.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs, for a smoke test")
    args = parser.parse_args()
    require_shared_data()
    sizes = {TINY: 256 if args.quick else 2048, B32: 32 if args.quick else 256}
    results: dict[str, Any] = {"machine": machine_info(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, config in model_configs().items():
            model_dir = save_model(config, work / name)
            results["models"][name] = bench_model(name, model_dir, work, sizes[name])
            print(name, json.dumps(results["models"][name]["pairs_per_second"]))
    command = "python benchmarks/bench_scan.py" + (" --quick" if args.quick else "")
    write_results("scan_cpu_quick" if args.quick else "scan_cpu", results, markdown(results, command))


if __name__ == "__main__":
    main()
