"""Grad-ECLIP (Zhao et al., "Gradient-based Visual Explanation for Transformer-based CLIP", ICML 2024).

For S = cos(image, text) and the last vision block's attention, with o the attention output at the
class token (heads concatenated, before the output projection), v_i the values and q, k the queries and
keys (heads concatenated): channel weights w = ∂S/∂o, spatial weights λ_i = the cosine of q_cls and k_i
min-max normalised over the patches (the "loosened" attention, in place of the sparse softmax), and

    map_i = ReLU(λ_i · Σ_c w_c v_ic).

On SigLIP the class token's attention is the attention-pooling head's: o is its attention output at
the probe query, q the probe's query, k_i and v_i the head's keys and values of the post-normed patch
states (see :mod:`~clipalign.attribution.baselines.towers`). One forward and one backward (of the last
block only, or of the head) per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clipalign.attribution.baselines.base import FirstOrderMethod, Prepared
from clipalign.attribution.baselines.towers import vision_tower


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
        tower = vision_tower(self.model, self.name)
        directions = self._directions(group)
        with torch.no_grad():
            pooling = tower.pooling_attention(self._pixels(group))
        with torch.enable_grad():
            output = pooling.output.detach().requires_grad_(True)
            embedding = torch.nn.functional.normalize(pooling.embed(output).float(), dim=-1)
            [channel] = torch.autograd.grad((embedding * directions).sum(-1).sum(), output)
        query, keys, values = pooling.query.float(), pooling.keys.float(), pooling.values.float()
        loosened = min_max(torch.nn.functional.cosine_similarity(query, keys, dim=-1))
        scores = torch.relu(loosened * torch.einsum("bd,bpd->bp", channel.float(), values))
        return [(grid, {}) for grid in self._grids(scores)]
