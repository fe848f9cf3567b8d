"""One unattended speed run on a GPU (or CPU): CLIP4DM word attribution and token×patch interactions.

Seeded random CLIP models of the ViT-B/32, B/16 and L/14 architectures (configs in ``benchmarks/configs``,
tokenizer shipped with clipalign) are timed at fp32 / bf16 / fp16 (no fp16 on CPU) and several batch sizes:

- model only: ``CLIP4DM.attribute_tokens`` on pixel tensors and encoded captions, against a plain forward
  (image + text embeddings under ``no_grad``), and batch 1 against the largest batch;
- end to end: ``clipalign scan`` (the CLI, in this process) on generated 640×480 JPEG tar shards and files;
- ``TokenPatchInteractions`` at N = 10 on the B/16-sized model: milliseconds per pair, pairs computed in
  batches and one at a time;
- fp16 / bf16 against fp32 on the same pairs: identical flagged words, mean Spearman of word scores.

Peak memory is ``torch.cuda.max_memory_allocated`` per measurement (on CPU, the process's peak RSS so far).
From the repository root: ``python benchmarks/gpu.py [--quick]`` (``--quick``: a tiny model, < 1 min on
CPU). Results: ``benchmarks/results/gpu_<card>.{md,json}`` (``gpu_<card>_smoke.*`` with ``--quick``).
Missing packages are installed from ``benchmarks/wheels/*.whl`` when wheels are there, else named.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import CLIPConfig

    from clipalign.models.base import ClipAdapter

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WHEELS = HERE / "wheels"
# import name → distribution name: what clipalign's scan path and this script import
REQUIRED = {
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "numpy": "numpy",
    "PIL": "pillow",
    "pyarrow": "pyarrow",
    "braceexpand": "braceexpand",
    "tqdm": "tqdm",
    "rich": "rich",
    "scipy": "scipy",
}


CONFIGS = HERE / "configs"
ARCHITECTURES = {  # report name → config folder under benchmarks/configs
    "vit-b32-sized": "clip-vit-base-patch32",
    "vit-b16-sized": "clip-vit-base-patch16",
    "vit-l14-sized": "clip-vit-large-patch14",
}
INTERACTIONS_MODEL = "vit-b16-sized"
TINY = "tiny"
SEED = 0
STEPS = 10  # interactions: quadrature nodes N
AGREEMENT_PAIRS = 64


def plan(quick: bool, cuda: bool) -> dict[str, Any]:
    """What to measure: models, dtypes, batch sizes, repeats, end-to-end and interaction sizes."""
    if quick:
        return {
            "models": [TINY],
            "dtypes": ["fp32", "bf16"] + (["fp16"] if cuda else []),
            "batch_sizes": [8, 32],
            "repeats": 2,
            "batch1_calls": 4,
            "e2e_pairs": 64,
            "e2e_batch": 32,
            "e2e_dtypes": ["bf16"],
            "interactions_model": TINY,
            "interaction_pairs": 2,
            "interaction_batch": 2,
        }
    return {
        "models": list(ARCHITECTURES),
        "dtypes": ["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"],
        "batch_sizes": [64, 128, 256, 512, 1024] if cuda else [8, 32],
        "repeats": 3,
        "batch1_calls": 10,
        "e2e_pairs": 2048 if cuda else 128,
        "e2e_batch": 256 if cuda else 32,
        "e2e_dtypes": ["fp32", "bf16"],
        "interactions_model": INTERACTIONS_MODEL,
        "interaction_pairs": 32 if cuda else 2,
        "interaction_batch": 16 if cuda else 2,
    }


def model_config(name: str) -> CLIPConfig:
    """The architecture of a benchmarked model: a copied Hub config, or the tiny test one."""
    from transformers import CLIPConfig

    from clipalign.testing import tiny_clip_config

    return tiny_clip_config() if name == TINY else CLIPConfig.from_pretrained(CONFIGS / ARCHITECTURES[name])


class Meter:
    """Wall time with the device synchronised, and peak memory: CUDA allocations, or on CPU peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float:
        import resource

        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def time(self, fn: Any, calls: int) -> list[float]:
        """Seconds of each of ``calls`` calls of ``fn`` after one warm-up call."""
        import time

        fn()
        times = []
        for _ in range(calls):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return times

    def release(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def guarded(meter: Meter, measure: Any) -> dict[str, Any]:
    """Run one measurement; out of memory (or any failure) becomes an ``error`` entry, not a crash."""
    meter.release()
    meter.reset_peak()
    try:
        result: dict[str, Any] = measure()
    except Exception as exc:  # one cell failing (OOM, an unsupported dtype) must not stop the run
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]}
    result["peak_mib"] = meter.peak_mib()
    meter.release()
    return result


