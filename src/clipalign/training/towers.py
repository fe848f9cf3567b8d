"""The trained model: the HF ``CLIPModel``/``SiglipModel`` an adapter wraps, its embeddings with autograd,
which parameters train, and which of them take weight decay.

The adapters' own embedding paths run the lower text blocks without autograd (attribution differentiates
activations, not weights), so training reads the embeddings from the HF towers directly, pooled where the
adapter pools (CLIP: the EOT it placed; SigLIP: the last position) so that training and scoring agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from clipalign.models.base import ClipAdapter

Family = Literal["clip", "siglip"]


def family(model: ClipAdapter) -> Family:
    """``clip`` or ``siglip`` from the wrapped model's config; any other family cannot be trained here."""
    kind = hf_model(model).config.model_type
    if kind not in ("clip", "siglip"):
        raise ValueError(f"finetune trains CLIP and SigLIP checkpoints; {model.name} is a {kind!r} model")
    return kind  # type: ignore[return-value]


def hf_model(model: ClipAdapter) -> PreTrainedModel:
    """The HF model inside an adapter."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, PreTrainedModel):
        raise ValueError(f"{type(model).__name__} does not wrap a Hugging Face model: it cannot be trained")
    return inner


def image_features(net: Any, kind: Family, pixels: torch.Tensor) -> torch.Tensor:
    """(B, D) image embeddings with autograd: CLIP's projected class token, SigLIP's pooling head (``net``
    a ``CLIPModel`` or ``SiglipModel``, whose towers HF types loosely)."""
    pooled = net.vision_model(pixel_values=pixels).pooler_output
    return net.visual_projection(pooled) if kind == "clip" else pooled


def text_features(
    net: Any,
    kind: Family,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pool_index: torch.Tensor,
) -> torch.Tensor:
    """(B, D) text embeddings with autograd, pooled at ``pool_index`` as the adapter pools them (SigLIP
    reads its padding, as it was trained, so it gets no mask)."""
    text = net.text_model
    rows = torch.arange(len(input_ids), device=input_ids.device)
    if kind == "clip":
        hidden = text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return net.text_projection(hidden[rows, pool_index])
    hidden = text(input_ids=input_ids).last_hidden_state
    return text.head(hidden[rows, pool_index])


FREEZE_PATTERN = re.compile(r"^(vision|text)(?::(\d+))?$|^logit$")
"""``vision``, ``text`` (a whole tower with its projection), ``vision:N``, ``text:N`` (the embeddings and
the first N blocks), ``logit`` (the temperature, and SigLIP's bias)."""


def frozen_names(net: PreTrainedModel, freeze: Sequence[str]) -> set[str]:
    """The names of the parameters that ``freeze`` keeps fixed; a bad entry is a ValueError."""
    names = [name for name, _ in net.named_parameters()]
    out: set[str] = set()
    for entry in freeze:
        match = FREEZE_PATTERN.match(entry)
        if match is None:
            raise ValueError(f"--freeze takes vision, text, vision:N, text:N or logit; got {entry!r}")
        if entry == "logit":
            out.update(n for n in names if n in ("logit_scale", "logit_bias"))
            continue
        tower, blocks = match.group(1), match.group(2)
        if blocks is None:
            prefixes = (f"{tower}_model.", "visual_projection." if tower == "vision" else "text_projection.")
            out.update(n for n in names if n.startswith(prefixes))
            continue
        depth = getattr(net.config, f"{tower}_config").num_hidden_layers
        if int(blocks) > depth:
            raise ValueError(f"--freeze {entry}: the {tower} tower has {depth} blocks")
        stem = (f"{tower}_model.embeddings.", f"{tower}_model.pre_layrnorm.")
        layers = tuple(f"{tower}_model.encoder.layers.{i}." for i in range(int(blocks)))
        out.update(n for n in names if n.startswith(stem + layers))
    return out


def trainable(net: PreTrainedModel, freeze: Sequence[str]) -> list[tuple[str, torch.nn.Parameter]]:
    """Set ``requires_grad`` (off for the frozen parameters) and return the trained ones, by name."""
    frozen = frozen_names(net, freeze)
    params = []
    for name, param in net.named_parameters():
        param.requires_grad_(name not in frozen)
        if name not in frozen:
            params.append((name, param))
    if not params:
        raise ValueError("--freeze leaves no parameter to train")
    return params


def decays(name: str, param: torch.Tensor) -> bool:
    """Weight decay applies to weight matrices and embeddings, not to biases, norms or the temperature."""
    return param.ndim >= 2 and "logit" not in name


@contextmanager
def evaluating(net: PreTrainedModel) -> Iterator[None]:
    """The model in eval mode with every gradient off (attribution differentiates activations only),
    restored afterwards; gradients left by the evaluation are dropped."""
    flags = [(p, p.requires_grad) for p in net.parameters()]
    was_training = net.training
    net.eval().requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        net.train(was_training)
