"""Where the model-based baselines read the vision tower: CLIP's class token or SigLIP's pooling head.

MaskCLIP, Grad-ECLIP and CLIP Surgery are defined through the path by which CLIP's class token pools the
patches into the image embedding: the class token's attention in the last block, and the post layer norm
and visual projection that map it into the joint space. SigLIP has no class token; its patches are pooled
by the attention-pooling (MAP) head: one learned probe query attends to the post-normed patch states,
and the attention output goes through the output projection and the head's MLP (with its residual)
to give the embedding. That probe attention is the one place where the embedding reads the patches, so
it plays the class token's part: Grad-ECLIP weights its values by ∂S/∂(its output) and loosens its
attention, and the "projection" of a single position into the joint space (MaskCLIP's value path, CLIP
Surgery's dense features) is the head with its attention on that position alone: out_proj(v(x_i)),
then the MLP. :class:`ClipTower` and :class:`SiglipTower` give each method those pieces.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CLIPModel, SiglipModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer, SiglipVisionModel

from clipalign.attribution.baselines.base import merge_heads, split_heads
from clipalign.models.base import ClipAdapter, TextInputs

MODEL_FREE = "ig, random and centre"
"""The baselines that need no tower internals (they work on any model)."""


@dataclass
class PoolingAttention:
    """The attention that pools the patches into the image embedding, as Grad-ECLIP reads it (heads
    concatenated): the pooling ``query`` (B, 1, d), the patches' ``keys`` and ``values`` (B, P, d),
    the attention ``output`` at the query before the output projection (B, d), and ``embed``, the rest
    of the network from that output to the image embedding (differentiable)."""

    query: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    output: torch.Tensor
    embed: Callable[[torch.Tensor], torch.Tensor]


class VisionTower(ABC):
    """The pieces of a vision tower the model-based baselines read."""

    prefix: int
    """Positions before the patches in the hidden states (CLIP: 1, the class token; SigLIP: 0)."""

    @property
    @abstractmethod
    def blocks(self) -> list[CLIPEncoderLayer]:
        """The encoder blocks, first to last (SigLIP's have CLIP's layout and forward)."""

    @abstractmethod
    def states(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        """Hidden states (B, prefix + P, d) entering block ``block`` (0-based)."""

    @abstractmethod
    def pooled(self, states: torch.Tensor) -> torch.Tensor:
        """The image embedding (B, D) from the states leaving the last block."""

    @abstractmethod
    def tokens(self, states: torch.Tensor, residual: bool = True) -> torch.Tensor:
        """Each position of ``states`` (B, S, d), leaving the last block, mapped into the joint space
        alone (B, S, D) by the path that maps the pooled one: CLIP's post layer norm and projection;
        SigLIP's post layer norm and the MAP head attending to that position only (``residual``: with
        the head's MLP and its residual)."""

    @abstractmethod
    def value_features(self, pixels: torch.Tensor, residual: bool) -> torch.Tensor:
        """MaskCLIP's dense features (B, P, D): the pooling attention's query and key dropped, so each
        patch attends to itself alone (CLIP: in the last block; SigLIP: in the MAP head)."""

    @abstractmethod
    def pooling_attention(self, pixels: torch.Tensor) -> PoolingAttention:
        """The pooling attention of each image, for Grad-ECLIP (no gradient taken here)."""

    @abstractmethod
    def empty_text(self, model: ClipAdapter) -> torch.Tensor:
        """The unit text embedding (D,) of the empty text, framed as the model frames a caption."""


