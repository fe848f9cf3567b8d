"""Throughput of `clipalign scan`'s local engine against the model alone, and where the CPU time goes.

For the tiny and the ViT-B/32-sized random CLIP on CPU, on the same generated JSONL of 640×480 JPEG photos:

- scan: `clipalign.runners.local.scan` end to end (worker threads decode and preprocess, a collating
  thread tokenises each batch in one call, the model scores the batch before), batch 32, 4 workers;
- model only: `CLIP4DM.attribute_tokens` on the same pairs, already preprocessed and tokenised, batch 32;
- naive: one pair at a time, image decoded in the main thread, batch 1 (on the first 64 pairs).

Both timed variants run interleaved, after a warm-up, so load from other processes hits them alike.
Also measured: decoding + preprocessing per image in 1, 2 and 4 threads (do threads scale, or are
processes needed?), result building per pair at batch 256, and JPEG draft mode (`--jpeg-draft`): how
much faster loading gets and how often it changes the flagged words, on synthetic-world scenes with the
shipped synthetic model and the tiny model.
Usage: ``python benchmarks/bench_scan.py [--quick]`` (writes benchmarks/results/scan_cpu.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from common import (
    B32,
    TINY,
    goal_text,
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
from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.models.base import ClipAdapter
from clipalign.runners.local import draft_size, result_row, scan
from clipalign.runners.sources import Columns, Sample, table_samples
from clipalign.settings import ScanSettings
from clipalign.synthetic.generator import generate_scenes
from clipalign.synthetic.render import render_scene

CAPTIONS = [
    "a red bus parked next to a tall building",
    "two dogs run across a snowy field",
    "a bowl of fruit on a wooden table",
    "a man rides a bicycle down a busy street",
]
BATCH = 32
WORKERS = 4
BUILD_BATCH = 256
NAIVE_PAIRS = 64
LOAD_IMAGES = 64


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like image: a random colour, a horizontal gradient and noise."""
    base = rng.integers(0, 256, (1, 1, 3))
    noise = rng.normal(0, 40, (height, width, 3))
    ramp = np.linspace(0, 60, width)[None, :, None]
    return Image.fromarray(np.clip(base + noise + ramp, 0, 255).astype(np.uint8))


