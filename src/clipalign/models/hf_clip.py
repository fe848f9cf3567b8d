"""Adapter for Hugging Face ``CLIPModel`` checkpoints (OpenAI CLIP, LAION OpenCLIP exports, ...)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import get_args

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextModel,
    CLIPVisionModel,
)
from transformers.activations import QuickGELUActivation
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoder, CLIPEncoderLayer

from clipalign.images.geometry import ImageGeometry
from clipalign.models.base import (
    PositionJVPs,
    TextInputs,
    TextOutput,
)
from clipalign.models.hf_dual import HFDualEncoder
from clipalign.settings import TextReference
from clipalign.text.alignment import EncodedCaption, encode_captions

EXCLIP_REFERENCE_TOKEN_ID = 0
"""exCLIP's text reference fills every position but SOT and EOT with token id 0 (``!`` for CLIP)."""


def _causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The text tower's additive causal mask (1, 1, length, length): position j > i is hidden from i."""
    mask = torch.full((length, length), torch.finfo(dtype).min, device=device, dtype=dtype)
    return mask.triu(1)[None, None]


def _attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype, causal: bool) -> torch.Tensor:
    """Additive mask (B, 1, T, T) hiding each row's padding and, when ``causal``, later positions, as
    HF's eager text tower builds it (attention_mask (B, T): 1 on tokens, 0 on padding)."""
    length = attention_mask.shape[1]
    allowed = attention_mask.bool()[:, None, None, :].expand(-1, 1, length, -1)
    if causal:
        allowed = allowed & torch.ones((length, length), dtype=torch.bool, device=allowed.device).tril()
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def text_tower(
    embeddings: torch.nn.Module,
    blocks: Sequence[CLIPEncoderLayer],
    inputs: TextInputs,
    output_attentions: bool | int,
    causal: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A text tower's last hidden states (B, T, d) and the maps of its last n blocks (``output_attentions``:
    a number n, True: all, False: none), as ``ClipAdapter.text_embeddings`` promises them.

    The blocks with maps run HF's eager attention under the padding (and ``causal``) mask, differentiable
    when grad is enabled; the blocks below run fused attention without autograd (a causal mask keeps
    padding after EOT out of every position up to EOT, so they need no padding mask).
    """
    depth = len(blocks)
    maps = depth if output_attentions is True else int(output_attentions)
    if not 0 <= maps <= depth:
        raise ValueError(f"output_attentions must be a bool or 1..{depth}, got {output_attentions!r}")
    with torch.no_grad():
        hidden = embeddings(input_ids=inputs.input_ids)
        for block in blocks[: depth - maps]:
            hidden = _fused_block(block, hidden, causal=causal)
    attentions = []
    if maps:
        if torch.is_grad_enabled():
            hidden = hidden.detach().requires_grad_(True)
        mask = _attention_mask(inputs.attention_mask, hidden.dtype, causal)
        for block in blocks[depth - maps :]:
            hidden, weights = _block_with_map(block, hidden, mask)
            attentions.append(weights)
    return hidden, attentions


def _fused_block(
    block: CLIPEncoderLayer, states: torch.Tensor, causal: bool, keys: torch.Tensor | None = None
) -> torch.Tensor:
    """One encoder block on PyTorch's fused attention (flash or memory-efficient kernels on a GPU): HF's
    block with ``scaled_dot_product_attention`` in place of the eager softmax, for blocks whose maps are
    not read; ``causal`` applies the text tower's causal mask, ``keys`` (B, 1, 1, S) bool, when given,
    the positions every query may attend to (SigLIP 2 NaFlex: an image's patches, not its padding)."""
    attn = block.self_attn
    z = block.layer_norm1(states)
    q, k, v = (_split_heads(attn, proj(z)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=keys, is_causal=causal, scale=attn.scale
    )
    hidden = states + attn.out_proj(out.transpose(1, 2).reshape(*states.shape[:2], -1))
    return hidden + block.mlp(block.layer_norm2(hidden))


def _block_with_map(
    block: CLIPEncoderLayer, states: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder block as HF's ``CLIPEncoderLayer`` computes it, also returning its attention map
    (B, heads, T, T), which the layer itself discards."""
    attended, weights = block.self_attn(block.layer_norm1(states), mask)
    hidden = states + attended
    return hidden + block.mlp(block.layer_norm2(hidden)), weights


def _split_heads(attn: CLIPAttention, t: torch.Tensor) -> torch.Tensor:
    """(B, S, d) → (B, H, S, head_dim), as HF's attention splits its projections."""
    return t.view(t.shape[0], t.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)


def _attention_at(
    attn: CLIPAttention, z: torch.Tensor, index: int, mask_row: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """Query row ``index`` of HF's eager attention over layer-normed states z (B, S, d), per head:
    q (B, H, 1, hd), k and v (B, H, S, hd), the weights (B, H, 1, S) and the output (B, H, 1, hd)."""
    q = _split_heads(attn, attn.q_proj(z[:, index : index + 1]))
    k, v = _split_heads(attn, attn.k_proj(z)), _split_heads(attn, attn.v_proj(z))
    weights = _attention_weights(attn, q, k, mask_row)
    return q, k, v, weights, weights @ v


def _attention_weights(
    attn: CLIPAttention, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) as HF's eager attention computes it: the softmax in fp32 (in fp64 for
    fp64 models), the weights in q's dtype."""
    logits = (q @ k.transpose(-1, -2)) * attn.scale
    if mask is not None:
        logits = logits + mask
    return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(q.dtype)


def _block_output_at(
    block: CLIPEncoderLayer, states: torch.Tensor, index: int, mask_row: torch.Tensor | None = None
) -> torch.Tensor:
    """One encoder block's output at a single position (B, d): the pooled position is all the last block
    has to produce, so only its query row is computed (what HF's eager block does, restricted to it)."""
    attn = block.self_attn
    *_, out = _attention_at(attn, block.layer_norm1(states), index, mask_row)
    hidden = states[:, index] + attn.out_proj(out.transpose(1, 2).reshape(states.shape[0], -1))
    return hidden + block.mlp(block.layer_norm2(hidden))


def _layer_norm_jvp(
    norm: torch.nn.LayerNorm, x: torch.Tensor, dx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(x)`` and its JVP along ``dx`` (x broadcasts against dx), in closed form: forward-mode autograd
    of a layer norm runs a Python decomposition, about ten times the cost of the forward."""
    centred = x - x.mean(-1, keepdim=True)
    rstd = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps)
    unit = centred * rstd
    dunit = rstd * (dx - dx.mean(-1, keepdim=True) - unit * (dx * unit).mean(-1, keepdim=True))
    return norm(x), dunit if norm.weight is None else dunit * norm.weight


def _block_position_jvps(
    block: CLIPEncoderLayer,
    states: torch.Tensor,
    delta: torch.Tensor,
    index: int,
    mask_row: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention half of one block at position ``index`` and its derivatives along one-position changes.

    For states (M, S, d) and their changes ``delta`` (M, S, d), returns h = states[:, index] + attention
    output at ``index`` (M, d) and dh (M, S, d), row i of point m the JVP of h along ``delta[m]`` kept at
    position i only. Such a
    change moves only key i and value i (and the query when i = index), so the JVP is closed-form and all
    S of them cost about one forward of the block: the same numbers as S generic JVPs, far cheaper.
    """
    attn = block.self_attn
    batch, length, width = states.shape
    z, dz = _layer_norm_jvp(block.layer_norm1, states, delta)  # dz row i ↔ δ_i
    q, k, v, a, out = _attention_at(attn, z, index, mask_row)  # out (M, H, 1, hd)
    dk = _split_heads(attn, torch.nn.functional.linear(dz, attn.k_proj.weight))
    dv = _split_heads(attn, torch.nn.functional.linear(dz, attn.v_proj.weight))
    dq = _split_heads(attn, torch.nn.functional.linear(dz[:, index : index + 1], attn.q_proj.weight))
    a = a[:, :, 0]  # (M, H, S)
    # change at i ≠ index: logit i moves by scale·q·dk_i, value i by dv_i
    dlogit = (q * dk).sum(-1) * attn.scale  # (M, H, S)
    dout = a[..., None] * (dv + dlogit[..., None] * (v - out))  # (M, H, S, hd)
    # at i = index the query moves too: every logit j moves by scale·dq·k_j
    dlogit_q = (dq @ k.transpose(-1, -2))[:, :, 0] * attn.scale  # (M, H, S)
    da = a * (dlogit_q - (a * dlogit_q).sum(-1, keepdim=True))
    dout[:, :, index] += (da[..., None] * v).sum(2)
    hidden = states[:, index] + attn.out_proj(out.transpose(1, 2).reshape(batch, width))
    dhidden = torch.nn.functional.linear(
        dout.transpose(1, 2).reshape(batch, length, width), attn.out_proj.weight
    )
    dhidden[:, index] += delta[:, index]
    return hidden, dhidden


def _activation_slope(activation: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An elementwise activation's derivative at x: closed form for CLIP's quick GELU, else forward AD."""
    if isinstance(activation, QuickGELUActivation):
        s = torch.sigmoid(1.702 * x)
        return s + 1.702 * x * s * (1 - s)
    return torch.func.jvp(activation, (x,), (torch.ones_like(x),))[1]


def _tail_jvps(
    block: CLIPEncoderLayer,
    final_norm: torch.nn.LayerNorm,
    projection: torch.nn.Linear,
    post: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    dhidden: torch.Tensor,
) -> torch.Tensor:
    """JVPs (M, S, D) of ``post(projection(final_norm(h + mlp(layer_norm2(h)))))`` at hidden (M, d) along
    dhidden (M, S, d): linear maps and layer norms in closed form on all tangents at once, the primal once
    per point; the elementwise activation by its derivative; ``post`` by its own ``post.jvp(e, de)`` (e
    broadcasting against de) when it has one, else by ``torch.func.jvp``."""
    mlp = block.mlp
    z, dz = _layer_norm_jvp(block.layer_norm2, hidden[:, None], dhidden)
    pre = mlp.fc1(z)
    slope = _activation_slope(mlp.activation_fn, pre)
    dpre = torch.nn.functional.linear(dz, mlp.fc1.weight)
    pooled = hidden[:, None] + mlp.fc2(mlp.activation_fn(pre))
    dpooled = dhidden + torch.nn.functional.linear(slope * dpre, mlp.fc2.weight)
    normed, dnormed = _layer_norm_jvp(final_norm, pooled, dpooled)
    embed = _at_least_fp32(projection(normed))
    dembed = _at_least_fp32(torch.nn.functional.linear(dnormed, projection.weight))
    post_jvp = getattr(post, "jvp", None)
    if post_jvp is not None:
        return post_jvp(embed, dembed)
    return torch.func.jvp(post, (embed.expand_as(dembed).contiguous(),), (dembed,))[1]


def _heads_of(attn: CLIPAttention, t: torch.Tensor) -> torch.Tensor:
    """(..., S, d) → (..., H, S, head_dim) for any leading dimensions (tangents carry one more)."""
    return t.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(-3, -2)


def _merged(t: torch.Tensor) -> torch.Tensor:
    """(..., H, S, head_dim) → (..., S, d): the heads side by side again."""
    return t.transpose(-3, -2).flatten(-2)


def _softmax_jvp(weights: torch.Tensor, dlogits: torch.Tensor) -> torch.Tensor:
    """The JVP of a softmax over the last axis at ``weights`` (broadcasting) along ``dlogits``."""
    return weights * (dlogits - (weights * dlogits).sum(-1, keepdim=True))


def _block_jvp(
    block: CLIPEncoderLayer, mask: torch.Tensor | None, states: torch.Tensor, tangents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One whole encoder block and its JVPs in closed form: states (M, S, d) → (M, S, d) as HF's eager
    block computes them, tangents (M, P, S, d) → (M, P, S, d), P tangents per point. Every linear map and
    layer norm runs once on the primal and once on all tangents together, as forward-mode autograd would
    but without its per-operation dispatch and its decomposed layer norm."""
    attn = block.self_attn
    z, dz = _layer_norm_jvp(block.layer_norm1, states[:, None], tangents)
    z = z[:, 0]
    q, k, v = (_heads_of(attn, proj(z)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    dq, dk, dv = (
        _heads_of(attn, torch.nn.functional.linear(dz, proj.weight))
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
    )
    a = _attention_weights(attn, q, k, mask)
    dlogits = (dq @ k[:, None].transpose(-1, -2) + q[:, None] @ dk.transpose(-1, -2)) * attn.scale
    dout = _softmax_jvp(a[:, None], dlogits) @ v[:, None] + a[:, None] @ dv
    hidden = states + attn.out_proj(_merged(a @ v))
    dhidden = tangents + torch.nn.functional.linear(_merged(dout), attn.out_proj.weight)
    return _mlp_half_jvp(block, hidden, dhidden)


def _mlp_half_jvp(
    block: CLIPEncoderLayer, hidden: torch.Tensor, tangents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MLP half of a block, h + mlp(layer_norm2(h)), on states (M, S, d) and its JVPs along tangents
    (M, P, S, d)."""
    mlp = block.mlp
    z, dz = _layer_norm_jvp(block.layer_norm2, hidden[:, None], tangents)
    pre = mlp.fc1(z[:, 0])
    slope = _activation_slope(mlp.activation_fn, pre)[:, None]
    dpre = torch.nn.functional.linear(dz, mlp.fc1.weight)
    out = hidden + mlp.fc2(mlp.activation_fn(pre))
    return out, tangents + torch.nn.functional.linear(slope * dpre, mlp.fc2.weight)


def _first_block_jvp(
    block: CLIPEncoderLayer,
    mask: torch.Tensor | None,
    states: torch.Tensor,
    delta: torch.Tensor,
    positions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attributed block, whole, along changes at one position each: states (M, S, d) → (M, S, d), and
    for each of the P ``positions`` i the JVP along ``delta`` (M, S, d) kept at i → (M, P, S, d).

    As in :func:`_block_position_jvps`, such a change moves only query, key and value i, so every query row
    j gets a_ji (c_ji (v_i − out_j) + dv_i) with c_ji = scale·q_j·dk_i, and row i also the change of its
    own query: the projections and attention cost O(d) per tangent instead of O(S·d). The change then
    spreads to every position through the output projection and the MLP, which run on all of them."""
    attn = block.self_attn
    tangent_rows = torch.arange(len(positions), device=states.device)
    z, dz = _layer_norm_jvp(block.layer_norm1, states, delta)  # dz row i ↔ δ_i
    q, k, v = (_heads_of(attn, proj(z)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    a = _attention_weights(attn, q, k, mask)
    out = a @ v  # (M, H, S, hd)
    dz = dz[:, positions]  # (M, P, d)
    dq, dk, dv = (
        _heads_of(attn, torch.nn.functional.linear(dz, proj.weight))
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
    )  # (M, H, P, hd): tangent p's change of query, key and value positions[p]
    weight_on = a[..., positions].transpose(-1, -2)  # (M, H, P, S): a_ji, row p for i = positions[p]
    c = (dk @ q.transpose(-1, -2)) * attn.scale  # (M, H, P, S): c_ji
    v_moved = v[:, :, positions, None] - out[:, :, None]  # (M, H, P, S, hd)
    dout = weight_on[..., None] * (c[..., None] * v_moved + dv[:, :, :, None])
    own = a[:, :, positions]  # (M, H, P, S): row i's weights, whose query moves too
    dout[:, :, tangent_rows, positions] += _softmax_jvp(own, (dq @ k.transpose(-1, -2)) * attn.scale) @ v
    dout = dout.permute(0, 2, 3, 1, 4).flatten(-2)  # (M, P, S, d)
    hidden = states + attn.out_proj(_merged(out))
    dhidden = torch.nn.functional.linear(dout, attn.out_proj.weight)
    dhidden[:, tangent_rows, positions] += delta[:, positions]
    return _mlp_half_jvp(block, hidden, dhidden)


def _pooled_block_jvp(
    block: CLIPEncoderLayer,
    index: int,
    mask_row: torch.Tensor | None,
    states: torch.Tensor,
    tangents: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention half of the last block at position ``index`` (as :func:`_block_position_jvps`) along
    whole-sequence tangents: states (M, S, d), tangents (M, P, S, d) → h (M, d), dh (M, P, d)."""
    attn = block.self_attn
    z, dz = _layer_norm_jvp(block.layer_norm1, states[:, None], tangents)
    q, k, v, a, out = _attention_at(attn, z[:, 0], index, mask_row)  # a (M, H, 1, S)
    dq = _heads_of(attn, torch.nn.functional.linear(dz[:, :, index : index + 1], attn.q_proj.weight))
    dk = _heads_of(attn, torch.nn.functional.linear(dz, attn.k_proj.weight))
    dv = _heads_of(attn, torch.nn.functional.linear(dz, attn.v_proj.weight))
    dlogits = (dq @ k[:, None].transpose(-1, -2) + q[:, None] @ dk.transpose(-1, -2)) * attn.scale
    dout = _softmax_jvp(a[:, None], dlogits) @ v[:, None] + a[:, None] @ dv  # (M, P, H, 1, hd)
    hidden = states[:, index] + attn.out_proj(_merged(out)[:, 0])
    dhidden = tangents[:, :, index] + torch.nn.functional.linear(_merged(dout)[:, :, 0], attn.out_proj.weight)
    return hidden, dhidden


def _last_block_jvps(
    blocks: Sequence[CLIPEncoderLayer],
    index: int,
    causal: bool,
    final_norm: torch.nn.LayerNorm,
    projection: torch.nn.Linear,
    post: Callable[[torch.Tensor], torch.Tensor],
) -> PositionJVPs:
    """Position JVPs of ``post(projection(final_norm(output of blocks at index)))``, ``chunk`` tangents at a
    time; ``causal`` masks later positions out of every attention, as the text tower does.

    With the last block alone, a change at one position moves one key and value (see
    :func:`_block_position_jvps`): a point's S JVPs cost about one forward of the block. With blocks below
    it, the first of them still sees a change at one position (:func:`_first_block_jvp`), which then
    spreads to every position, so each tangent is carried whole through the blocks between
    (:func:`_block_jvp`) and into the last block's pooled row (:func:`_pooled_block_jvp`).
    """
    *middle, last = blocks

    def jvps(states: torch.Tensor, delta: torch.Tensor, chunk: int) -> torch.Tensor:
        delta = delta.expand_as(states)  # a change (S, d) is every point's
        length, device = states.shape[1], states.device
        mask = _causal_mask(length, states.dtype, device) if causal else None
        mask_row = None if mask is None else mask[:, :, index : index + 1]
        step = max(1, chunk // length)
        if not middle:
            pieces = []
            for lo in range(0, states.shape[0], step):
                piece = slice(lo, lo + step)
                hidden, dhidden = _block_position_jvps(last, states[piece], delta[piece], index, mask_row)
                pieces.append(_tail_jvps(last, final_norm, projection, post, hidden, dhidden))
            return torch.cat(pieces)
        first, *between = middle
        columns = []
        for positions in torch.arange(length, device=device).split(chunk):
            points_per_piece = max(1, chunk // len(positions))
            pieces = []
            for lo in range(0, states.shape[0], points_per_piece):
                piece = slice(lo, lo + points_per_piece)
                hidden, tangents = _first_block_jvp(first, mask, states[piece], delta[piece], positions)
                for block in between:
                    hidden, tangents = _block_jvp(block, mask, hidden, tangents)
                pooled, dpooled = _pooled_block_jvp(last, index, mask_row, hidden, tangents)
                pieces.append(_tail_jvps(last, final_norm, projection, post, pooled, dpooled))
            columns.append(torch.cat(pieces))
        return torch.cat(columns, dim=1)

    return jvps


def _blocks(encoder: CLIPEncoder) -> list[CLIPEncoderLayer]:
    """The encoder's blocks, typed as such (its ``ModuleList`` only promises modules)."""
    blocks = [block for block in encoder.layers if isinstance(block, CLIPEncoderLayer)]
    if len(blocks) != len(encoder.layers):
        raise TypeError("every block of a CLIP encoder must be a CLIPEncoderLayer")
    return blocks


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision embeddings are upcast so cosines and scores are computed in fp32 (fp64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class HFCLIPAdapter(HFDualEncoder[CLIPModel]):
    """Wraps a HF ``CLIPModel`` with its fast tokenizer and image processor.

    Text embeddings are pooled at the EOT position that the adapter itself placed (not via the config's
    ``eos_token_id``, which is wrong in some legacy checkpoints). Images are preprocessed with the PIL
    backend of ``CLIPImageProcessor`` (``CLIPImageProcessorPil``) on every machine, so results do not
    depend on whether torchvision is installed.
    """

    model_class = CLIPModel
    processor_class = CLIPImageProcessorPil
    family = "clip"
    offline_hint = True

    @property
    def _text_model(self) -> CLIPTextModel:
        """The text tower (``CLIPModel`` builds it untyped through ``_from_config``)."""
        return self.model.text_model

    @property
    def _vision_model(self) -> CLIPVisionModel:
        """The vision tower (``CLIPModel`` builds it untyped through ``_from_config``)."""
        return self.model.vision_model

    def encode_captions(self, captions: Sequence[str], template: str) -> list[EncodedCaption]:
        """Tokenize ``SOT + template + caption + EOT`` for every caption in one tokenizer call, truncating
        whole words past 77."""
        tok = self.tokenizer
        return encode_captions(
            tok,
            captions,
            template=template,
            prefix_ids=[tok.bos_token_id],
            suffix_ids=[tok.eos_token_id],
            max_length=self.max_text_tokens,
        )

    def collate(self, encoded: Sequence[EncodedCaption]) -> TextInputs:
        """Right-pad to the longest caption of the batch (the causal mask keeps padding out of EOT)."""
        lengths = np.array([len(e.input_ids) for e in encoded], dtype=np.int64)
        ids = np.full((len(encoded), int(lengths.max())), self.tokenizer.pad_token_id, dtype=np.int64)
        for row, e in zip(ids, encoded, strict=True):
            row[: len(e.input_ids)] = e.input_ids
        mask = (np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.int64)
        pool = np.array([e.pool_index for e in encoded], dtype=np.int64)
        return TextInputs(*(torch.from_numpy(a).to(self.device) for a in (ids, mask, pool)))

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, 3, H, W) float32 on the CPU from the PIL image processor; each image is processed on its own,
        so a batch equals its images processed one by one and stacked, and worker threads may call it."""
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"].float()

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.pixel_values(images)
        return pixels.to(self.device, non_blocking=pixels.is_pinned()).to(self.weight_dtype)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLS-pooled image embeddings, every block on fused attention; in half precision under autocast
        (matmuls in ``dtype``, residual stream and norms in fp32)."""
        vision = self._vision_model
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != self.weight_dtype):
            hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
            for block in _blocks(vision.encoder):
                hidden = _fused_block(block, hidden, causal=False)
            return _at_least_fp32(self.model.visual_projection(vision.post_layernorm(hidden[:, 0])))

    def text_embeddings(self, inputs: TextInputs, output_attentions: bool | int = False) -> TextOutput:
        """Embeddings pooled at ``pool_index``, always computed with the weights' dtype (fp32 unless the
        model was built in half precision): CLIP4DM's ∂cos/∂A near ε do not survive a bf16 text tower.

        With ``output_attentions`` (a number n: the last n blocks, True: all) those blocks run HF's eager
        attention under a causal and padding mask and return their maps, differentiable when grad is
        enabled; the blocks below run fused causal attention without autograd (padding after EOT needs no
        mask there: the causal mask keeps it out of every position up to EOT).
        """
        text = self._text_model
        hidden, attentions = text_tower(
            text.embeddings, _blocks(text.encoder), inputs, output_attentions, causal=True
        )
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), inputs.pool_index]
        embeds = _at_least_fp32(self.model.text_projection(text.final_layer_norm(pooled)))
        return TextOutput(embeds, tuple(attentions) if output_attentions else None)

    # --- hidden states at a block and the rest of the network, for interaction attributions ---

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of image patches the vision encoder sees."""
        cfg = self._vision_model.config
        size, patch = cfg.image_size, cfg.patch_size
        if not isinstance(size, int) or not isinstance(patch, int):
            raise ValueError(f"a square patch grid needs int image_size and patch_size: {size!r}, {patch!r}")
        side = size // patch
        return side, side

    def image_geometry(self, width: int, height: int) -> ImageGeometry:
        """Where the model's square input lies in an original ``width``×``height`` image (resize + crop)."""
        size = self.image_processor.size
        crop = self.image_processor.crop_size
        if "shortest_edge" in size:
            short, long = sorted((width, height))
            new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
            resized = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            resized = (size["width"], size["height"])
        crop_w, crop_h = crop["width"], crop["height"]
        left, top = (resized[0] - crop_w) // 2, (resized[1] - crop_h) // 2
        return ImageGeometry((width, height), resized, (left, top, crop_w, crop_h))

    def text_reference_ids(self, length: int, kind: TextReference = "exclip") -> list[int]:
        """SOT, one filler token, EOT, then filler up to ``length``: exCLIP's reference cut to the caption's
        length (past EOT the causal mask keeps it out of the pooled position anyway)."""
        tok = self.tokenizer
        if length < 3:
            raise ValueError(f"the text reference needs at least 3 positions, got {length}")
        filler, _ = self.text_reference_token(kind)
        return [tok.bos_token_id, filler, tok.eos_token_id] + [filler] * (length - 3)

    def text_reference_token(self, kind: TextReference = "exclip") -> tuple[int, str]:
        """Token id 0 (``!`` in CLIP's vocabulary) for ``exclip``; the tokenizer's pad token for ``pad``."""
        if kind not in get_args(TextReference):
            raise ValueError(f"text reference must be one of {get_args(TextReference)}, got {kind!r}")
        token_id = EXCLIP_REFERENCE_TOKEN_ID if kind == "exclip" else self.tokenizer.pad_token_id
        return token_id, str(self.tokenizer.convert_ids_to_tokens(token_id))

    def text_states(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states entering text block ``layer`` (B, T, d), causal mask only (no padding)."""
        text = self._text_model
        hidden = text.embeddings(input_ids=input_ids)
        mask = _causal_mask(input_ids.shape[1], hidden.dtype, self.device)
        for block in _blocks(text.encoder)[:layer]:
            hidden = block(hidden, mask)
        return hidden

    def text_head(self, states: torch.Tensor, layer: int, pool_index: int) -> torch.Tensor:
        """Text embedding (unnormalised) from the states entering block ``layer``, pooled at a position."""
        text = self._text_model
        mask = _causal_mask(states.shape[1], states.dtype, states.device)
        *blocks, last = _blocks(text.encoder)[layer:]
        for block in blocks:
            states = block(states, mask)
        pooled = _block_output_at(last, states, pool_index, mask[:, :, pool_index : pool_index + 1])
        return _at_least_fp32(self.model.text_projection(text.final_layer_norm(pooled)))

    def text_head_jvps(
        self, layer: int, pool_index: int, post: Callable[[torch.Tensor], torch.Tensor]
    ) -> PositionJVPs | None:
        """Closed-form position JVPs of ``post(text_head(·))``, from any block (:func:`_last_block_jvps`)."""
        text = self._text_model
        return _last_block_jvps(
            _blocks(text.encoder)[layer:],
            pool_index,
            True,
            text.final_layer_norm,
            self.model.text_projection,
            post,
        )

    @property
    def image_prefix(self) -> int:
        """One non-patch position leads ``image_states``: the class token."""
        return 1

    def image_states(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states entering vision block ``layer`` (B, 1 + patches, d); position 0 is CLS."""
        vision = self._vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        for block in _blocks(vision.encoder)[:layer]:
            hidden = block(hidden, None)
        return hidden

    def image_head(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        """Image embedding (unnormalised) from the states entering vision block ``layer`` (CLS pooling)."""
        vision = self._vision_model
        *blocks, last = _blocks(vision.encoder)[layer:]
        for block in blocks:
            states = block(states, None)
        return _at_least_fp32(
            self.model.visual_projection(vision.post_layernorm(_block_output_at(last, states, 0)))
        )

    def image_head_jvps(
        self, layer: int, post: Callable[[torch.Tensor], torch.Tensor]
    ) -> PositionJVPs | None:
        """Closed-form position JVPs of ``post(image_head(·))``, from any block (:func:`_last_block_jvps`)."""
        vision = self._vision_model
        blocks = _blocks(vision.encoder)[layer:]
        return _last_block_jvps(blocks, 0, False, vision.post_layernorm, self.model.visual_projection, post)