class ClipTower(VisionTower):
    """CLIP: the class token pools the patches through the last block's attention."""

    prefix = 1

    def __init__(self, clip: CLIPModel) -> None:
        self.clip = clip

    @property
    def blocks(self) -> list[CLIPEncoderLayer]:
        layers = self.clip.vision_model.encoder.layers
        blocks = [block for block in layers if isinstance(block, CLIPEncoderLayer)]
        if len(blocks) != len(layers):
            raise ValueError("every vision block must be a CLIPEncoderLayer")
        return blocks

    def states(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        """CLS first: embeddings, the pre layer norm, then the blocks below ``block``."""
        vision = self.clip.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixels.to(next(self.clip.parameters()).dtype)))
        for layer in self.blocks[:block]:
            hidden = layer(hidden, None)
        return hidden

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """Vision states (…, d) → the joint space: post layer norm, then the visual projection."""
        return self.clip.visual_projection(self.clip.vision_model.post_layernorm(states)).float()

    def pooled(self, states: torch.Tensor) -> torch.Tensor:
        return self.project(states[:, 0])

    def tokens(self, states: torch.Tensor, residual: bool = True) -> torch.Tensor:
        return self.project(states)

    def value_features(self, pixels: torch.Tensor, residual: bool) -> torch.Tensor:
        """out_proj(v_proj(layer_norm1(x))) of the last block per position, with ``residual`` x + that,
        then + mlp(layer_norm2(·)); then post layer norm and visual projection; patches only."""
        block = self.blocks[-1]
        states = self.states(pixels, len(self.blocks) - 1)
        attn = block.self_attn
        hidden = attn.out_proj(attn.v_proj(block.layer_norm1(states)))
        if residual:
            hidden = states + hidden
            hidden = hidden + block.mlp(block.layer_norm2(hidden))
        return self.project(hidden)[:, 1:]

    def pooling_attention(self, pixels: torch.Tensor) -> PoolingAttention:
        """The class token's attention in the last block (over the class token and the patches)."""
        last = self.blocks[-1]
        attn = last.self_attn
        states = self.states(pixels, len(self.blocks) - 1)
        z = last.layer_norm1(states)
        q, k, v = attn.q_proj(z), attn.k_proj(z), attn.v_proj(z)
        heads = attn.num_heads
        logits = split_heads(q[:, :1], heads) @ split_heads(k, heads).transpose(-1, -2) * attn.scale
        weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)
        output = merge_heads(weights @ split_heads(v, heads))[:, 0]

        def embed(o: torch.Tensor) -> torch.Tensor:
            hidden = states[:, 0] + attn.out_proj(o)
            return self.project(hidden + last.mlp(last.layer_norm2(hidden)))

        return PoolingAttention(q[:, :1], k[:, 1:], v[:, 1:], output, embed)

    def empty_text(self, model: ClipAdapter) -> torch.Tensor:
        """SOT immediately followed by EOT, pooled at EOT."""
        tokenizer = text_tokenizer(model)
        return unit_text_embedding(model, [tokenizer.bos_token_id, tokenizer.eos_token_id], 1)