def make_dataset(directory: Path, n: int, seed: int = 0) -> Path:
    """n pairs over min(n, 64) distinct 640×480 JPEG photo-like images, as a JSONL table."""
    rng = np.random.default_rng(seed)
    distinct = min(n, 64)
    for i in range(distinct):
        photo(rng, 640, 480).save(directory / f"{i}.jpg", quality=90)
    table = directory / "pairs.jsonl"
    with table.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps({"image": f"{i % distinct}.jpg", "caption": f"{CAPTIONS[i % 4]} ({i})"}) + "\n"
            )
    return table


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each variant warmed up once, then all run ``repeats`` times in a rotating order."""
    for fn in variants.values():
        fn()
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(variants[name]))
    return times


def load_scaling(model: ClipAdapter, paths: list[Path]) -> dict[str, float]:
    """Milliseconds per image to decode and preprocess ``paths`` in 1, 2 and 4 threads (fastest of 3)."""

    def load(path: Path) -> object:
        return model.pixel_values([load_image(path)])

    def run(threads: int) -> float:
        if threads == 1:
            return timed(lambda: [load(p) for p in paths])
        with ThreadPoolExecutor(threads) as pool:
            return timed(lambda: list(pool.map(load, paths)))

    result = {}
    for threads in (1, 2, 4):
        result[f"{threads}"] = 1e3 * min(run(threads) for _ in range(3)) / len(paths)
    result["decode_only_1"] = (
        1e3 * min(timed(lambda: [load_image(p) for p in paths]) for _ in range(3)) / len(paths)
    )
    return result


def build_cost(attributor: CLIP4DM, images: list[Path], n: int) -> dict[str, float]:
    """Microseconds per pair to build results (``_build``) and scan rows (``result_row``) at batch ``n``."""
    model = attributor.model
    captions = [f"{CAPTIONS[i % 4]}, and a small dog. ({i})" for i in range(n)]
    pixels = model.pixel_values([load_image(images[i % len(images)]) for i in range(n)])
    unit, template = attributor.settings.unit, attributor.settings.template
    encoded = [e.with_unit(unit) for e in model.encode_captions(captions, template)]
    raw = attributor.attribute_tokens(pixels, encoded)
    sources = ["x"] * n
    settings = attributor.settings
    build = min(
        timed(lambda: attributor._build(raw, encoded, sources, settings.mode, settings.epsilon))
        for _ in range(5)
    )
    results = attributor._build(raw, encoded, sources, settings.mode, settings.epsilon)
    samples = [Sample(i, str(i), None, c) for i, c in enumerate(captions)]
    rows = min(
        timed(lambda: [result_row(s, r) for s, r in zip(samples, results, strict=True)]) for _ in range(5)
    )
    return {"build_us": 1e6 * build / n, "result_row_us": 1e6 * rows / n}


def bench_model(name: str, model_dir: Path, work: Path, n: int, repeats: int) -> dict[str, Any]:
    model = load_cpu_model(model_dir)
    attributor = CLIP4DM(model, batch_size=BATCH)
    data = work / f"data-{name}"
    data.mkdir()
    table = make_dataset(data, n)
    samples = list(table_samples(table, Columns()))
    images = {Path(s.image) for s in samples}  # type: ignore[arg-type]
    pixels = {p: model.pixel_values([load_image(p)]) for p in images}
    template, unit = attributor.settings.template, attributor.settings.unit
    batches = []
    for lo in range(0, n, BATCH):
        chunk = samples[lo : lo + BATCH]
        batch_pixels = np.concatenate([pixels[Path(s.image)].numpy() for s in chunk])  # type: ignore[arg-type]
        encoded = [e.with_unit(unit) for e in model.encode_captions([s.caption for s in chunk], template)]  # type: ignore[misc]
        batches.append((batch_pixels, encoded))
    runs = iter(range(10**6))

    def run_scan() -> None:
        options = ScanSettings(progress=False, workers=WORKERS)
        scan(
            table_samples(table, Columns()),
            attributor,
            work / f"out-{name}-{next(runs)}",
            {"b": name},
            options=options,
        )

    def model_only() -> None:
        for batch_pixels, encoded in batches:
            attributor.attribute_tokens(torch.from_numpy(batch_pixels), encoded)

    load_before = load_average_1min()
    times = interleaved({"scan": run_scan, "model_only": model_only}, repeats)
    naive = samples[:NAIVE_PAIRS]

    def naive_loop() -> None:
        for sample in naive:
            image = load_image(sample.image)  # type: ignore[arg-type]
            [result] = attributor.attribute([image], [sample.caption])  # type: ignore[list-item]
            result_row(sample, result)  # type: ignore[arg-type]

    naive_time = timed(naive_loop)
    load_paths = [data / f"{i % min(n, 64)}.jpg" for i in range(LOAD_IMAGES)]
    stats = {}
    for stat, pick in (("median", statistics.median), ("fastest", min)):
        rate = {k: n / pick(v) for k, v in times.items()}
        stats[stat] = {"pairs_per_second": rate, "scan_over_model_only": rate["scan"] / rate["model_only"]}
    return {
        "pairs": n,
        "repeats": repeats,
        "seconds": times,
        "stats": stats,
        "naive_pairs": len(naive),
        "naive_pairs_per_second": len(naive) / naive_time,
        "load_ms_per_image": load_scaling(model, load_paths),
        "build": build_cost(CLIP4DM(model, batch_size=BUILD_BATCH), load_paths, BUILD_BATCH),
        "load_average": [load_before, load_average_1min()],
    }


def draft_study(name: str, model: ClipAdapter, work: Path, scenes: int, size: int) -> dict[str, Any]:
    """Synthetic-world scenes rendered at ``size``² as JPEGs, each with its true caption and one foil:
    loading time with and without draft mode, and how many pairs' flagged words change with it."""
    data = work / f"draft-{name}"
    data.mkdir()
    samples = []
    for i, scene in enumerate(generate_scenes(scenes, seed=7, image_size=size)):
        path = data / f"{i}.jpg"
        render_scene(scene).save(path, quality=90)
        samples.append(Sample(2 * i, f"{i}", path, scene.caption))
        samples.append(Sample(2 * i + 1, f"{i}-foil", path, scene.foils[i % len(scene.foils)].caption))
    paths = [Path(s.image) for s in samples[::2]]  # type: ignore[arg-type]
    draft = draft_size(model)

    def load_all(d: tuple[int, int] | None) -> float:
        return min(
            timed(lambda: [model.pixel_values([load_image(p, draft=d)]) for p in paths]) for _ in range(3)
        )

    plain_s, draft_s = load_all(None), load_all(draft)
    with Image.open(paths[0]) as probe:
        probe.draft(None, draft)
        drafted = probe.size
    attributor = CLIP4DM(model, batch_size=BATCH)
    flags = {}
    for mode in (False, True):
        options = ScanSettings(progress=False, workers=WORKERS, jpeg_draft=mode)
        out = scan(samples, attributor, data / f"out-{mode}.parquet", {"d": mode}, options=options).output
        flags[mode] = pq.read_table(out).column("misaligned_words").to_pylist()
    changed = sum(a != b for a, b in zip(flags[False], flags[True], strict=True))
    return {
        "model": name,
        "pairs": len(samples),
        "image": [size, size],
        "decoded_with_draft": list(drafted),
        "draft_request": list(draft),
        "load_ms_per_image": {"plain": 1e3 * plain_s / len(paths), "draft": 1e3 * draft_s / len(paths)},
        "load_speedup": plain_s / draft_s,
        "pairs_with_changed_flags": changed,
        "flagged_pairs": sum(bool(f) for f in flags[False]),
    }


