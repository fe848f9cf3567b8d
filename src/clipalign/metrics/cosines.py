"""The cosines every score is built from: image–caption and caption–reference, batched, fp32 on CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipalign.images import ImageInput, load_image
from clipalign.models.base import ClipAdapter
from clipalign.text.alignment import DEFAULT_TEMPLATE


@torch.no_grad()
def image_text_cosine(
    model: ClipAdapter,
    images: Sequence[ImageInput],
    captions: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
) -> torch.Tensor:
    """cos(image_i, template + caption_i) for each pair, shape (B,), fp32 on CPU."""
    image = model.image_embeddings(model.preprocess([load_image(i) for i in images]))
    text = model.text_embeddings(model.collate(model.encode_captions(captions, template))).embeds
    return torch.nn.functional.cosine_similarity(image, text, dim=-1).cpu()


@torch.no_grad()
def reference_cosines(
    model: ClipAdapter,
    captions: Sequence[str],
    references: Sequence[Sequence[str]],
    template: str = DEFAULT_TEMPLATE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(caption_i, reference_ij), padded to (B, R_max), and the (B, R_max) mask of real references.

    Candidates and references all get the template, as in Hessel et al.'s implementation.
    """
    if any(len(r) == 0 for r in references):
        raise ValueError("every caption needs at least one reference for RefCLIPScore")
    flat = [r for refs in references for r in refs]
    embeds = model.text_embeddings(model.collate(model.encode_captions([*captions, *flat], template))).embeds
    embeds = torch.nn.functional.normalize(embeds, dim=-1).cpu()
    cand, refs = embeds[: len(captions)], embeds[len(captions) :]
    width = max(len(r) for r in references)
    cos = torch.zeros(len(captions), width)
    mask = torch.zeros(len(captions), width, dtype=torch.bool)
    start = 0
    for i, r in enumerate(references):
        cos[i, : len(r)] = refs[start : start + len(r)] @ cand[i]
        mask[i, : len(r)] = True
        start += len(r)
    return cos, mask
