"""MaskCLIP (Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022): dense CLIP features without
training.

In the last vision block the query and key are dropped, so each position attends to itself alone: its
value embedding goes through the attention's output projection and, as in the authors' ViT backbone, the
block's residual and MLP, then the post layer norm and the visual projection: a feature in the joint
space, whose cosine with the text embedding is the patch's score. ``residual=False`` keeps the bare
value path (no residual, no MLP). On SigLIP, whose patches are pooled by the attention-pooling head
rather than a class token, the query and key dropped are the head's: each patch goes through the head
with its attention on that patch alone (see :mod:`~clipalign.attribution.baselines.towers`).
No gradient, one forward per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clipalign.attribution.baselines.base import BaselineSettings, FirstOrderMethod, Prepared
from clipalign.attribution.baselines.towers import vision_tower


@dataclass(frozen=True, kw_only=True)
class MaskCLIPSettings(BaselineSettings):
    """``residual``: keep the last block's residual and MLP around the value path (the authors' ViT;
    SigLIP: the head's MLP and its residual after the value path)."""

    residual: bool = True


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
        tower = vision_tower(self.model, self.name)
        features = tower.value_features(self._pixels(group), self.settings.residual)
        directions = self._directions(group)
        scores = torch.einsum("bpd,bd->bp", torch.nn.functional.normalize(features, dim=-1), directions)
        return [(grid, {}) for grid in self._grids(scores)]
