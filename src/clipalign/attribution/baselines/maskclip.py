"""MaskCLIP (Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022): dense CLIP features without
training.

In the last vision block the query and key are dropped: each patch's value embedding, through the
attention's output projection, the post layer norm and the visual projection, is a feature in the joint
space; its cosine with the text embedding is the patch's score. No gradient, one forward per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import CLIPModel

from clipalign.attribution.baselines.base import (
    FirstOrderMethod,
    Prepared,
    hf_clip,
    project,
    vision_blocks,
    vision_states,
)


def value_path_features(clip: CLIPModel, states: torch.Tensor) -> torch.Tensor:
    """(B, S, D) joint-space features of every position from the states (B, S, d) entering the last
    vision block: out_proj(v_proj(layer_norm1(x))), then post layer norm and visual projection."""
    block = clip.vision_model.encoder.layers[-1]
    attn = block.self_attn
    return project(clip, attn.out_proj(attn.v_proj(block.layer_norm1(states))))


class MaskCLIP(FirstOrderMethod):
    """Patch score = cos(value-path feature of the patch, text embedding).

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> [m] = MaskCLIP(tiny_model(layers=2)).attribute([example_image()], ["a red ball"], "red ball")
        >>> m.values.shape, m.text
        ((4, 4), 'red ball')
    """

    name = "maskclip"

    @torch.no_grad()
    def _maps(self, group: Sequence[Prepared]) -> list[tuple[np.ndarray, dict[str, float]]]:
        clip = hf_clip(self.model, self.name)
        depth = len(vision_blocks(clip))
        features = value_path_features(clip, vision_states(clip, self._pixels(group), depth - 1))[:, 1:]
        directions = self._directions(group)
        scores = torch.einsum("bpd,bd->bp", torch.nn.functional.normalize(features, dim=-1), directions)
        return [(grid, {}) for grid in self._grids(scores)]
