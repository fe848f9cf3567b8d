"""CLIP Surgery (Li et al., "CLIP Surgery for Better Explainability with Enhancement in Open-Vocabulary
Tasks", 2023), its training-free inference.

Architecture surgery: over the last ``blocks`` vision blocks a second path runs beside the unchanged
network. It starts from the states entering the first of them and, at each block, adds that block's
v–v self-attention (softmax(scale · v vᵀ) v per head, then the output projection) of the original path's
layer-normed states, skipping the MLP; its patch tokens, through the post layer norm and the visual
projection, are the dense features. Feature surgery: with unit patch features f_i, unit text embeddings
t_k of K classes and the image's own embedding c, each class is weighted by w = softmax(τ c·t) / mean,
the element-wise products f_i ⊙ t_k w_k are formed, their mean over the classes (the redundant feature
shared by all classes) is removed, and the remainder is summed over channels. The classes here are the
pair's text and the empty text, CLIP Surgery's stand-in for "anything" when a single text is explained.
On SigLIP (no class token) the v–v path runs through its blocks alike, and each patch token reaches the
joint space as the attention-pooling head would map it alone: post layer norm, the head's value and
output projections, its MLP (see :mod:`~clipalign.attribution.baselines.towers`); the empty text is
SigLIP's ``</s>`` padded to the full context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from clipalign.attribution.baselines.base import (
    BaselineSettings,
    FirstOrderMethod,
    Prepared,
    merge_heads,
    split_heads,
)
from clipalign.attribution.baselines.towers import VisionTower, vision_tower


@dataclass(frozen=True, kw_only=True)
class SurgerySettings(BaselineSettings):
    """``blocks``: how many of the last vision blocks get the v–v path (None: half the encoder, the
    paper's 6 of ViT-B's 12); ``temperature``: τ of the class weights (the authors' 2)."""

    blocks: int | None = None
    temperature: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks is not None and self.blocks < 1:
            raise ValueError(f"blocks must be ≥ 1 (or None), got {self.blocks}")


def vv_attention(block: CLIPEncoderLayer, z: torch.Tensor) -> torch.Tensor:
    """A block's v–v self-attention of layer-normed states z (B, S, d), through its output projection."""
    attn = block.self_attn
    v = split_heads(attn.v_proj(z), attn.num_heads)
    weights = torch.softmax((v @ v.transpose(-1, -2)).float() * attn.scale, dim=-1).to(v.dtype)
    return attn.out_proj(merge_heads(weights @ v))


def surgery_features(
    tower: VisionTower, pixels: torch.Tensor, blocks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch features (B, P, D) of the v–v path, image embedding (B, D) of the original path)."""
    layers = tower.blocks
    if blocks > len(layers):
        raise ValueError(f"blocks={blocks} but the vision encoder has {len(layers)}")
    original = tower.states(pixels, len(layers) - blocks)
    surgery = original
    for block in layers[len(layers) - blocks :]:
        surgery = surgery + vv_attention(block, block.layer_norm1(original))
        original = block(original, None)
    return tower.tokens(surgery[:, tower.prefix :]), tower.pooled(original)


def feature_surgery(
    patches: torch.Tensor, image: torch.Tensor, texts: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Scores (B, P, K) of unit patch features (B, P, D) against K unit class texts (B, K, D), with the
    class-mean ("redundant") part of the weighted element-wise products removed; ``image`` (B, D) is the
    unit image embedding that weights the classes."""
    prob = torch.softmax(temperature * torch.einsum("bd,bkd->bk", image, texts), dim=-1)
    weight = prob / prob.mean(-1, keepdim=True)
    products = patches[:, :, None, :] * (texts * weight[..., None])[:, None]  # (B, P, K, D)
    return (products - products.mean(2, keepdim=True)).sum(-1)


class CLIPSurgery(FirstOrderMethod):
    """Dense features of CLIP's v–v surgery path, scored with feature surgery against the empty text.

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> [m] = CLIPSurgery(tiny_model(layers=2)).attribute([example_image()], ["a red ball"], "ball")
        >>> m.values.shape
        (4, 4)
    """

    name = "clipsurgery"
    settings_class = SurgerySettings
    settings: SurgerySettings

    @torch.no_grad()
    def _maps(self, group: Sequence[Prepared]) -> list[tuple[np.ndarray, dict[str, float]]]:
        tower = vision_tower(self.model, self.name)
        blocks = self.settings.blocks or max(1, len(tower.blocks) // 2)
        patches, image = surgery_features(tower, self._pixels(group), blocks)
        directions = self._directions(group)
        empty = tower.empty_text(self.model).expand_as(directions)
        texts = torch.stack([directions, empty], dim=1)
        unit = torch.nn.functional.normalize
        scores = feature_surgery(unit(patches, dim=-1), unit(image, dim=-1), texts, self.settings.temperature)
        return [(grid, {}) for grid in self._grids(scores[..., 0])]
