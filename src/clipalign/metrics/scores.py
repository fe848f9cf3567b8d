"""Metric objects in the torchmetrics style: ``update`` with batches of pairs, ``compute`` the corpus mean.

Each wraps a model adapter; the formulas live in :mod:`clipalign.metrics.functional`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from clipalign.images import ImageInput, load_image
from clipalign.metrics.functional import ReferenceConvention, clip_score, ref_clip_score
from clipalign.models.base import ClipAdapter
from clipalign.results import WordAlignment
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


class _MeanMetric(Metric):
    """Running mean of one per-pair score (sum and count states, summed across processes)."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, model: ClipAdapter, template: str = DEFAULT_TEMPLATE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.template = template
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, scores: torch.Tensor) -> None:
        self.total += scores.double().sum().to(self.total.device)
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)


class CLIPScore(_MeanMetric):
    """Mean CLIPScore, 2.5·max(cos(image, "A photo depicts " + caption), 0) (Hessel et al., 2021)."""

    higher_is_better = True

    def update(self, images: Sequence[ImageInput], captions: Sequence[str]) -> None:
        self._accumulate(clip_score(image_text_cosine(self.model, images, captions, self.template)))


class RefCLIPScore(_MeanMetric):
    """Mean RefCLIPScore: harmonic mean of CLIPScore and the best reference's max(cos, 0).

    ``convention="clip4dm"`` reproduces the CLIP4DM code (first reference only, scaled by 2.5).
    """

    higher_is_better = True

    def __init__(
        self,
        model: ClipAdapter,
        convention: ReferenceConvention = "hessel",
        template: str = DEFAULT_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, template, **kwargs)
        self.convention = convention

    def update(
        self, images: Sequence[ImageInput], captions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> None:
        cos = image_text_cosine(self.model, images, captions, self.template)
        ref_cos, mask = reference_cosines(self.model, captions, references, self.template)
        self._accumulate(ref_clip_score(cos, ref_cos, mask, self.convention))


class FCLIPScore(_MeanMetric):
    """Mean F-CLIPScore, (1 − max(cos, 0)) · Σ scores of words below ε (CLIP4DM); ≤ 0, lower = worse.

    ``layers`` and ``epsilon`` default to :class:`~clipalign.CLIP4DM`'s.
    """

    higher_is_better = True

    def __init__(
        self,
        model: ClipAdapter,
        layers: int | None = None,
        epsilon: float | None = None,
        template: str = DEFAULT_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        # imported here: attribution uses this package's formulas, so a module-level import would be circular
        from clipalign.attribution.words import CLIP4DM

        super().__init__(model, template, **kwargs)
        options = {"layers": layers, "epsilon": epsilon}
        self.attributor = CLIP4DM(
            model, template=template, **{k: v for k, v in options.items() if v is not None}
        )

    def update(self, images: Sequence[ImageInput], captions: Sequence[str]) -> None:
        results = self.attributor.attribute(list(images), list(captions), on_error="raise")
        self._accumulate(torch.tensor([r.f_clipscore for r in results if isinstance(r, WordAlignment)]))
