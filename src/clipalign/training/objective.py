"""The training objective: CLIP's symmetric contrastive loss, SigLIP's sigmoid loss, and the L2 pull
towards the starting weights.

The L2 term is exCLIP's (arXiv 2408.14153): λ · Σ ‖θ − θ₀‖² over the trained parameters, a sum of
squares without ½, so its gradient is 2λ(θ − θ₀). It is added to the gradients directly
(:func:`add_l2_init_grad`) rather than through autograd, so it costs one pass over the parameters per
optimizer step and never enters a data-parallel backward twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CLIP_MAX_LOGIT_SCALE = 100.0
"""CLIP clamps its temperature so that the logits are at most 100 × cosine."""


def normalized(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, in fp32."""
    return F.normalize(x.float(), dim=-1)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching rows: the mean of the image→text and text→image
    cross-entropies of ``exp(logit_scale)`` × cosine, the temperature clamped as CLIP does."""
    scale = logit_scale.float().exp().clamp(max=CLIP_MAX_LOGIT_SCALE)
    logits = scale * normalized(image) @ normalized(text).T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def sigmoid_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss: every (image, text) pair is a binary decision, +1 on the diagonal
    and −1 elsewhere, summed over pairs and divided by the batch size."""
    logits = logit_scale.float().exp() * normalized(image) @ normalized(text).T + logit_bias.float()
    signs = 2 * torch.eye(len(logits), device=logits.device) - 1
    return -F.logsigmoid(signs * logits).sum() / len(logits)


def l2_init_penalty(params: Sequence[torch.Tensor], initial: Sequence[torch.Tensor], weight: float) -> float:
    """λ · Σ ‖θ − θ₀‖², for the log."""
    with torch.no_grad():
        return weight * float(
            sum(((p - p0) ** 2).sum().item() for p, p0 in zip(params, initial, strict=True))
        )


def add_l2_init_grad(params: Sequence[torch.Tensor], initial: Sequence[torch.Tensor], weight: float) -> None:
    """Add the penalty's gradient 2λ(θ − θ₀) to each parameter's ``grad`` (created when missing)."""
    if weight == 0:
        return
    with torch.no_grad():
        for p, p0 in zip(params, initial, strict=True):
            step = 2 * weight * (p - p0)
            if p.grad is None:
                p.grad = step.to(p.dtype)
            else:
                p.grad.add_(step)
