"""CPU benchmark of token×patch interactions: completeness error vs. N; speed and memory vs. exCLIP.

Two seeded random CLIP models built from configs (a tiny one and a ViT-B/32-sized one) with the real CLIP
tokenizer attribute one generated 640×480 image and one caption at the last block, in fp32 on CPU:

1. accuracy: the relative completeness error |Σ A − target| / |target| of ``TokenPatchInteractions`` for
   Gauss–Legendre and right-Riemann quadrature and several numbers of nodes N;
2. speed and memory: ours (at the last block, closed-form JVPs of a change at one position), ours with
   the closed form switched off (``generic``: ``torch.func.jvp`` only, what an adapter without closed forms
   gets) and exCLIP's method written plainly below (one backward pass per embedding
   dimension), all with the right Riemann rule at N = 10, so all must give the same matrix. Every run is
   a fresh subprocess (one warm-up, one timed call, its peak memory); the variants alternate, and medians
   (and fastest runs) are compared;
3. batching and blocks: ms per pair on 8 pairs (the captions and images of ``bench_words.py``) computed one
   pair at a time and 8 at a time at the last block, and from blocks −2 and −4 with the adapter's closed
   form and with generic ``torch.func.jvp``, side by side in one process per model (the B/32-sized model and
   a 128-wide, 4-layer, 64-px one with 65 image positions), variants rotating, on one torch thread.

From the repo root:

    python benchmarks/bench_interactions.py [--quick]

Results go to ``benchmarks/results/interactions_cpu.{json,md}`` (``interactions_cpu_quick.*`` with
``--quick``). ``--variant ours|reference --model tiny|b32 --model-dir DIR --out FILE`` is the internal
mode that runs one measurement in its own process; ``--variant batching`` runs part 3 for one model.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    B32,
    REPO,
    SEED,
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

from clipalign.attribution import interactions
from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.models.base import InteractionAdapter
from clipalign.testing import tiny_clip_config

CAPTION = "A white husky and a black dog running in a snow covered forest."
IMAGE_SIZE = (640, 480)  # width, height
RULES = ("gauss", "riemann")
STEPS_GRID = (1, 2, 4, 8, 10, 16, 32)
QUICK_STEPS_GRID = (1, 2, 4, 10)  # N = 10 is the one the issue sets goals for
SPEED_STEPS = 10  # right Riemann, as exCLIP
CHUNK = 256  # TokenPatchInteractions' default
# a full run takes ~5 min on 2 idle CPU cores, most of it the B/32-sized speed runs and accuracy sweep
REPEATS = 3
QUICK_REPEATS = 1
REFERENCE_WARMUP_DIMS = 16  # the reference warms up on its first 16 embedding dimensions, not all D
AGREEMENT_TOLERANCE = 1e-5  # max |A_ours − A_ref| ≤ this · max |A_ref|
GOAL_SPEEDUP = 10.0  # at least, reference time / ours, for the B/32-sized model
GOAL_ERROR_RATIO = 10.0  # at least, riemann error / gauss error at N = 10
VARIANTS = ("ours", "generic", "reference")
WIDE = "tiny-128-wide"
MODEL_KEYS = {"tiny": TINY, "b32": B32, "wide": WIDE}  # --model choice → the name used in reports
BATCH_PAIRS = 8  # part 3: pairs per measurement, and pairs per batch when batched
BATCHING_THREADS = 1  # part 3: other load on a 2-core machine makes 2 OpenMP threads wait at every kernel
# part 3 variants: (name, block, batch size, closed form); the B/32-sized model's run below the last block
# on 1 pair and without generic JVPs from block −4, which alone would take minutes per pair
BATCHING_VARIANTS = (
    ("last block, batch 1", -1, 1, True),
    (f"last block, batch {BATCH_PAIRS}", -1, BATCH_PAIRS, True),
    ("block −2", -2, BATCH_PAIRS, True),
    ("block −2, generic", -2, BATCH_PAIRS, False),
    ("block −4", -4, BATCH_PAIRS, True),
    ("block −4, generic", -4, BATCH_PAIRS, False),
)
BATCHING_MODELS = {WIDE: {"below_last_pairs": BATCH_PAIRS, "skip": ()}}
BATCHING_MODELS[B32] = {"below_last_pairs": 1, "skip": ("block −4, generic",)}
BATCHING_REPEATS = 3
QUICK_BATCHING_REPEATS = 1
# the code measured, recorded by hash in the JSON (results are only comparable for the same code)
CODE_FILES = (
    "src/clipalign/attribution/interactions.py",
    "src/clipalign/attribution/quadrature.py",
    "src/clipalign/models/hf_clip.py",
)

Head = Callable[[torch.Tensor], torch.Tensor]


def make_image(width: int, height: int, seed: int) -> Image.Image:
    """A seeded RGB image: a random colour plus noise and a random rectangle."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=3) + rng.normal(0.0, 24.0, size=(height, width, 3))
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    pixels[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(0, 256, size=3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# --- exCLIP's method, written plainly: one backward pass per embedding dimension ---------------------------


def per_dimension_integrated_jacobian(
    head: Head, states: torch.Tensor, reference: torch.Tensor, steps: int, dims: int | None = None
) -> torch.Tensor:
    """T (D, S) as exCLIP computes it: the N right-Riemann points r + (k/N)(x − r) go through ``head`` in
    one batch, then one ``torch.autograd.grad`` per embedding dimension d of Σ_k (1/N) f_d(point_k) gives
    the integrated Jacobian row d (S, hidden); T[d, i] = Σ_c row_d[i, c] (x − r)[i, c].

    ``dims`` stops after the first dimensions (warm-up only). ``head`` maps (N, S, hidden) to (N, D).
    """
    alphas = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    weights = torch.full((steps,), 1 / steps, dtype=states.dtype)
    delta = states - reference
    points = (reference + alphas.to(states.dtype)[:, None, None] * delta).detach().requires_grad_(True)
    with torch.enable_grad():
        embeddings = head(points)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)  # the cosine is attributed
        rows = []
        for d in range(embeddings.shape[1] if dims is None else dims):
            (grad,) = torch.autograd.grad(weights @ embeddings[:, d], points, retain_graph=True)
            rows.append((grad.sum(dim=0).double() * delta.double()).sum(dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def reference_matrix(
    adapter: InteractionAdapter,
    image: Image.Image,
    caption: str,
    steps: int,
    dims: int | None = None,
    side_times: list[float] | None = None,
) -> np.ndarray:
    """A = TᵀV (tokens × (CLS + patches)) at the last text and vision blocks, per-dimension backward passes.

    The hidden states and references are those of :class:`TokenPatchInteractions`; ``side_times`` gets the
    seconds spent on the text and on the image integral.
    """
    text_layer, image_layer = adapter.num_text_layers - 1, adapter.num_vision_layers - 1
    [enc] = adapter.encode_captions([caption], "")
    ids = torch.tensor([enc.input_ids])
    ref_ids = torch.tensor([adapter.text_reference_ids(len(enc.input_ids))])
    pixels = adapter.preprocess([image])
    x, r_x = adapter.text_states(ids, text_layer)[0], adapter.text_states(ref_ids, text_layer)[0]
    y = adapter.image_states(pixels, image_layer)[0]
    r_y = adapter.image_states(torch.zeros_like(pixels), image_layer)[0]

    def text_head(h: torch.Tensor) -> torch.Tensor:
        return adapter.text_head(h, text_layer, enc.pool_index)

    def image_head(h: torch.Tensor) -> torch.Tensor:
        return adapter.image_head(h, image_layer)

    start = time.perf_counter()
    t = per_dimension_integrated_jacobian(text_head, x, r_x, steps, dims)
    middle = time.perf_counter()
    v = per_dimension_integrated_jacobian(image_head, y, r_y, steps, dims)
    if side_times is not None:
        side_times += [middle - start, time.perf_counter() - middle]
    return (t.T @ v).numpy()


# --- ours ---------------------------------------------------------------------------------------------------


@contextmanager
def timed_integrals(side_times: list[float]) -> Iterator[None]:
    """Time each ``integrated_jacobian`` call of :class:`TokenPatchInteractions` (text first, then image)."""
    original = interactions.integrated_jacobian

    def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
        start = time.perf_counter()
        result = original(*args, **kwargs)
        side_times.append(time.perf_counter() - start)
        return result

    interactions.integrated_jacobian = timed
    try:
        yield
    finally:
        interactions.integrated_jacobian = original


def ours_matrix(
    adapter: InteractionAdapter,
    image: Image.Image,
    caption: str,
    steps: int,
    side_times: list[float],
    closed_form: bool = True,
) -> np.ndarray:
    """The same A from ``TokenPatchInteractions(rule="riemann")``, CLS column first; without
    ``closed_form``, the adapter offers no closed-form JVPs, so generic ``torch.func.jvp`` runs instead."""
    method = TokenPatchInteractions(adapter, steps=steps, rule="riemann", chunk=CHUNK)
    with timed_integrals(side_times), closed_form_jvps(adapter, closed_form):
        [result] = method.attribute(image, caption)
    return np.concatenate([result.cls[:, None], result.matrix], axis=1)


@contextmanager
def closed_form_jvps(adapter: InteractionAdapter, enabled: bool) -> Iterator[None]:
    """Switch the adapter's closed-form last-block JVPs off (instance attributes shadowing the methods)."""
    if not enabled:
        adapter.text_head_jvps = lambda *args: None  # type: ignore[method-assign]
        adapter.image_head_jvps = lambda *args: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        if not enabled:
            del adapter.text_head_jvps, adapter.image_head_jvps


# --- one measurement in its own process (internal mode) ----------------------------------------------------


def proc_status_kib(field: str) -> int | None:
    """A ``Vm*`` field of /proc/self/status in KiB, or None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux ≥ 4.0); False if unable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_status_kib("VmHWM") is not None


def ru_maxrss_mib() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """This process's resident set size now, in MiB."""
    kib = proc_status_kib("VmRSS")
    return kib / 1024 if kib is not None else ru_maxrss_mib()


def measure(variant: str, model_dir: Path, matrix_path: Path) -> dict[str, Any]:
    """Load the model, warm up, time one call of ``variant`` and read its peak memory; save its matrix.

    Peak memory is the peak RSS after model loading minus the RSS after model loading. The loaded weights
    are memory-mapped from the safetensors file and only become resident when touched, so "loading" ends
    with touching every parameter; otherwise the first forward's page-ins would count as the method's
    memory. ``ru_maxrss`` can be neither reset nor trusted in a child (Linux carries the parent's peak
    across ``exec``, and model loading has its own transient peak), so after loading we reset the
    kernel's high-water mark and read it back (``VmHWM``, the counter ``ru_maxrss`` reports for the
    process itself); where that is not possible we fall back to ``ru_maxrss``.
    """
    ru_maxrss_before_load = ru_maxrss_mib()  # already the parent's peak, on Linux
    adapter = load_cpu_model(model_dir)
    rss_as_loaded = current_rss_mib()
    with torch.no_grad():  # the weights are memory-mapped: page them all in, so loading is complete
        for parameter in adapter.model.parameters():
            parameter.sum()
    image = make_image(*IMAGE_SIZE, SEED)
    gc.collect()
    reset = reset_peak_rss()
    rss_after_load = current_rss_mib()
    load_before = load_average_1min()

    warmup_sides: list[float] = []
    start = time.perf_counter()
    if variant != "reference":
        ours_matrix(adapter, image, CAPTION, SPEED_STEPS, warmup_sides, variant == "ours")
    else:
        reference_matrix(adapter, image, CAPTION, SPEED_STEPS, REFERENCE_WARMUP_DIMS, warmup_sides)
    warmup = time.perf_counter() - start

    sides: list[float] = []
    start = time.perf_counter()
    if variant != "reference":
        matrix = ours_matrix(adapter, image, CAPTION, SPEED_STEPS, sides, variant == "ours")
    else:
        matrix = reference_matrix(adapter, image, CAPTION, SPEED_STEPS, side_times=sides)
    elapsed = time.perf_counter() - start

    hwm = proc_status_kib("VmHWM") if reset else None
    peak = hwm / 1024 if hwm is not None else ru_maxrss_mib()
    np.save(matrix_path, matrix)
    return {
        "variant": variant,
        "time_s": elapsed,
        "text_s": sides[0],
        "image_s": sides[1],
        "warmup_s": warmup,
        "rss_as_loaded_mib": rss_as_loaded,
        "rss_after_load_mib": rss_after_load,
        "peak_rss_mib": peak,
        "extra_peak_rss_mib": peak - rss_after_load,
        "memory_method": "VmHWM reset after loading" if reset else "ru_maxrss",
        "ru_maxrss_mib": ru_maxrss_mib(),
        "ru_maxrss_before_load_mib": ru_maxrss_before_load,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"before": load_before, "after": load_average_1min()},
        "matrix_shape": list(matrix.shape),
    }


def run_measurement(variant: str, model_key: str, model_dir: Path, workdir: Path) -> tuple[dict, np.ndarray]:
    """Run :func:`measure` in a fresh Python process; its numbers and its matrix."""
    workdir.mkdir(parents=True)
    out = workdir / "result.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--model", model_key]
    command += ["--model-dir", str(model_dir), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text()), np.load(workdir / "matrix.npy")


def wide_config() -> Any:
    """The 128-wide, 4-layer, 64-px CLIP (8-px patches: 65 image positions) that the issue profiled."""
    return tiny_clip_config(hidden_size=128, image_size=64, patch_size=8, projection_dim=64)


def measure_batching(model_key: str, model_dir: Path, repeats: int) -> dict[str, Any]:
    """Part 3 for one model, in this process: ms per pair of each variant, variants rotating after a
    warm-up, the largest difference of the batched matrices from batch 1 and of the closed forms from the
    generic JVPs."""
    from bench_words import CAPTIONS, make_images

    torch.set_num_threads(BATCHING_THREADS)
    name = MODEL_KEYS[model_key]
    plan = BATCHING_MODELS[name]
    adapter = load_cpu_model(model_dir)
    images, captions = make_images(BATCH_PAIRS, SEED), list(CAPTIONS[:BATCH_PAIRS])
    variants = [v for v in BATCHING_VARIANTS if v[0] not in plan["skip"]]

    def run(variant: tuple[str, int, int, bool], pairs: int) -> list[Any]:
        _, block, batch, closed = variant
        method = TokenPatchInteractions(
            adapter, text_block=block, image_block=block, batch_size=batch, steps=SPEED_STEPS, chunk=CHUNK
        )
        with closed_form_jvps(adapter, closed):
            return method.attribute(images[:pairs], captions[:pairs], on_error="raise")

    def pairs_of(variant: tuple[str, int, int, bool]) -> int:
        return BATCH_PAIRS if variant[1] == -1 else plan["below_last_pairs"]

    times: dict[str, list[float]] = {v[0]: [] for v in variants}
    matrices: dict[str, list[np.ndarray]] = {}
    load_before = load_average_1min()
    for variant in variants[:2]:  # warm-up: the last block, one pair (the blocks below share its kernels)
        run(variant, 1)
    for r in range(repeats):
        for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
            print(f"  {name}: {variant[0]}, run {r + 1}/{repeats} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            results = run(variant, pairs_of(variant))
            times[variant[0]].append(1e3 * (time.perf_counter() - start) / pairs_of(variant))
            matrices[variant[0]] = [np.concatenate([x.cls[:, None], x.matrix], axis=1) for x in results]
    single, batched = matrices[variants[0][0]], matrices[variants[1][0]]
    gap = max(float(np.abs(b - a).max() / np.abs(a).max()) for a, b in zip(single, batched, strict=True))
    generic_gaps = {
        block: max(
            float(np.abs(a - b).max() / np.abs(b).max())
            for a, b in zip(matrices[block], matrices[f"{block}, generic"], strict=True)
        )
        for block in ("block −2", "block −4")
        if f"{block}, generic" in matrices
    }
    return {
        "model": name,
        "pairs": {v[0]: pairs_of(v) for v in variants},
        "ms_per_pair": times,
        "median_ms_per_pair": {k: statistics.median(v) for k, v in times.items()},
        "fastest_ms_per_pair": {k: min(v) for k, v in times.items()},
        "batched_vs_batch1_max_relative_diff": gap,
        "closed_vs_generic_max_relative_diff": generic_gaps,
        "skipped": list(plan["skip"]),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"before": load_before, "after": load_average_1min()},
    }


def batching(model_key: str, model_dir: Path, workdir: Path, repeats: int) -> dict[str, Any]:
    """Run :func:`measure_batching` in a fresh Python process."""
    workdir.mkdir(parents=True)
    out = workdir / "batching.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--variant", "batching", "--model", model_key]
    command += ["--model-dir", str(model_dir), "--out", str(out), "--repeats", str(repeats)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=None, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed")
    return json.loads(out.read_text())


# --- the two benchmarks, per model -------------------------------------------------------------------------


def speed_and_memory(model_key: str, model_dir: Path, workdir: Path, repeats: int) -> dict[str, Any]:
    """``repeats`` fresh-process runs of each variant, alternating which goes first; medians, agreement."""
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    matrices: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    load_before = load_average_1min()
    for r in range(repeats):
        for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            print(f"  {variant} run {r + 1}/{repeats} ...", file=sys.stderr, flush=True)
            run, matrix = run_measurement(variant, model_key, model_dir, workdir / f"{variant}-{r}")
            runs[variant].append(run)
            matrices[variant].append(matrix)
    load_after = load_average_1min()

    reference = matrices["reference"][0]
    scale = float(np.abs(reference).max())
    gaps = [float(np.abs(m - reference).max()) for v in ("ours", "generic") for m in matrices[v]]
    repeat_gap = max(float(np.abs(m - reference).max()) for m in matrices["reference"])

    def stat(pick: Callable[[list[float]], float]) -> dict[str, Any]:
        values = {
            v: {k: pick([run[k] for run in runs[v]]) for k in ("time_s", "text_s", "image_s")} for v in runs
        }
        memory = {v: pick([run["extra_peak_rss_mib"] for run in runs[v]]) for v in runs}
        ratio = {k: values["reference"][k] / values["ours"][k] for k in ("time_s", "text_s", "image_s")}
        generic = {k: values["reference"][k] / values["generic"][k] for k in ("time_s", "text_s", "image_s")}
        return {"time_s": values, "extra_peak_rss_mib": memory, "speedup": ratio, "speedup_generic": generic}

    return {
        "runs": runs,
        "median": stat(statistics.median),
        "fastest": stat(min),
        "max_abs_diff": max(gaps),
        "max_abs_reference": scale,
        "max_relative_diff": max(gaps) / scale,
        "agrees": max(gaps) <= AGREEMENT_TOLERANCE * scale,
        "reference_repeats_max_abs_diff": repeat_gap,
        "load_average_1min": {"before": load_before, "after": load_after},
    }


def accuracy(adapter: InteractionAdapter, image: Image.Image, steps_grid: Sequence[int]) -> dict[str, Any]:
    """Relative completeness error of ``TokenPatchInteractions`` per rule and N, and the target's terms."""
    errors: dict[str, dict[str, float]] = {}
    signed: dict[str, dict[str, float]] = {}
    completeness = None
    load_before = load_average_1min()
    start = time.perf_counter()
    for rule in RULES:
        errors[rule], signed[rule] = {}, {}
        for steps in steps_grid:
            method = TokenPatchInteractions(adapter, steps=steps, rule=rule, chunk=CHUNK)
            [result] = method.attribute(image, CAPTION)
            completeness = result.completeness
            signed[rule][str(steps)] = completeness.residual / completeness.target
            errors[rule][str(steps)] = abs(signed[rule][str(steps)])
    assert completeness is not None
    at = str(SPEED_STEPS)
    return {
        "relative_error": errors,
        "signed_relative_residual": signed,
        "riemann_over_gauss_at_10": errors["riemann"][at] / errors["gauss"][at],
        "target": completeness.target,
        "terms": {k: getattr(completeness, k) for k in ("s_xy", "s_x_ry", "s_rx_y", "s_rx_ry")},
        "wall_s": time.perf_counter() - start,
        "load_average_1min": {"before": load_before, "after": load_average_1min()},
    }


def bench_model(
    model_key: str, model_dir: Path, workdir: Path, repeats: int, steps_grid: Sequence[int]
) -> dict[str, Any]:
    """Speed and memory (in subprocesses), then accuracy (here) for one saved model."""
    adapter = load_cpu_model(model_dir)
    image = make_image(*IMAGE_SIZE, SEED)
    [enc] = adapter.encode_captions([CAPTION], "")
    config = adapter.model.config
    result: dict[str, Any] = {
        "parameters": sum(p.numel() for p in adapter.model.parameters()),
        "projection_dim": config.projection_dim,
        "text_positions": len(enc.input_ids),
        "image_positions": 1 + config.vision_config.image_size**2 // config.vision_config.patch_size**2,
        "text_layer": adapter.num_text_layers - 1,
        "image_layer": adapter.num_vision_layers - 1,
    }
    result["speed"] = speed_and_memory(model_key, model_dir, workdir, repeats)
    print(f"  accuracy, N in {list(steps_grid)} ...", file=sys.stderr, flush=True)
    result["accuracy"] = accuracy(adapter, image, steps_grid)
    return result


# --- report -------------------------------------------------------------------------------------------------


def speed_row(name: str, result: dict[str, Any], statistic: str, repeats: int) -> str:
    """One Markdown row of the speed table for one statistic (median or fastest)."""
    s = result["speed"][statistic]
    ours, generic, ref = (s["time_s"][v] for v in VARIANTS)
    speedup = s["speedup"]["time_s"]
    cells = [
        f"{name} ({result['parameters'] / 1e6:.1f} M)",
        f"{result['projection_dim']} · {result['text_positions']} + {result['image_positions']}",
        str(repeats),
        statistic,
        f"{ours['time_s']:.3g}",
        f"{generic['time_s']:.3g}",
        f"{ref['time_s']:.3g}",
        goal_text(speedup, GOAL_SPEEDUP, True) if name == B32 else f"{speedup:.2f}×",
        f"{s['speedup']['text_s']:.1f}× / {s['speedup']['image_s']:.1f}×",
        f"{s['speedup_generic']['time_s']:.2f}×",
        f"{s['extra_peak_rss_mib']['ours']:.0f}",
        f"{s['extra_peak_rss_mib']['generic']:.0f}",
        f"{s['extra_peak_rss_mib']['reference']:.0f}",
        f"{result['speed']['max_relative_diff']:.1e}",
    ]
    return "| " + " | ".join(cells) + " |"


def accuracy_rows(name: str, result: dict[str, Any], steps_grid: Sequence[int]) -> list[str]:
    """Markdown rows of the accuracy table: one per rule."""
    errors = result["accuracy"]["relative_error"]
    return [
        f"| {name} | {rule} | " + " | ".join(f"{errors[rule][str(n)]:.1e}" for n in steps_grid) + " |"
        for rule in RULES
    ]


PHASES = ("speed", "accuracy")


def before_after(load: dict[str, float]) -> str:
    """A load average before and after a phase, e.g. ``0.4 → 1.9``."""
    return f"{load['before']:.1f} → {load['after']:.1f}"


def batching_markdown(report: dict[str, Any]) -> list[str]:
    """Part 3: ms per pair per variant and model; the speed-ups of batching and of the closed forms."""
    plan = report["settings"]["batching"]
    header = (
        "| model | variant | pairs | runs | ms per pair, median | ms per pair, fastest | × last block, "
        f"batch {BATCH_PAIRS} (median) |\n|---|---|--:|--:|--:|--:|--:|"
    )
    rows, ratios = [], []
    batched = f"last block, batch {BATCH_PAIRS}"
    for name, r in report["batching"].items():
        median, fastest = r["median_ms_per_pair"], r["fastest_ms_per_pair"]
        for variant, ms in median.items():
            rows.append(
                f"| {name} | {variant} | {r['pairs'][variant]} | {len(r['ms_per_pair'][variant])} "
                f"| {ms:.1f} | {fastest[variant]:.1f} | {ms / median[batched]:.2f}× |"
            )
        for stat, values in (("median", median), ("fastest", fastest)):
            generic = [
                f"{values[f'{b}, generic'] / values[b]:.2f}×" if f"{b}, generic" in values else "—"
                for b in ("block −2", "block −4")
            ]
            ratios.append(
                f"| {name} | {stat} | {values['last block, batch 1'] / values[batched]:.2f}× "
                f"| {' | '.join(generic)} | {r['batched_vs_batch1_max_relative_diff']:.1e} "
                f"| {max(r['closed_vs_generic_max_relative_diff'].values(), default=float('nan')):.1e} |"
            )
    ratio_header = (
        f"| model | statistic | batch 1 / batch {BATCH_PAIRS} | generic / closed form, block −2 "
        "| generic / closed form, block −4 | max rel. diff, batched vs batch 1 "
        "| max rel. diff, closed vs generic |\n|---|---|--:|--:|--:|--:|--:|"
    )
    load = "; ".join(f"{n} {before_after(r['load_average_1min'])}" for n, r in report["batching"].items())
    runs = report["batching"].items()
    skipped = ", ".join(f"{n}: {', '.join(r['skipped'])}" for n, r in runs if r["skipped"])
    note = (
        f"Batching and blocks: `TokenPatchInteractions(model, steps={plan['steps']}, batch_size=B)` (Gauss–"
        f"Legendre, chunks of {CHUNK}) on the first {BATCH_PAIRS} captions and images of `bench_words.py` "
        "(COCO-style, of several lengths; 320×240 to 640×480), in one process per model on "
        f"{plan['torch_threads']} torch thread (with other load on this 2-core machine, two OpenMP "
        "threads wait for each other at every small kernel and the timings mean little), variants "
        "rotating after a warm-up at the last block. "
        f"*Batch 1* computes one pair per call, *batch {BATCH_PAIRS}* all {BATCH_PAIRS} together (one image-"
        "states call and one chunked JVP evaluation for the images; per caption length for the text). "
        "*Block −2 / −4* attribute the input of that block in both towers with the adapter's closed-form "
        "JVPs (the attributed block along one-position changes, whole-sequence tangents through the blocks "
        "between, the last block's pooled row); *generic* switches them off, so `torch.func.jvp` under "
        "`vmap` runs instead, what an adapter without closed forms gets. The B/32-sized model runs below "
        "the last block on 1 pair"
        + (f" (not run: {skipped}, minutes per pair)" if skipped else "")
        + f". 1-min load average before → after: {load}."
    )
    return ["", header, *rows, "", ratio_header, *ratios, "", note, ""]


def markdown(report: dict[str, Any]) -> str:
    """Tables a README can quote verbatim: speed and memory, completeness error vs. N, the N = 10 ratio."""
    m, settings = report["machine"], report["settings"]
    steps_grid = settings["steps_grid"]
    caption = (
        f"`{report['command']}` (from the repository root) · {m['date'][:10]} · {m['cpu']}, {m['cpu_count']} "
        f"cores, {m['torch_threads']} torch threads · torch {m['torch']}, transformers {m['transformers']} · "
        f"one {IMAGE_SIZE[0]}×{IMAGE_SIZE[1]} image and caption, last blocks, fp32"
    )
    speed_header = (
        "| model (parameters) | D · text + image positions | runs | statistic | ours (s) | generic (s) "
        "| reference (s) | speed-up | speed-up text / image | speed-up, generic | extra peak RSS, ours (MiB) "
        "| extra peak RSS, generic (MiB) | extra peak RSS, reference (MiB) | max rel. diff |\n"
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    )
    speed = [
        speed_row(name, r, stat, settings["repeats"])
        for name, r in report["models"].items()
        for stat in ("median", "fastest")
    ]
    accuracy_header = (
        "| model | rule | "
        + " | ".join(f"N={n}" for n in steps_grid)
        + " |\n|---|---|"
        + "--:|" * len(steps_grid)
    )
    accuracy = [row for name, r in report["models"].items() for row in accuracy_rows(name, r, steps_grid)]
    ratio_header = "| model | riemann error, N=10 | gauss error, N=10 | riemann / gauss |\n|---|--:|--:|--:|"
    ratios = [
        f"| {name} | {r['accuracy']['relative_error']['riemann']['10']:.1e} "
        f"| {r['accuracy']['relative_error']['gauss']['10']:.1e} "
        f"| {goal_text(r['accuracy']['riemann_over_gauss_at_10'], GOAL_ERROR_RATIO, True, '.3g')} |"
        for name, r in report["models"].items()
    ]
    load = "; ".join(
        f"{name} " + ", ".join(f"{phase} {before_after(r[phase]['load_average_1min'])}" for phase in PHASES)
        for name, r in report["models"].items()
    )
    speed_note = (
        f'*Ours*: `TokenPatchInteractions(model, steps={SPEED_STEPS}, rule="riemann")`, chunks of {CHUNK} '
        "tangents: at the last block (as here) the adapter's closed-form JVPs (a change at one position "
        "moves only that position's key and value, and the query at the pooled position). *Generic*: the "
        "same with the closed form switched off, so every column is a `torch.func.jvp` of the head (what "
        "an adapter without closed forms gets). *Reference*: exCLIP's method written plainly in the "
        "benchmark: the "
        f"{SPEED_STEPS} right-Riemann points of each side in one forward through the last block, then one "
        "`torch.autograd.grad` per embedding dimension (D of them), T = (J·δ) summed over channels, "
        "A = TᵀV. Same rule and N, so the matrices must agree: *max rel. diff* = max |A − A_ref| / "
        f"max |A_ref| over ours and generic (required ≤ {AGREEMENT_TOLERANCE:g}). Each run is a fresh "
        f"process: load the model, one warm-up (the reference's on its first {REFERENCE_WARMUP_DIMS} "
        "dimensions), one timed call of the whole pipeline (tokenization, preprocessing, states, both "
        "integrals, A); the variants alternate. "
        "*Speed-up* = reference time / ours (goal from the issue: ≥ 10× for the B/32-sized model), "
        "*speed-up, generic* = reference time / generic; "
        "*text / image* compares the two integrals alone. *Extra peak RSS* = peak resident memory after "
        "model loading minus the resident memory after model loading. *Fastest* uses each variant's "
        "fastest run, which other load on the machine inflates least. Weights are random (seeded): speed "
        "depends on the architecture only."
    )
    accuracy_note = (
        "Relative completeness error |Σ A − target| / |target| of `TokenPatchInteractions` (cosine, last "
        "blocks), target = f(x)·g(y) − f(x)·g(r_y) − f(r_x)·g(y) + f(r_x)·g(r_y). Goal (from the issue): "
        f"the Gauss–Legendre error at N=10 at most 1/{GOAL_ERROR_RATIO:g} of the right-Riemann error. "
        f"1-min load average before → after: {load}."
    )
    return "\n".join(
        [
            caption,
            "",
            speed_header,
            *speed,
            "",
            speed_note,
            "",
            accuracy_header,
            *accuracy,
            "",
            ratio_header,
            *ratios,
            "",
            accuracy_note,
            *(batching_markdown(report) if report.get("batching") else [""]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_REPEATS} run per variant, N in {QUICK_STEPS_GRID}"
    )
    parser.add_argument(
        "--variant", choices=[*VARIANTS, "batching"], help="internal: run one measurement in this process"
    )
    parser.add_argument("--repeats", type=int, default=BATCHING_REPEATS, help="internal: part 3 repeats")
    parser.add_argument("--model", choices=sorted(MODEL_KEYS), help="internal: which model --model-dir holds")
    parser.add_argument("--model-dir", type=Path, help="internal: a model saved by save_random_clip")
    parser.add_argument("--out", type=Path, help="internal: where the measurement's JSON goes")
    args = parser.parse_args(argv)

    if args.variant:
        if not (args.model and args.model_dir and args.out):
            parser.error("--variant needs --model, --model-dir and --out")
        if args.variant == "batching":
            args.out.write_text(json.dumps(measure_batching(args.model, args.model_dir, args.repeats)) + "\n")
            return 0
        result = measure(args.variant, args.model_dir, args.out.parent / "matrix.npy")
        result["model"] = MODEL_KEYS[args.model]
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0

    require_shared_data()
    repeats = QUICK_REPEATS if args.quick else REPEATS
    steps_grid = QUICK_STEPS_GRID if args.quick else STEPS_GRID
    report: dict[str, Any] = {
        "command": "python benchmarks/bench_interactions.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "settings": {
            "caption": CAPTION,
            "image_size": list(IMAGE_SIZE),
            "layers": "last text and vision blocks",
            "normalize": "cosine",
            "rules": list(RULES),
            "steps_grid": list(steps_grid),
            "speed_steps": SPEED_STEPS,
            "speed_rule": "riemann",
            "chunk": CHUNK,
            "repeats": repeats,
            "warmup": 1,
            "reference_warmup_dims": REFERENCE_WARMUP_DIMS,
            "agreement_tolerance": AGREEMENT_TOLERANCE,
            "seed": SEED,
            "device": "cpu",
            "dtype": "fp32",
            "batching": {
                "pairs": BATCH_PAIRS,
                "models": BATCHING_MODELS if not args.quick else {WIDE: BATCHING_MODELS[WIDE]},
                "variants": [list(v) for v in BATCHING_VARIANTS],
                "repeats": QUICK_BATCHING_REPEATS if args.quick else BATCHING_REPEATS,
                "torch_threads": BATCHING_THREADS,
                "steps": SPEED_STEPS,
                "rule": "gauss",
            },
        },
        "code_sha256": {
            path: hashlib.sha256((REPO / path).read_bytes()).hexdigest()[:16] for path in CODE_FILES
        },
        "models": {},
    }
    keys = {name: key for key, name in MODEL_KEYS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        configs = {**model_configs(), WIDE: wide_config()}
        for name, config in model_configs().items():
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            model_dir = save_model(config, Path(tmp) / name / "model")
            work = Path(tmp) / name / "runs"
            report["models"][name] = bench_model(keys[name], model_dir, work, repeats, steps_grid)
        report["batching"] = {}
        for name in report["settings"]["batching"]["models"]:
            print(f"batching and blocks: {name} ...", file=sys.stderr, flush=True)
            model_dir = Path(tmp) / name / "model"
            if not model_dir.exists():
                save_model(configs[name], model_dir)
            work = Path(tmp) / name / "batching"
            batching_repeats = report["settings"]["batching"]["repeats"]
            report["batching"][name] = batching(keys[name], model_dir, work, batching_repeats)

    stem = "interactions_cpu_quick" if args.quick else "interactions_cpu"
    write_results(stem, report, markdown(report))
    disagree = [name for name, r in report["models"].items() if not r["speed"]["agrees"]]
    if disagree:
        sys.exit(f"ours and the reference disagree beyond {AGREEMENT_TOLERANCE:g} · max|A_ref|: {disagree}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