def markdown(results: dict[str, Any], command: str) -> str:
    info = results["machine"]
    lines = [
        f"`{command}` · {info['date']} · {info['cpu']}, {info['cpu_count']} cores, "
        f"{info['torch_threads']} torch threads · 640×480 JPEGs, batch {BATCH}, {WORKERS} loading threads, "
        "interleaved repeats after one warm-up",
        "",
        "| model | pairs | repeats | statistic | scan (pairs/s) | model only (pairs/s) | scan / model only | "
        "naive loop (pairs/s) | scan / naive |",
        "|---|--:|--:|---|--:|--:|--:|--:|--:|",
    ]
    for name, r in results["models"].items():
        for stat in ("median", "fastest"):
            s = r["stats"][stat]
            p = s["pairs_per_second"]
            ratio = s["scan_over_model_only"]
            cells = [
                name,
                str(r["pairs"]),
                str(r["repeats"]),
                stat,
                f"{p['scan']:.1f}",
                f"{p['model_only']:.1f}",
                goal_text(ratio, 0.9, at_least=True) if name == B32 else f"{ratio:.2f}×",
                f"{r['naive_pairs_per_second']:.1f}",
                f"{p['scan'] / r['naive_pairs_per_second']:.2f}×",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Loading one 640×480 JPEG (decode + the model's preprocessing), ms per image, fastest of 3 over "
        f"{LOAD_IMAGES} images; result building per pair at batch {BUILD_BATCH}:",
        "",
        "| model | decode only, 1 thread | load, 1 thread | 2 threads | 4 threads | speed-up, 4 threads | "
        "`_build` (µs/pair) | `result_row` (µs/pair) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in results["models"].items():
        ms, b = r["load_ms_per_image"], r["build"]
        lines.append(
            f"| {name} | {ms['decode_only_1']:.2f} | {ms['1']:.2f} | {ms['2']:.2f} | {ms['4']:.2f} | "
            f"{ms['1'] / ms['4']:.2f}× | {b['build_us']:.0f} | {b['result_row_us']:.0f} |"
        )
    lines += [
        "",
        "JPEG draft mode (`scan --jpeg-draft`, off by default) on synthetic-world scenes, each with its true "
        "caption and one foil:",
        "",
        "| model | pairs | image → decoded | load plain (ms) | load draft (ms) | speed-up | "
        "pairs whose flags change | pairs with flags |",
        "|---|--:|---|--:|--:|--:|--:|--:|",
    ]
    for d in results["draft"]:
        w, h = d["image"]
        dw, dh = d["decoded_with_draft"]
        lines.append(
            f"| {d['model']} | {d['pairs']} | {w}×{h} → {dw}×{dh} | {d['load_ms_per_image']['plain']:.2f} | "
            f"{d['load_ms_per_image']['draft']:.2f} | {d['load_speedup']:.2f}× | "
            f"{d['pairs_with_changed_flags']} | {d['flagged_pairs']} |"
        )
    lines += [
        "",
        "*scan / model only* is end to end (JSONL + JPEG files in, Parquet out) over `attribute_tokens` on "
        "the same pairs already preprocessed and tokenised: the goal is ≥ 0.9 for the B/32-sized model "
        "(loading "
        "hidden behind the model). *fastest* uses each variant's fastest repeat, which other load on the "
        "machine inflates least. 1-min load average before → after: "
        + ", ".join(
            f"{k} {v['load_average'][0]:.1f} → {v['load_average'][1]:.1f}"
            for k, v in results["models"].items()
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs and repeats, for a smoke test")
    args = parser.parse_args()
    require_shared_data()
    sizes = {TINY: 256 if args.quick else 1024, B32: 32 if args.quick else 256}
    repeats = {TINY: 2 if args.quick else 5, B32: 1 if args.quick else 3}
    results: dict[str, Any] = {"machine": machine_info(), "models": {}, "draft": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dirs = {}
        for name, config in model_configs().items():
            dirs[name] = save_model(config, work / name)
            results["models"][name] = bench_model(name, dirs[name], work, sizes[name], repeats[name])
            print(name, json.dumps(results["models"][name]["stats"]))
        scenes = 16 if args.quick else 128
        for name, model_dir in (("synthetic", SYNTHETIC_CLIP), (TINY, dirs[TINY])):
            study = draft_study(name, load_cpu_model(model_dir), work, scenes, 640)
            results["draft"].append(study)
            print("draft", json.dumps(study))
    command = "python benchmarks/bench_scan.py" + (" --quick" if args.quick else "")
    write_results("scan_cpu_quick" if args.quick else "scan_cpu", results, markdown(results, command))


if __name__ == "__main__":
    main()
