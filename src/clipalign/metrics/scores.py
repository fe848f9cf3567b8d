"""Metric objects in the torchmetrics style: ``update`` with batches of pairs, ``compute`` the corpus mean.

Each wraps a model adapter; the formulas live in :mod:`clipalign.metrics.functional`. They sit above
the attribution methods (F-CLIPScore runs CLIP4DM), so they are exported from :mod:`clipalign` rather
than from :mod:`clipalign.metrics`, which holds what attribution itself builds on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import torch
from torchmetrics import Metric

from clipalign.attribution.words import CLIP4DM
from clipalign.images import ImageInput
from clipalign.metrics.cosines import image_text_cosine, reference_cosines
from clipalign.metrics.functional import ReferenceConvention, clip_score, ref_clip_score
from clipalign.models.base import ClipAdapter
from clipalign.settings import WordSettings
from clipalign.text.alignment import DEFAULT_TEMPLATE


class _MeanMetric(Metric):
    """Running mean of one per-pair score (sum and count states, summed across processes)."""

    is_differentiable = False
    full_state_update = False
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, model: ClipAdapter, *, template: str = DEFAULT_TEMPLATE, **kwargs: Any) -> None:
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
    """Mean CLIPScore, 2.5·max(cos(image, "A photo depicts " + caption), 0) (Hessel et al., 2021).

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> metric = CLIPScore(tiny_model())
        >>> metric.update([example_image(), example_image()], ["a red ball", "a blue cube"])
        >>> score = metric.compute()
        >>> score.shape, bool(0 <= score <= 2.5)
        (torch.Size([]), True)
    """

    higher_is_better = True

    def update(self, images: Sequence[ImageInput], captions: Sequence[str]) -> None:
        self._accumulate(clip_score(image_text_cosine(self.model, images, captions, self.template)))


class RefCLIPScore(_MeanMetric):
    """Mean RefCLIPScore: harmonic mean of CLIPScore and the best reference's max(cos, 0).

    ``convention="clip4dm"`` reproduces the CLIP4DM code (first reference only, scaled by 2.5).

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> metric = RefCLIPScore(tiny_model())
        >>> metric.update([example_image()], ["a red ball"], [["a red ball on grass", "a ball"]])
        >>> bool(0 <= metric.compute() <= 2.5)
        True
    """

    higher_is_better = True

    def __init__(
        self,
        model: ClipAdapter,
        *,
        convention: ReferenceConvention = "hessel",
        template: str = DEFAULT_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, template=template, **kwargs)
        self.convention = convention

    def update(
        self, images: Sequence[ImageInput], captions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> None:
        cos = image_text_cosine(self.model, images, captions, self.template)
        ref_cos, mask = reference_cosines(self.model, captions, references, self.template)
        self._accumulate(ref_clip_score(cos, ref_cos, mask, self.convention))


class FCLIPScore(_MeanMetric):
    """Mean F-CLIPScore, (1 − max(cos, 0)) · Σ scores of words below ε (CLIP4DM); ≤ 0, lower = worse.

    ``settings`` are :class:`~clipalign.CLIP4DM`'s (:class:`~clipalign.settings.WordSettings`); keyword
    arguments named like one of its fields change it (``epsilon=0.0``), the others go to torchmetrics.

    Example:
        >>> from clipalign.testing import tiny_model, example_image
        >>> metric = FCLIPScore(tiny_model(), layers=2)
        >>> metric.update([example_image()], ["a red ball on the grass"])
        >>> bool(metric.compute() <= 0)
        True
    """

    higher_is_better = True

    def __init__(self, model: ClipAdapter, *, settings: WordSettings | None = None, **kwargs: Any) -> None:
        names = {f.name for f in fields(WordSettings)}
        changes = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        attributor = CLIP4DM(model, settings=settings, **changes)
        super().__init__(model, template=attributor.settings.template, **kwargs)
        self.attributor = attributor

    def update(self, images: Sequence[ImageInput], captions: Sequence[str]) -> None:
        results = self.attributor.attribute(list(images), list(captions), on_error="raise")
        self._accumulate(torch.tensor([r.f_clipscore for r in results]))
