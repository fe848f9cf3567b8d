"""Score formulas on cosines and word scores (the functional twins of the metric objects).

All take and return tensors so that they batch; each is the paper's formula and nothing more.
"""

from __future__ import annotations

from typing import Literal

import torch

CLIPSCORE_WEIGHT = 2.5
"""Hessel et al.'s rescaling w in CLIPScore = w·max(cos, 0)."""

ReferenceConvention = Literal["hessel", "clip4dm"]


def clip_score(cosine: torch.Tensor, weight: float = CLIPSCORE_WEIGHT) -> torch.Tensor:
    """CLIPScore = w·max(cos(image, template+caption), 0) (Hessel et al., 2021).

    Example:
        >>> clip_score(torch.tensor([0.3, -0.1]))
        tensor([0.7500, 0.0000])
    """
    return weight * cosine.clamp(min=0)


def reference_score(
    reference_cosines: torch.Tensor,
    reference_mask: torch.Tensor | None = None,
    convention: ReferenceConvention = "hessel",
) -> torch.Tensor:
    """Text-text part of RefCLIPScore from cos(candidate, reference_j), shape (B, R).

    ``hessel``: max(max_j cos_j, 0). ``clip4dm``: the authors' code, 2.5·max(cos_0, 0) with only the
    first reference. ``reference_mask`` (B, R) marks real references when rows have different counts.
    """
    if convention == "clip4dm":
        return CLIPSCORE_WEIGHT * reference_cosines[:, 0].clamp(min=0)
    if convention != "hessel":
        raise ValueError(f"convention must be 'hessel' or 'clip4dm', got {convention!r}")
    if reference_mask is not None:
        reference_cosines = reference_cosines.masked_fill(~reference_mask.bool(), float("-inf"))
    return reference_cosines.max(dim=1).values.clamp(min=0)


def ref_clip_score(
    cosine: torch.Tensor,
    reference_cosines: torch.Tensor,
    reference_mask: torch.Tensor | None = None,
    convention: ReferenceConvention = "hessel",
) -> torch.Tensor:
    """RefCLIPScore = harmonic mean of CLIPScore and the reference score (0 when both are 0).

    Example:
        >>> ref_clip_score(torch.tensor([0.4]), torch.tensor([[0.5, 0.9]]))  # H(1.0, 0.9)
        tensor([0.9474])
    """
    a = clip_score(cosine)
    b = reference_score(reference_cosines, reference_mask, convention)
    total = a + b
    return torch.where(total > 0, 2 * a * b / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)


def f_clip_score(cosine: torch.Tensor, word_scores: torch.Tensor, misaligned: torch.Tensor) -> torch.Tensor:
    """F-CLIPScore = (1 − max(cos, 0)) · Σ scores of misaligned words; 0 when none (CLIP4DM, eq. 3).

    ``word_scores`` and ``misaligned`` are (B, W) (pad with ``misaligned=False``); result (B,), ≤ 0.

    Example:
        >>> scores = torch.tensor([[2e-4, -3e-4, -1e-4]])
        >>> f_clip_score(torch.tensor([0.25]), scores, scores < -5e-5)  # 0.75 · (−4e-4)
        tensor([-0.0003])
    """
    total = torch.where(misaligned.bool(), word_scores, torch.zeros_like(word_scores)).sum(dim=-1)
    return (1 - cosine.clamp(min=0)) * total