def model_only(adapter: ClipAdapter, meter: Meter, sizes: list[int], settings: dict[str, Any]) -> dict:
    """Attribution and plain forward pairs/s per batch size on ready tensors, and batch 1."""
    import torch
    from bench_words import CAPTIONS, make_images

    from clipalign import CLIP4DM
    from clipalign.text.alignment import DEFAULT_TEMPLATE

    attributor = CLIP4DM(adapter)
    distinct_pixels = adapter.preprocess(make_images(len(CAPTIONS), SEED))
    distinct_encoded = adapter.encode_captions(list(CAPTIONS), DEFAULT_TEMPLATE)

    def cell(batch: int, repeats: int) -> dict[str, Any]:
        index = [i % len(CAPTIONS) for i in range(batch)]
        pixels, encoded = distinct_pixels[index].contiguous(), [distinct_encoded[i] for i in index]

        @torch.no_grad()
        def forward() -> torch.Tensor:
            image = adapter.image_embeddings(pixels)
            text = adapter.text_embeddings(adapter.collate(encoded)).embeds
            return torch.nn.functional.cosine_similarity(image, text, dim=-1)

        out: dict[str, Any] = {}
        meter.reset_peak()
        out["forward_s"] = meter.time(forward, repeats)
        out["forward_peak_mib"] = meter.peak_mib()
        meter.reset_peak()
        out["attribution_s"] = meter.time(lambda: attributor.attribute_tokens(pixels, encoded), repeats)
        out["attribution_peak_mib"] = meter.peak_mib()
        median = {k: sorted(out[f"{k}_s"])[len(out[f"{k}_s"]) // 2] for k in ("forward", "attribution")}
        out["pairs_per_s"] = {k: batch / v for k, v in median.items()}
        out["attribution_over_forward"] = median["attribution"] / median["forward"]
        return out

    results = {str(b): guarded(meter, lambda b=b: cell(b, settings["repeats"])) for b in sizes}
    single = guarded(meter, lambda: cell(1, settings["batch1_calls"]))
    largest = results[str(max(sizes))]
    ratio = None
    if "pairs_per_s" in largest and "pairs_per_s" in single:
        ratio = largest["pairs_per_s"]["attribution"] / single["pairs_per_s"]["attribution"]
    return {"batches": results, "batch1": single, "largest_over_batch1": ratio}


def word_results(adapter: ClipAdapter) -> list[dict[str, Any]]:
    """Cosine, word scores and flags of CLIP4DM on the fixed agreement pairs."""
    from bench_words import CAPTIONS, make_images

    from clipalign import CLIP4DM

    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(AGREEMENT_PAIRS)]
    images = make_images(AGREEMENT_PAIRS, SEED + 1)
    results = CLIP4DM(adapter, batch_size=AGREEMENT_PAIRS).attribute(images, captions, on_error="raise")
    return [
        {
            "cosine": r.cosine,
            "scores": [w.score for w in r.words],
            "flagged": [w.misaligned for w in r.words],
        }
        for r in results
    ]


def agreement(low: list[dict[str, Any]], full: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of pairs with identical flagged words, mean Spearman of word scores, largest cosine gap."""
    import numpy as np
    from scipy.stats import spearmanr

    pairs = list(zip(low, full, strict=True))
    rhos = []
    for a, b in pairs:
        if len(a["scores"]) > 1 and np.ptp(a["scores"]) > 0 and np.ptp(b["scores"]) > 0:
            rhos.append(float(spearmanr(a["scores"], b["scores"]).statistic))
    return {
        "pairs": len(full),
        "identical_flags": sum(a["flagged"] == b["flagged"] for a, b in pairs) / len(full),
        "mean_spearman": float(np.mean(rhos)) if rhos else None,
        "spearman_pairs": len(rhos),
        "max_abs_cosine_diff": max(abs(a["cosine"] - b["cosine"]) for a, b in pairs),
    }


def make_inputs(directory: Path, pairs: int) -> dict[str, str]:
    """640×480 JPEG files with a JSONL table, and the same pairs as tar shards of ≤ 1024 samples."""
    import io
    import json
    import tarfile

    from bench_scan import make_dataset

    files = directory / "files"
    files.mkdir(parents=True)
    table = make_dataset(files, pairs, SEED)
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    shards = directory / "shards"
    shards.mkdir()
    count = (len(rows) + 1023) // 1024
    for shard in range(count):
        with tarfile.open(shards / f"{shard:05d}.tar", "w") as tar:
            for i, row in enumerate(rows[shard * 1024 : (shard + 1) * 1024], start=shard * 1024):
                members = {"jpg": (files / row["image"]).read_bytes(), "json": json.dumps(row).encode()}
                for extension, data in members.items():
                    info = tarfile.TarInfo(f"{i:08d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    pattern = f"{{00000..{count - 1:05d}}}.tar" if count > 1 else "00000.tar"
    return {"shards": str(shards / pattern), "files": str(table)}


def end_to_end(
    model_dir: Path, source: str, dtype: str, device: str, settings: dict[str, Any], out: Path
) -> dict[str, Any]:
    """``clipalign scan`` through its CLI entry point, timed whole (model loading included)."""
    import contextlib
    import io
    import os
    import time

    from clipalign.cli.main import main as cli

    workers = min(8, os.cpu_count() or 1)
    argv = ["scan", source, "--out", str(out), "--model", str(model_dir), "--device", device]
    argv += ["--dtype", dtype, "--batch-size", str(settings["e2e_batch"]), "--workers", str(workers)]
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = cli([*argv, "--no-progress"])
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"clipalign scan exited with {code}: {printed.getvalue()[-300:]}")
    return {
        "wall_s": wall,
        "workers": workers,
        "pairs": settings["e2e_pairs"],
        "batch": settings["e2e_batch"],
    }


def interactions(adapter: ClipAdapter, meter: Meter, pairs: int, batch: int) -> dict[str, Any]:
    """Milliseconds per pair of ``TokenPatchInteractions`` at N = 10 (default rule) on ``pairs`` pairs:
    ``batch`` pairs computed together (the batched path), and one pair at a time, side by side."""
    from bench_words import CAPTIONS, make_images

    from clipalign.attribution.interactions import TokenPatchInteractions

    images = make_images(pairs, SEED)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(pairs)]
    per_pair = {}
    for size in (batch, 1):
        method = TokenPatchInteractions(adapter, steps=STEPS, batch_size=size)
        [seconds] = meter.time(lambda method=method: method.attribute(images, captions, on_error="raise"), 1)
        per_pair[size] = 1e3 * seconds / pairs
    return {
        "steps": STEPS,
        "rule": method.settings.rule,
        "chunk": method.settings.chunk,
        "pairs": pairs,
        "batch": batch,
        "ms_per_pair": per_pair[batch],
        "ms_per_pair_batch1": per_pair[1],
        "batch1_over_batched": per_pair[1] / per_pair[batch],
    }


def bench_model(
    name: str, workdir: Path, meter: Meter, settings: dict[str, Any], inputs: dict[str, str]
) -> dict[str, Any]:
    """Every measurement for one architecture, dtype by dtype (one model in memory at a time)."""
    import time

    from clipalign import load_model
    from clipalign.checkpoints import SYNTHETIC_CLIP
    from clipalign.testing import save_random_clip

    model_dir = save_random_clip(workdir / name, model_config(name), SYNTHETIC_CLIP, seed=SEED)
    result: dict[str, Any] = {"dtypes": {}}
    reference: list[dict[str, Any]] | None = None
    device = str(meter.device)
    for dtype in settings["dtypes"]:
        print(f"  {name} {dtype} ...", file=sys.stderr, flush=True)
        meter.release()
        start = time.perf_counter()
        adapter = load_model(model_dir, device=device, dtype=dtype)
        meter.sync()
        cell: dict[str, Any] = {"load_s": time.perf_counter() - start}
        result["parameters"] = sum(p.numel() for p in adapter.model.parameters())
        cell["model_only"] = model_only(adapter, meter, settings["batch_sizes"], settings)
        words = guarded(meter, lambda adapter=adapter: {"results": word_results(adapter)})
        if dtype == "fp32":
            reference = words.get("results")
        elif reference is not None and "results" in words:
            cell["agreement"] = agreement(words["results"], reference)
        if name == settings["interactions_model"]:
            cell["interactions"] = guarded(
                meter,
                lambda adapter=adapter: interactions(
                    adapter, meter, settings["interaction_pairs"], settings["interaction_batch"]
                ),
            )
        del adapter
        if dtype in settings["e2e_dtypes"]:
            sources = ["shards", "files"] if dtype == "bf16" else ["shards"]
            cell["end_to_end"] = {
                kind: guarded(
                    meter,
                    lambda kind=kind, dtype=dtype: end_to_end(
                        model_dir,
                        inputs[kind],
                        dtype,
                        device,
                        settings,
                        workdir / f"scan-{name}-{dtype}-{kind}",
                    ),
                )
                for kind in sources
            }
            e2e_ratios(cell, settings)
        result["dtypes"][dtype] = cell
    return result


def e2e_ratios(cell: dict[str, Any], settings: dict[str, Any]) -> None:
    """Scan pairs/s with this dtype's load time taken out, and its ratio to model-only at the same batch."""
    model = cell["model_only"]["batches"].get(str(settings["e2e_batch"]), {})
    for run in cell["end_to_end"].values():
        if "wall_s" not in run:
            continue
        run["pairs_per_s"] = run["pairs"] / max(run["wall_s"] - cell["load_s"], 1e-9)
        if "pairs_per_s" in model:
            run["over_model_only"] = run["pairs_per_s"] / model["pairs_per_s"]["attribution"]


def card_name(device: torch.device) -> str:
    """``cpu``, or the CUDA device name in lower case with non-alphanumerics as ``_`` (``nvidia_h200``)."""
    import re

    import torch

    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def fmt(value: float | None, spec: str = ".1f") -> str:
    """A number for a table cell; ``–`` when missing."""
    return "–" if value is None else f"{value:{spec}}"


def measured(report: dict[str, Any], key: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(model, dtype, result) for every model and dtype that has a ``key`` result, in run order."""
    return [
        (name, dtype, cell[key])
        for name, r in report["models"].items()
        for dtype, cell in r["dtypes"].items()
        if key in cell
    ]


def markdown(report: dict[str, Any]) -> str:
    """The tables a README can quote: model only, batch 1, end to end, interactions, agreement."""
    m, s = report["machine"], report["settings"]
    lines = [
        f"`{report['command']}` · {m['date'][:10]} · {m['device_name']} · {m['cpu']}, "
        f"{m['cpu_count']} cores · torch {m['torch']}, transformers {m['transformers']} · "
        f"{report['wall_s']:.0f} s in all"
        + (" · **tiny-model smoke run: sizes and speeds mean nothing**" if s["quick"] else "")
        + ("" if report["complete"] else " · **incomplete: stopped before every model was measured**"),
        "",
        "Model only (pixel tensors and encoded captions in; medians of "
        f"{s['repeats']} calls after a warm-up). Peak = max allocated memory (CUDA), or on CPU the "
        "process's peak RSS so far.",
        "",
        "| model | dtype | batch | attribution (pairs/s) | plain forward (pairs/s) | attribution / forward "
        "| peak, attribution (MiB) | peak, forward (MiB) |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    batch1 = []
    for name, r in report["models"].items():
        for dtype, cell in r["dtypes"].items():
            mo = cell["model_only"]
            for batch, c in [*mo["batches"].items(), ("1", mo["batch1"])]:
                if "error" in c:
                    lines.append(f"| {name} | {dtype} | {batch} | {c['error']} | | | | |")
                    continue
                p = c["pairs_per_s"]
                lines.append(
                    f"| {name} | {dtype} | {batch} | {p['attribution']:.1f} | {p['forward']:.1f} "
                    f"| {c['attribution_over_forward']:.2f}× | {c['attribution_peak_mib']:.0f} "
                    f"| {c['forward_peak_mib']:.0f} |"
                )
            batch1.append(f"| {name} | {dtype} | {fmt(mo['largest_over_batch1'], '.1f')}× |")
    lines += [
        "",
        f"| model | dtype | attribution pairs/s, batch {max(s['batch_sizes'])} / batch 1 |",
        "|---|---|--:|",
    ]
    lines += batch1
    lines += [
        "",
        f"End to end: `clipalign scan` (CLI entry point, in process) on {s['e2e_pairs']} pairs of 640×480 "
        f"JPEGs (64 distinct), batch {s['e2e_batch']}; pairs/s with this dtype's model-loading time "
        "taken out; end to end / model only compares with attribution at the same batch size.",
        "",
        "| model | dtype | input | wall (s) | load (s) | scan (pairs/s) | end to end / model only "
        "| workers |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for name, r in report["models"].items():
        for dtype, cell in r["dtypes"].items():
            for kind, run in cell.get("end_to_end", {}).items():
                if "error" in run:
                    lines.append(f"| {name} | {dtype} | {kind} | {run['error']} | | | | |")
                    continue
                lines.append(
                    f"| {name} | {dtype} | {kind} | {run['wall_s']:.1f} | {cell['load_s']:.1f} "
                    f"| {fmt(run.get('pairs_per_s'))} | {fmt(run.get('over_model_only'), '.2f')}× "
                    f"| {run['workers']} |"
                )
    lines += [
        "",
        "| interactions model | dtype | N | rule | pairs | batch | ms per pair | ms per pair, batch 1 "
        "| batch 1 / batched | peak (MiB) |",
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, dtype, it in measured(report, "interactions"):
        if "error" in it:
            lines.append(f"| {name} | {dtype} | {STEPS} | | | | {it['error']} | | | {it['peak_mib']:.0f} |")
            continue
        lines.append(
            f"| {name} | {dtype} | {it['steps']} | {it['rule']} | {it['pairs']} | {it['batch']} "
            f"| {it['ms_per_pair']:.1f} | {it['ms_per_pair_batch1']:.1f} "
            f"| {it['batch1_over_batched']:.2f}× | {it['peak_mib']:.0f} |"
        )
    lines += [
        "",
        f"Agreement with fp32 on {AGREEMENT_PAIRS} pairs, CLIP4DM end to end. Weights are random, so word "
        "scores are small and a flag can flip on a tiny difference.",
        "",
        "| model | dtype | identical flagged words | mean Spearman per caption | max abs cosine diff |",
        "|---|---|--:|--:|--:|",
    ]
    lines += [
        f"| {name} | {dtype} | {a['identical_flags']:.0%} | {fmt(a['mean_spearman'], '.3f')} "
        f"| {a['max_abs_cosine_diff']:.1e} |"
        for name, dtype, a in measured(report, "agreement")
    ]
    return "\n".join(lines) + "\n"


def run(*, quick: bool, device: str | None, results_dir: Path | None) -> int:
    """Measure everything for this device and write ``gpu_<card>[_smoke].{json,md}``."""
    import tempfile
    import time

    import common
    import torch

    from clipalign.models.base import resolve_device

    start = time.perf_counter()
    if results_dir is not None:
        common.RESULTS_DIR = results_dir  # write_results reads it at call time
    torch_device = resolve_device(device)
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", torch.cuda.current_device())
    meter = Meter(torch_device)
    settings = plan(quick, torch_device.type == "cuda")
    card = card_name(torch_device)
    print(
        f"gpu.py on {card}: {', '.join(settings['models'])} · {'/'.join(settings['dtypes'])} · "
        f"batch {settings['batch_sizes']} · scan {settings['e2e_pairs']} pairs",
        file=sys.stderr,
        flush=True,
    )
    report: dict[str, Any] = {
        "command": "python benchmarks/gpu.py" + (" --quick" if quick else ""),
        "machine": {**common.machine_info(), "device": str(torch_device), "device_name": card},
        "settings": {**settings, "quick": quick, "seed": SEED, "agreement_pairs": AGREEMENT_PAIRS},
        "models": {},
    }
    if torch_device.type == "cuda":
        report["machine"]["device_name"] = torch.cuda.get_device_name(torch_device)
        report["machine"]["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    with tempfile.TemporaryDirectory(prefix="clipalign-gpu-") as tmp:
        inputs = make_inputs(Path(tmp) / "inputs", settings["e2e_pairs"])
        for name in settings["models"]:
            report["models"][name] = bench_model(name, Path(tmp), meter, settings, inputs)
            # written after every model, so a run stopped by a time limit still leaves what it measured
            report["wall_s"] = time.perf_counter() - start
            report["complete"] = name == settings["models"][-1]
            common.write_results(f"gpu_{card}" + ("_smoke" if quick else ""), report, markdown(report))
    return 0


def missing_packages() -> list[str]:
    """Distributions whose module cannot be found."""
    importlib.invalidate_caches()
    return [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]


def ensure_dependencies() -> None:
    """Install what is missing from wheels beside this script, if any; else exit naming it in one line."""
    missing = missing_packages()
    if missing and any(WHEELS.glob("*.whl")):
        print(f"installing {' '.join(missing)} from {WHEELS}", file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELS)]
        subprocess.run([*command, *missing], check=False)
        missing = missing_packages()
    if missing:
        sys.exit(
            f"missing Python packages: {' '.join(missing)} (pip install them, or put wheels in {WHEELS})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few sizes: a smoke run")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda if available)")
    parser.add_argument("--results-dir", type=Path, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    ensure_dependencies()
    sys.path[:0] = [str(REPO / "src"), str(HERE)]  # this checkout's clipalign, and benchmarks/common.py
    return run(quick=args.quick, device=args.device, results_dir=args.results_dir)


if __name__ == "__main__":
    raise SystemExit(main())
