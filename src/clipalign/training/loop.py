"""The fine-tuning loop: contrastive steps with an L2 pull to the starting weights, checkpoints, resume.

One optimizer step is ``accumulate`` micro-batches of ``batch_size`` pairs each (the contrastive batch:
negatives come from the same micro-batch, across all data-parallel ranks). AdamW with decoupled weight
decay on weight matrices, a linear warm-up then a cosine decay to ``min_lr`` × the peak, gradients
clipped to ``max_grad_norm`` when set. The output folder is a normal Hugging Face checkpoint
(``config.json``, ``model.safetensors``, tokenizer and image processor files) that every command loads
with ``--model OUT``; the run's own files live beside it (``checkpoints/``, ``metrics.jsonl``,
``curves.png``, ``eval/``).
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from clipalign.models.base import ClipAdapter
from clipalign.text.alignment import CaptionTruncatedWarning
from clipalign.training import distributed, state
from clipalign.training.data import Batch, DataSpec, Skipped, batches, count_usable
from clipalign.training.objective import add_l2_init_grad, clip_loss, l2_init_penalty, sigmoid_loss
from clipalign.training.progress import (
    CURVES_FILE,
    METRICS_FILE,
    Evaluation,
    MetricsLog,
    draw_curves,
    evaluate,
)
from clipalign.training.settings import FinetuneSettings
from clipalign.training.towers import (
    Family,
    decays,
    family,
    hf_model,
    image_features,
    text_features,
    trainable,
)

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class FinetuneResult:
    """What a run did: steps, pairs trained on, pairs skipped, where it resumed, the output folder."""

    out: Path
    steps: int
    pairs: int
    skipped: Skipped
    resumed_from: int | None
    final_loss: float | None


class DualEncoder(torch.nn.Module):
    """The HF model's two towers and its logit parameters as one module (what DDP wraps)."""

    def __init__(self, net: PreTrainedModel, kind: Family) -> None:
        super().__init__()
        self.net = net
        self.kind = kind

    def forward(
        self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, pool: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return image_features(self.net, self.kind, pixels), text_features(
            self.net, self.kind, ids, mask, pool
        )


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from 1 down to ``floor`` at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def contrastive_loss(kind: Family, net: Any, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The family's loss over a global batch of embeddings: CLIP's InfoNCE or SigLIP's sigmoid loss."""
    if kind == "clip":
        return clip_loss(image, text, net.logit_scale)
    return sigmoid_loss(image, text, net.logit_scale, net.logit_bias)


def _autocast(device: torch.device, dtype: str) -> Any:
    """Mixed precision on CUDA for ``bf16``/``fp16`` (weights and optimizer stay fp32); none for fp32."""
    if dtype == "fp32":
        return nullcontext()
    if device.type != "cuda":
        raise ValueError(
            f"--dtype {dtype} trains with mixed precision on a CUDA GPU; use fp32 on {device.type}"
        )
    return torch.autocast("cuda", dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def finetune(
    data: DataSpec,
    model: ClipAdapter,
    out: str | Path,
    *,
    settings: FinetuneSettings | None = None,
    evaluations: Sequence[Evaluation] = (),
    dtype: str = "fp32",
    overwrite: bool = False,
    identity: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` (its wrapped HF model, in place) on the pairs of ``data`` and save it to ``out``.

    A run whose ``out`` holds a checkpoint with the same settings (and ``identity``: the model and data
    names the caller records) resumes from it, with the same result as an uninterrupted run (exactly, on
    CPU, with the same thread count); ``overwrite`` starts again. ``evaluations`` run on the starting
    weights, every ``eval_every`` steps and at the end. ``dtype`` ``bf16``/``fp16`` is autocast on CUDA.
    ``on_step`` is called with each finished step number (tests use it to stop a run at a known point).
    """
    settings = settings or FinetuneSettings()
    out = Path(out)
    rank, world = distributed.rank_and_size()
    if settings.batch_size % world:
        raise ValueError(f"batch_size {settings.batch_size} must be a multiple of the {world} processes")
    kind, net = family(model), hf_model(model)
    device = next(net.parameters()).device
    autocast = _autocast(device, dtype)
    root = out / CHECKPOINTS
    if overwrite and rank == 0 and out.exists():
        shutil.rmtree(out)
    if world > 1:
        torch.distributed.barrier()
    out.mkdir(parents=True, exist_ok=True)
    recorded = {**settings.to_dict(), **(identity or {}), "dtype": dtype}

    named = trainable(net, settings.freeze)  # a bad --freeze fails before the data is read
    pairs_per_epoch, skipped = count_usable(data)
    steps_per_epoch = pairs_per_epoch // settings.batch_size // settings.accumulate
    if steps_per_epoch == 0:
        raise ValueError(
            f"{data.source}: {pairs_per_epoch} usable pairs, fewer than one step of "
            f"{settings.batch_size * settings.accumulate} (batch size × accumulation)"
        )
    total = steps_per_epoch * settings.epochs
    total = min(total, settings.max_steps) if settings.max_steps else total

    torch.manual_seed(settings.seed)
    params = [p for _, p in named]
    initial = [p.detach().clone() for p in params] if settings.l2_init else []
    groups = [
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": settings.weight_decay},
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, settings.warmup, settings.min_lr)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "fp16")

    resumed = state.latest(root, recorded)
    position = state.Position()
    if resumed is not None:
        net.load_state_dict(resumed.weights)
        optimizer.load_state_dict(resumed.states["optimizer"])
        scheduler.load_state_dict(resumed.states["scheduler"])
        scaler.load_state_dict(resumed.states["scaler"])
        state.set_rng_state(resumed.states["rng"])
        position = resumed.position
        skipped = Skipped(*resumed.states["skipped"])
    log = MetricsLog(out / METRICS_FILE, resume_at=position.step if resumed else None, enabled=rank == 0)
    encoder = DualEncoder(net, kind)
    wrapped: torch.nn.Module = encoder
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(encoder)
    net.train()

    def run_evaluations(step: int) -> None:
        if evaluations and rank == 0:
            log.write({"step": step, "eval": evaluate(evaluations, model, out, step, dtype)})
        if evaluations and world > 1:
            torch.distributed.barrier()

    def checkpoint(at: state.Position) -> None:
        if rank == 0:
            states = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "skipped": [skipped.total, skipped.examples],
            }
            state.save(root, at, net, states, recorded, settings.keep)
        if world > 1:
            torch.distributed.barrier()

    if position.step == 0:
        run_evaluations(0)
    step, epoch, taken = position.step, position.epoch, position.taken
    share = settings.batch_size // world
    bar = tqdm(total=total, initial=step, unit="step", desc="finetune", disable=not settings.progress or rank)
    last_loss: float | None = None
    trained_pairs = 0
    while step < total:
        stream = batches(
            data,
            model,
            seed=settings.seed,
            epoch=epoch,
            batch_size=settings.batch_size,
            buffer=settings.shuffle_buffer,
            skip=taken,
            skipped=skipped,
            workers=settings.workers,
            keep=lambda i: i // share == rank,
        )
        for _ in range(steps_per_epoch - taken // (settings.batch_size * settings.accumulate)):
            started = time.perf_counter()
            losses, pairs = [], 0
            for micro in range(settings.accumulate):
                batch = next(stream, None)
                if batch is None:
                    raise ValueError(
                        f"{data.source} changed during training: it has fewer pairs than counted"
                    )
                taken += batch.taken
                sync = micro == settings.accumulate - 1 or world == 1
                context = nullcontext() if sync else wrapped.no_sync()  # type: ignore[operator]
                with context:
                    value, counted = _micro_step(
                        model, wrapped, kind, net, batch, settings, autocast, scaler, device
                    )
                if value is not None:
                    losses.append(value)
                pairs += counted
            scaler.unscale_(optimizer)
            add_l2_init_grad(params, initial, settings.l2_init)
            if settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            trained_pairs += pairs
            last_loss = sum(losses) if losses else None
            seconds = time.perf_counter() - started
            record = {
                "step": step,
                "epoch": epoch,
                "loss": last_loss,
                "lr": lr,
                "pairs": pairs,
                "processes": world,
            }
            if settings.l2_init:
                record["l2_init"] = l2_init_penalty(params, initial, settings.l2_init)
            record["pairs_per_s"] = pairs / seconds if seconds > 0 else None
            log.write(record)
            shown = {"loss": last_loss, "pairs/s": record["pairs_per_s"]}
            bar.set_postfix({k: "-" if v is None else f"{v:.4g}" for k, v in shown.items()})
            bar.update(1)
            at_end = step == total
            # evaluate before the checkpoint: a run killed while evaluating resumes before that step
            if settings.eval_every and step % settings.eval_every == 0 and not at_end:
                run_evaluations(step)
            if step % settings.save_every == 0 and not at_end:
                checkpoint(state.Position(step, epoch, taken))
            if on_step is not None:
                on_step(step)
            if at_end:
                break
        epoch, taken = epoch + 1, 0
    bar.close()
    if step > position.step:  # not a finished run started again
        run_evaluations(step)
        checkpoint(state.Position(step, epoch, taken))
    if rank == 0:
        _save_output(model, net, out)
        if (out / METRICS_FILE).stat().st_size:
            draw_curves(out / METRICS_FILE, out / CURVES_FILE, title=f"finetune {Path(model.name).name}")
    return FinetuneResult(out, step, trained_pairs, skipped, position.step if resumed else None, last_loss)


def _micro_step(
    model: ClipAdapter,
    wrapped: torch.nn.Module,
    kind: Family,
    net: PreTrainedModel,
    batch: Batch,
    settings: FinetuneSettings,
    autocast: Any,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> tuple[float | None, int]:
    """Forward and backward of one micro-batch (its loss ÷ ``accumulate``); (its loss, global pairs)."""
    counts = distributed.all_counts(len(batch.captions), device)
    if sum(counts) < 2:
        return None, 0  # no negatives: nothing to learn from (every rank skips it alike)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptionTruncatedWarning)
        inputs = (
            model.collate(model.encode_captions(batch.captions, settings.template))
            if batch.captions
            else None
        )
    if inputs is None:  # this rank's share failed to load: an empty forward keeps the ranks in step
        size = net.config.vision_config.image_size
        pixels = torch.zeros((0, 3, size, size), device=device)
        ids = torch.zeros((0, 1), dtype=torch.long, device=device)
        text_args = (ids, ids, torch.zeros(0, dtype=torch.long, device=device))
    else:
        pixels = batch.pixels.to(device)
        text_args = (inputs.input_ids, inputs.attention_mask, inputs.pool_index)
    with autocast:
        image, text = wrapped(pixels, *text_args)
    image = distributed.gather_rows(image.float(), counts)
    text = distributed.gather_rows(text.float(), counts)
    loss = contrastive_loss(kind, net, image, text)
    scaler.scale(loss / settings.accumulate).backward()
    return float(loss.item()) / settings.accumulate, sum(counts)


def _save_output(model: ClipAdapter, net: PreTrainedModel, out: Path) -> None:
    """The trained weights (fp32 safetensors), config, tokenizer and image processor in ``out``."""
    module: Any = net
    module.save_pretrained(out)
    for part in ("tokenizer", "image_processor"):  # both adapters carry them (not in the protocol)
        getattr(model, part).save_pretrained(out)
