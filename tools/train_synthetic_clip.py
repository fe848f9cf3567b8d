"""Train a small CLIP on the synthetic shapes world (clipalign.synthetic) on CPU, from a seed.

A Hugging Face ``CLIPModel`` built from a config, with the real CLIP tokenizer (49,408 tokens), is trained
contrastively on freshly generated scenes (scene ``i`` of ``--seed``, in order: the data order is fixed by
the seed). Each image's four one-word foils are extra negatives of the image→text loss (hard negatives)
and of an extra image-vs-its-own-captions term, which is what teaches the text tower that one wrong word
lowers the cosine. Captions are read as ``"A photo depicts " + caption``, the template clipalign scores with.
The vision position embeddings start from a 2-D sine-cosine pattern (then learned): with the default
N(0, 0.02) init the position words were still at chance after 1,500 steps.
A held-out set (``--val-seed``) reports retrieval accuracy true-vs-foil (does the true caption score above
each of its foils?) during and after training. From the repository root:

    python tools/train_synthetic_clip.py                    # defaults: the committed model
    python tools/train_synthetic_clip.py --family siglip    # the committed synthetic SigLIP

``--family siglip`` trains a ``SiglipModel`` instead, with SigLIP's sigmoid loss, a tokenizer trained
offline on the synthetic words and the same data, schedule and sizes (see ``synthetic_siglip.py``); it
goes to ``src/clipalign/checkpoints/synthetic-siglip`` (``clipalign.checkpoints.SYNTHETIC_SIGLIP``), its
log to ``benchmarks/results/synthetic_training_siglip.{json,md}``.

By default the model goes to ``src/clipalign/checkpoints/synthetic-clip``, the checkpoint the package ships
(``clipalign.checkpoints.SYNTHETIC_CLIP``). It is saved in fp16 (``save_pretrained``, safetensors) with
the tokenizer's vocab/merges and a ``CLIPImageProcessorPil`` config; ``clipalign.load_model(dir)`` upcasts
it to fp32. A README.md in the model directory records the command, seed, config, wall time and final
numbers, and a log goes to ``benchmarks/results/synthetic_training.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from synthetic_clip import ClipFamily, Pixels, TrainConfig, dir_size
from synthetic_siglip import SiglipFamily, SiglipTrainConfig, write_siglip_readme

from clipalign import CLIP4DM, WordAlignment, load_model
from clipalign.models.base import ClipAdapter
from clipalign.synthetic import KINDS, Scene, generate_scenes, make_foil
from clipalign.testing import CLIP_VOCAB_SIZE, cpu_model
from clipalign.text.alignment import DEFAULT_TEMPLATE

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "src" / "clipalign" / "checkpoints"
RESULTS_DIR = REPO / "benchmarks" / "results"
FAMILIES: dict[str, tuple[type[TrainConfig], Any, Path, Path]] = {
    "clip": (TrainConfig, ClipFamily, CHECKPOINTS / "synthetic-clip", RESULTS_DIR / "synthetic_training"),
    "siglip": (
        SiglipTrainConfig,
        SiglipFamily,
        CHECKPOINTS / "synthetic-siglip",
        RESULTS_DIR / "synthetic_training_siglip",
    ),
}
"""``--family`` → its settings class, its model side (tokenizer, model, loss, saving; see
:class:`synthetic_clip.ClipFamily`), its default checkpoint folder and its default log path."""

EXTRA_KINDS = ("position", "shape", "size", "color")
"""Kinds of the extra training foils, in order (the hardest to learn first)."""


def batch_captions(
    scenes: list[Scene], seed: int, first_index: int, extra: int
) -> tuple[list[str], list[str]]:
    """True captions (B) and foils, image-major: each scene's 4 foils then ``extra`` more one-word foils
    (kinds from :data:`EXTRA_KINDS`, drawn from ``default_rng([seed, scene index, 1])``, avoiding repeats
    when another foil of that kind exists)."""
    foils: list[str] = []
    for offset, scene in enumerate(scenes):
        captions = [f.caption for f in scene.foils]
        rng = np.random.default_rng([seed, first_index + offset, 1])
        for k in range(extra):
            kind = EXTRA_KINDS[k % len(EXTRA_KINDS)]
            for _ in range(8):
                caption = make_foil(rng, scene.objects, kind).caption
                if caption not in captions:
                    break
            captions.append(caption)
        foils.extend(captions)
    return [s.caption for s in scenes], foils


def retrieval(cosines: np.ndarray) -> dict[str, float]:
    """True-vs-foil retrieval from cosines (N, 1 + 4): true caption first, then the foils of ``KINDS``."""
    wins = cosines[:, :1] > cosines[:, 1:]
    out = {"per_foil": float(wins.mean()), "all_foils": float(wins.all(axis=1).mean())}
    out.update({f"per_foil_{kind}": float(wins[:, k].mean()) for k, kind in enumerate(KINDS)})
    return out


@torch.no_grad()
def validation_cosines(
    family: Any, model: torch.nn.Module, pixels: torch.Tensor, scenes: list[Scene]
) -> np.ndarray:
    """Cosines of each validation image with its true caption and its 4 foils, (N, 5)."""
    model.eval()
    rows = []
    for lo in range(0, len(scenes), 100):
        chunk = scenes[lo : lo + 100]
        img = family.image_features(model, pixels[lo : lo + 100])
        captions = [c for s in chunk for c in (s.caption, *(f.caption for f in s.foils))]
        txt = family.text_features(model, family.encode(captions)).reshape(len(chunk), 5, -1)
        rows.append(torch.einsum("nd,nkd->nk", img, txt).numpy())
    model.train()
    return np.concatenate(rows)


def adapter_cosines(adapter: ClipAdapter, scenes: list[Scene]) -> np.ndarray:
    """The same cosines through clipalign's adapter (the saved, reloaded model)."""
    rows = []
    with torch.no_grad():
        for lo in range(0, len(scenes), 100):
            chunk = scenes[lo : lo + 100]
            img = adapter.image_embeddings(adapter.preprocess([s.render() for s in chunk]))
            captions = [c for s in chunk for c in (s.caption, *(f.caption for f in s.foils))]
            encoded = adapter.encode_captions(captions, DEFAULT_TEMPLATE)
            txt = adapter.text_embeddings(adapter.collate(encoded)).embeds.reshape(len(chunk), 5, -1)
            rows.append(F.cosine_similarity(img[:, None], txt, dim=-1).numpy())
    return np.concatenate(rows)


