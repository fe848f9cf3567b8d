"""Grad-ECLIP (Zhao et al., "Gradient-based Visual Explanation for Transformer-based CLIP", ICML 2024).

For S = cos(image, text) and the last vision block's attention, with o the attention output at the
class token (heads concatenated, before the output projection), v_i the values and q, k the queries and
keys (heads concatenated): channel weights w = ∂S/∂o, spatial weights λ_i = the cosine of q_cls and k_i
min-max normalised over the patches (the "loosened" attention, in place of the sparse softmax), and

    map_i = ReLU(λ_i · Σ_c w_c v_ic).

One forward and one backward (of the last block only) per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clipalign.attribution.baselines.base import (
    FirstOrderMethod,
    Prepared,
    hf_clip,
    merge_heads,
    project,
    split_heads,
    vision_blocks,
    vision_states,
)


def min_max(values: torch.Tensor) -> torch.Tensor:
    """Rescale each row (…, P) to [0, 1]; a constant row becomes all ones."""
    low = values.min(-1, keepdim=True).values
    span = values.max(-1, keepdim=True).values - low
    return torch.where(span > 0, (values - low) / span.clamp_min(torch.finfo(values.dtype).tiny), 1.0)


class GradECLIP(FirstOrderMethod):
    """ReLU of the gradient-weighted values of the last vision block, times the loosened attention.

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> [m] = GradECLIP(tiny_model(layers=2)).attribute([example_image()], ["a red ball"])
        >>> bool((m.values >= 0).all())
        True
    """

    name = "gradeclip"

    def _maps(self, group: Sequence[Prepared]) -> list[tuple[np.ndarray, dict[str, float]]]:
        clip = hf_clip(self.model, self.name)
        blocks = vision_blocks(clip)
        last = blocks[-1]
        attn = last.self_attn
        directions = self._directions(group)
        with torch.no_grad():
            states = vision_states(clip, self._pixels(group), len(blocks) - 1)
            z = last.layer_norm1(states)
            q, k, v = attn.q_proj(z), attn.k_proj(z), attn.v_proj(z)
            heads = attn.num_heads
            logits = split_heads(q[:, :1], heads) @ split_heads(k, heads).transpose(-1, -2) * attn.scale
            weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)
            out_cls = merge_heads(weights @ split_heads(v, heads))[:, 0]  # (B, d)
        with torch.enable_grad():
            out_cls = out_cls.detach().requires_grad_(True)
            hidden = states[:, 0] + attn.out_proj(out_cls)
            hidden = hidden + last.mlp(last.layer_norm2(hidden))
            cosine = (torch.nn.functional.normalize(project(clip, hidden), dim=-1) * directions).sum(-1)
            [channel] = torch.autograd.grad(cosine.sum(), out_cls)
        loosened = min_max(torch.nn.functional.cosine_similarity(q[:, :1].float(), k[:, 1:].float(), dim=-1))
        scores = torch.relu(loosened * torch.einsum("bd,bpd->bp", channel.float(), v[:, 1:].float()))
        return [(grid, {}) for grid in self._grids(scores)]
