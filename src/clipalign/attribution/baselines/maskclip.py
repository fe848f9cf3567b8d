"""MaskCLIP (Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022): dense CLIP features without
training.

In the last vision block the query and key are dropped, so each position attends to itself alone: its
value embedding goes through the attention's output projection and, as in the authors' ViT backbone, the
block's residual and MLP, then the post layer norm and the visual projection: a feature in the joint
space, whose cosine with the text embedding is the patch's score. ``residual=False`` keeps the bare
value path (no residual, no MLP). No gradient, one forward per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import CLIPModel

from clipalign.attribution.baselines.base import (
    BaselineSettings,
    FirstOrderMethod,
    Prepared,
    hf_clip,
    project,
    vision_blocks,
    vision_states,
)


@dataclass(frozen=True, kw_only=True)
class MaskCLIPSettings(BaselineSettings):
    """``residual``: keep the last block's residual and MLP around the value path (the authors' ViT)."""

    residual: bool = True


def value_path_features(clip: CLIPModel, states: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """(B, S, D) joint-space features of every position from the states x (B, S, d) entering the last
    vision block: h = out_proj(v_proj(layer_norm1(x))), with ``residual`` h = x + h then h + mlp(
    layer_norm2(h)); then post layer norm and visual projection."""
    block = vision_blocks(clip)[-1]
    attn = block.self_attn
    hidden = attn.out_proj(attn.v_proj(block.layer_norm1(states)))
    if residual:
        hidden = states + hidden
        hidden = hidden + block.mlp(block.layer_norm2(hidden))
    return project(clip, hidden)


class MaskCLIP(FirstOrderMethod):
    """Patch score = cos(value-path feature of the patch, text embedding); see :class:`MaskCLIPSettings`.

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> [m] = MaskCLIP(tiny_model(layers=2)).attribute([example_image()], ["a red ball"], "red ball")
        >>> m.values.shape, m.text
        ((4, 4), 'red ball')
    """

    name = "maskclip"
    settings_class = MaskCLIPSettings
    settings: MaskCLIPSettings

    @torch.no_grad()
    def _maps(self, group: Sequence[Prepared]) -> list[tuple[np.ndarray, dict[str, float]]]:
        clip = hf_clip(self.model, self.name)
        depth = len(vision_blocks(clip))
        states = vision_states(clip, self._pixels(group), depth - 1)
        features = value_path_features(clip, states, self.settings.residual)[:, 1:]
        directions = self._directions(group)
        scores = torch.einsum("bpd,bd->bp", torch.nn.functional.normalize(features, dim=-1), directions)
        return [(grid, {}) for grid in self._grids(scores)]