class SiglipTower(VisionTower):
    """SigLIP: no class token; the MAP head's probe query pools the post-normed patch states."""

    prefix = 0

    def __init__(self, siglip: SiglipModel) -> None:
        vision = siglip.vision_model
        if not isinstance(vision, SiglipVisionModel) or not getattr(vision, "use_head", False):
            raise ValueError("a SigLIP vision tower without its attention-pooling head has no pooling path")
        self.siglip = siglip
        self.vision = vision

    @property
    def blocks(self) -> list[CLIPEncoderLayer]:
        layers = self.vision.encoder.layers
        blocks = [block for block in layers if isinstance(block, SiglipEncoderLayer)]
        if len(blocks) != len(layers):
            raise ValueError("every vision block must be a SiglipEncoderLayer")
        return blocks  # type: ignore[return-value]  # CLIP's layout and forward (see HFSiglipAdapter)

    def states(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        hidden = self.vision.embeddings(pixels.to(next(self.siglip.parameters()).dtype))
        for layer in self.blocks[:block]:
            hidden = layer(hidden, None)
        return hidden

    def pooled(self, states: torch.Tensor) -> torch.Tensor:
        return self.vision.head(self.vision.post_layernorm(states)).float()

    def _in_projection(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """The head attention's query (0), key (1) or value (2) projection of x (…, d)."""
        attn = self.vision.head.attention
        width = attn.embed_dim
        rows = slice(which * width, (which + 1) * width)
        bias = attn.in_proj_bias[rows] if attn.in_proj_bias is not None else None
        return torch.nn.functional.linear(x, attn.in_proj_weight[rows], bias)

    def _after_attention(self, output: torch.Tensor, residual: bool = True) -> torch.Tensor:
        """The head from its attention output (…, d) (heads concatenated, before the output projection)
        to the embedding: output projection, then (``residual``) + mlp(layernorm(·))."""
        head = self.vision.head
        hidden = head.attention.out_proj(output)
        if residual:
            hidden = hidden + head.mlp(head.layernorm(hidden))
        return hidden.float()

    def tokens(self, states: torch.Tensor, residual: bool = True) -> torch.Tensor:
        x = self.vision.post_layernorm(states)
        return self._after_attention(self._in_projection(x, 2), residual)

    def value_features(self, pixels: torch.Tensor, residual: bool) -> torch.Tensor:
        """Every block as trained, then each patch through the MAP head with its attention on that
        patch alone; ``residual=False`` stops after the head's output projection (no MLP)."""
        return self.tokens(self.states(pixels, len(self.blocks)), residual)

    def pooling_attention(self, pixels: torch.Tensor) -> PoolingAttention:
        """The probe's attention over the post-normed patch states leaving the last block."""
        head = self.vision.head
        x = self.vision.post_layernorm(self.states(pixels, len(self.blocks)))
        heads = head.attention.num_heads
        probe = head.probe.expand(len(x), 1, -1)
        q, k, v = self._in_projection(probe, 0), self._in_projection(x, 1), self._in_projection(x, 2)
        scale = (q.shape[-1] // heads) ** -0.5
        logits = split_heads(q, heads) @ split_heads(k, heads).transpose(-1, -2) * scale
        weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)
        output = merge_heads(weights @ split_heads(v, heads))[:, 0]
        return PoolingAttention(q, k, v, output, self._after_attention)

    def empty_text(self, model: ClipAdapter) -> torch.Tensor:
        """The tokenizer's specials around nothing (SigLIP: ``</s>``), padded to the full context as
        every SigLIP caption is, pooled at the last position."""
        from clipalign.models.hf_siglip import special_ids

        tokenizer = text_tokenizer(model)
        prefix, suffix = special_ids(tokenizer)
        length = model.max_text_tokens
        ids = [*prefix, *suffix]
        return unit_text_embedding(
            model, ids + [int(tokenizer.pad_token_id)] * (length - len(ids)), length - 1
        )


def text_tokenizer(model: ClipAdapter) -> Any:
    """The adapter's tokenizer, which the empty text is built with."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{model.name}: embedding the empty text needs the adapter's tokenizer")
    return tokenizer


def unit_text_embedding(model: ClipAdapter, ids: list[int], pool: int) -> torch.Tensor:
    """The unit text embedding (D,) of one row of token ids, pooled at position ``pool``."""
    tensor = torch.tensor([ids], device=model.device)
    inputs = TextInputs(tensor, torch.ones_like(tensor), torch.tensor([pool], device=model.device))
    with torch.no_grad():
        embeds = model.text_embeddings(inputs).embeds
    return torch.nn.functional.normalize(embeds[0], dim=-1)


def vision_tower(model: ClipAdapter, method: str) -> VisionTower:
    """The tower behind an adapter, for a method that reads its pooling path; a one-line ValueError for
    any other model, naming the baselines that work on every model."""
    hf = getattr(model, "model", None)
    if isinstance(hf, CLIPModel):
        return ClipTower(hf)
    if isinstance(hf, SiglipModel):
        return SiglipTower(hf)
    raise ValueError(
        f"{model.name}: {method} reads the vision tower's pooling (CLIP's class token, SigLIP's attention-"
        f"pooling head) and needs a Hugging Face CLIPModel or SiglipModel; {MODEL_FREE} work on any model"
    )
