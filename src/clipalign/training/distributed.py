"""Data-parallel training with ``torchrun`` and PyTorch's DistributedDataParallel.

``torchrun --nproc-per-node N -m clipalign finetune ...`` starts N processes; each reads the same seeded
stream, decodes its share of every global batch, and the embeddings of all ranks are gathered so that the
contrastive loss sees the whole global batch, as one process would. The gather passes gradients back
(:class:`_GatherRows`): every rank computes the same loss, so the gradient reaching a rank's rows is the
sum over ranks, W times the single-process one, and DDP's average over the W ranks restores it exactly.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str | None) -> str | None:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1): NCCL on CUDA, else gloo.
    Returns the device this rank uses (``cuda:LOCAL_RANK`` on GPUs, else ``device`` unchanged)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


class _GatherRows(torch.autograd.Function):
    """All ranks' (M, D) tensors stacked to (W, M, D); the backward sums the gradient over ranks and
    returns this rank's slice."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def all_counts(count: int, device: torch.device) -> list[int]:
    """Every rank's number of rows, in rank order."""
    _, size = rank_and_size()
    if size == 1:
        return [count]
    local = torch.tensor([count], dtype=torch.long, device=device)
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local)
    return [int(p.item()) for p in parts]


def gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Every rank's rows of ``x`` in rank order (rank r holds ``counts[r]``), differentiable: the global
    batch, as one process holding all of it would have it."""
    if len(counts) == 1:
        return x
    width = max(counts)
    padded = torch.cat([x, x.new_zeros(width - len(x), *x.shape[1:])]) if len(x) < width else x
    stacked = _GatherRows.apply(padded)
    return torch.cat([stacked[r, :n] for r, n in enumerate(counts)])