def localisation(adapter: ClipAdapter, scenes: list[Scene], layers: int) -> dict[str, float]:
    """CLIP4DM most-negative-word localisation accuracy on the foils, and the random-word baseline."""
    images = [s.render() for s in scenes for _ in s.foils]
    foils = [f for s in scenes for f in s.foils]
    results = CLIP4DM(adapter, layers=layers, batch_size=64).attribute(
        images, [f.caption for f in foils], mode="most_negative"
    )
    hits, chance = [], []
    for foil, result in zip(foils, results, strict=True):
        assert isinstance(result, WordAlignment)
        marked = [i for i, w in enumerate(result.words) if w.misaligned]
        hits.append(marked == [foil.word_index])
        chance.append(1 / sum(not w.punctuation for w in result.words))
    return {"la": float(np.mean(hits)), "random_la": float(np.mean(chance))}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 5 % of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def temperature(model: torch.nn.Module) -> dict[str, float]:
    """The learned temperature exp(logit_scale), and SigLIP's learned bias where the model has one."""
    out = {"logit_scale": model.logit_scale.exp().item()}
    if hasattr(model, "logit_bias"):
        out["logit_bias"] = model.logit_bias.item()
    return out


def write_readme(out: Path, cfg: TrainConfig, summary: dict[str, Any], command: str) -> None:
    """The model card: command, seed, config, wall time, final loss and validation numbers."""
    final = summary["final"]
    names = {"color": "colour"}
    kinds = ", ".join(f"{names.get(k, k)} {final['retrieval'][f'per_foil_{k}']:.1%}" for k in KINDS)
    sha256 = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    text = f"""# synthetic-clip

A small CLIP (Hugging Face `CLIPModel`, {summary["parameters"] / 1e6:.2f} M parameters, of which
{CLIP_VOCAB_SIZE * cfg.width / 1e6:.2f} M are the token embedding) trained from scratch on CPU on the
synthetic shapes world of `clipalign.synthetic`, with the real CLIP tokenizer. It exists so that
word-level misalignment (CLIP4DM) can be tested where the truth is known; it knows nothing else.

Trained with (from the repository root):

```bash
{command}
```

- seed {cfg.seed} (training scenes `default_rng([{cfg.seed}, i])`, in order; `torch.manual_seed({cfg.seed})`),
  validation seed {cfg.val_seed} ({cfg.val_scenes} scenes); `torch.use_deterministic_algorithms(True)`,
  {cfg.threads} torch thread(s). **Reproducible from the seed**: the same command with the same torch
  version, thread count and kind of CPU gives the same `model.safetensors`, byte for byte (sha256
  `{sha256}`); float reductions may differ on other CPUs or thread counts. The validation set does not
  touch training, so `--val-scenes` / `--eval-every` do not change the weights. (One thread by default:
  on a shared 2-core machine, 2 threads made steps up to 50× slower whenever the other core was busy.)
- {cfg.steps} steps of {cfg.batch_size} images, each with its true caption and its 4 one-word foils
  (colour, shape, size, position) as hard negatives; AdamW lr {cfg.lr} (warm-up {cfg.warmup}, cosine to 5 %),
  weight decay {cfg.weight_decay}, hard-negative weight {cfg.hard_weight}, gradient clipping 1.0.
  Captions are read as `"{DEFAULT_TEMPLATE}" + caption`, as clipalign scores them.
- Architecture: text and vision width {cfg.width}, {cfg.text_layers} text / {cfg.vision_layers} vision
  layers, {cfg.heads} heads, MLP {cfg.mlp_ratio * cfg.width}, projection {cfg.projection_dim};
  {cfg.image_size}×{cfg.image_size} images, patch {cfg.patch_size}; vision position embeddings initialised
  with a 2-D sine-cosine pattern of amplitude {cfg.pos_init} (then learned); 49,408-token vocabulary,
  77-token context; eager attention.
- Saved in fp16 (`model.safetensors`); `clipalign.load_model(dir)` loads it in fp32 (upcast).
  The tokenizer is the shared CLIP vocab/merges; the image processor is `CLIPImageProcessorPil` at
  {cfg.image_size} px. Directory size {summary["size_bytes"] / 1e6:.2f} MB.
- Wall time {summary["wall_s"] / 60:.1f} min ({summary["train_s"] / 60:.1f} min of training steps) on
  {summary["machine"]["cpu"]}, torch {summary["machine"]["torch"]}.
- Final training loss {summary["final_loss"]:.4f} (mean of the last 50 steps; CLIP loss + hard-negative term).

Held-out validation ({cfg.val_scenes} scenes of seed {cfg.val_seed}, the saved fp16 model reloaded with
`clipalign.load_model`): the true caption scores above a foil in {final["retrieval"]["per_foil"]:.1%} of
(image, foil) pairs ({kinds}) and above all 4 of its foils for {final["retrieval"]["all_foils"]:.1%} of
images. CLIP4DM `most_negative` (layers={final["layers"]}) finds the changed word in {final["la"]:.1%} of
foils (random word: {final["random_la"]:.1%}).

Layer-by-layer detection results: `benchmarks/results/synthetic_layers.md`.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, weight decay on the matrices other than embeddings only."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def train_step(
    family: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    to_pixels: Pixels,
    cfg: TrainConfig,
    step: int,
) -> dict[str, float]:
    """One step on training scenes ``step · batch .. (step + 1) · batch − 1`` of ``cfg.seed``: the
    family's loss on their images, true captions and foils, then a clipped AdamW update. Returns the
    loss and its parts."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    scenes = generate_scenes(cfg.batch_size, cfg.seed, cfg.image_size, start=step * cfg.batch_size)
    pixels = to_pixels([s.render() for s in scenes])
    true, foils = batch_captions(scenes, cfg.seed, step * cfg.batch_size, cfg.extra_foils)
    texts = family.encode(true + foils)
    loss, parts = family.loss(model, pixels, texts, len(scenes), cfg.hard_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return parts


def seed_everything(cfg: TrainConfig) -> bool:
    """One thread count, ``torch.manual_seed(cfg.seed)``, deterministic algorithms where torch has them
    (returns whether it does)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    try:
        torch.use_deterministic_algorithms(True)
    except RuntimeError:  # pragma: no cover
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--family", choices=sorted(FAMILIES), default="clip")
    family_name = chooser.parse_known_args(given)[0].family
    config_class, family_class, default_out, default_log = FAMILIES[family_name]
    defaults = config_class()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default="clip",
        help="clip: CLIPModel, contrastive loss (the default, synthetic-clip); "
        "siglip: SiglipModel, sigmoid loss (synthetic-siglip)",
    )
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--log", type=Path, default=default_log)
    parser.add_argument(
        "--rewrite-docs",
        action="store_true",
        help="only rewrite the model README and the log table from the log's JSON (no training)",
    )
    args = parser.parse_args(given)
    readme = write_siglip_readme if family_name == "siglip" else write_readme
    if args.rewrite_docs:
        summary = json.loads(args.log.with_suffix(".json").read_text(encoding="utf-8"))
        readme(args.out, config_class(**summary["config"]), summary, summary["command"])
        args.log.with_suffix(".md").write_text(training_table(summary), encoding="utf-8")
        return 0
    cfg = config_class(**{k: getattr(args, k) for k in asdict(defaults)})
    command = " ".join(["python tools/train_synthetic_clip.py", *map(shlex.quote, given)])
    start = time.perf_counter()

    deterministic = seed_everything(cfg)
    family = family_class(cfg)
    to_pixels = Pixels(family.processor)
    model = family.build()
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters; config {asdict(cfg)}", flush=True)

    val_scenes = generate_scenes(cfg.val_scenes, cfg.val_seed, cfg.image_size)
    val_images = [s.render() for s in val_scenes]
    val_pixels = to_pixels(val_images)
    reference = family.processor(images=val_images[:8], return_tensors="pt")["pixel_values"]
    assert torch.allclose(val_pixels[:8], reference, atol=1e-5), "pixels differ from the image processor"

    optimizer = make_optimizer(model, cfg)
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    train_start = time.perf_counter()
    for step in range(cfg.steps):
        parts = train_step(family, model, optimizer, to_pixels, cfg, step)
        losses.append(parts["loss"])
        if step % 50 == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - train_start
            terms = " ".join(f"{k} {v:.3f}" for k, v in parts.items() if k != "loss")
            bias = getattr(model, "logit_bias", None)
            print(
                f"step {step:5d}  loss {np.mean(losses[-50:]):.4f}  ({terms})"
                f"  scale {model.logit_scale.exp().item():.1f}"
                + (f"  bias {bias.item():.2f}" if bias is not None else "")
                + f"  lr {lr_at(step, cfg):.2e}  {elapsed:.0f} s",
                flush=True,
            )
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            acc = retrieval(validation_cosines(family, model, val_pixels, val_scenes))
            entry = {"step": step + 1, "loss": float(np.mean(losses[-50:])), **acc}
            entry["elapsed_s"] = time.perf_counter() - train_start
            history.append(entry)
            per_kind = " ".join(f"{k} {acc[f'per_foil_{k}']:.3f}" for k in KINDS)
            print(
                f"  val: true > foil {acc['per_foil']:.3f} ({per_kind}); true > all 4 {acc['all_foils']:.3f}",
                flush=True,
            )
    train_s = time.perf_counter() - train_start

    family.save(model, args.out)
    family.close()
    adapter = load_model(args.out, device="cpu")
    assert adapter.dtype == torch.float32
    final_retrieval = retrieval(adapter_cosines(adapter, val_scenes))
    layers = adapter.num_text_layers
    final_la = localisation(adapter, val_scenes, layers)
    print(f"reloaded fp16→fp32 model: retrieval {final_retrieval}; CLIP4DM layers={layers}: {final_la}")
    wall_s = time.perf_counter() - start
    summary: dict[str, Any] = {
        "command": command,
        "family": family_name,
        "config": asdict(cfg),
        "deterministic_algorithms": deterministic,
        "parameters": n_params,
        "size_bytes": dir_size(args.out),
        "train_s": train_s,
        "wall_s": wall_s,
        "final_loss": float(np.mean(losses[-50:])),
        "history": history,
        "final": {"retrieval": final_retrieval, "layers": layers, **final_la, **temperature(model)},
        "machine": {
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        },
    }
    readme(args.out, cfg, summary, command)
    summary["size_bytes"] = dir_size(args.out)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    args.log.with_suffix(".md").write_text(training_table(summary), encoding="utf-8")
    print(f"saved {args.out} ({summary['size_bytes'] / 1e6:.2f} MB) in {wall_s / 60:.1f} min", flush=True)
    return 0


def training_table(summary: dict[str, Any]) -> str:
    """Validation retrieval during training as a Markdown table."""
    lines = [
        f"`{summary['command']}` · {summary['machine']['date']} · {summary['machine']['cpu']}, "
        f"torch threads: {summary['machine']['threads']} · torch {summary['machine']['torch']} · "
        f"wall {summary['wall_s'] / 60:.1f} min · model {summary['size_bytes'] / 1e6:.2f} MB",
        "",
        "| step | train loss | true > foil | colour | shape | size | position | true > all 4 | elapsed (s) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for h in summary["history"]:
        lines.append(
            f"| {h['step']} | {h['loss']:.4f} | {h['per_foil']:.3f} | {h['per_foil_color']:.3f} | "
            f"{h['per_foil_shape']:.3f} | {h['per_foil_size']:.3f} | {h['per_foil_position']:.3f} | "
            f"{h['all_foils']:.3f} | {h['elapsed_s']:.0f} |"
        )
    final = summary["final"]
    lines += [
        "",
        "Saved fp16 model reloaded with `clipalign.load_model`: "
        f"true > foil {final['retrieval']['per_foil']:.3f}, "
        f"true > all 4 {final['retrieval']['all_foils']:.3f}; "
        f"CLIP4DM most_negative (layers={final['layers']}) "
        f"localisation {final['la']:.3f} vs random word {final['random_la']:.3f}. Validation: "
        f"{summary['config']['val_scenes']} scenes of seed {summary['config']['val_seed']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
