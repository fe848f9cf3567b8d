"""Settings of the faithfulness analysis (insertion/deletion curves), light enough for the CLI's start-up.

The procedure itself is :mod:`clipalign.evaluation.faithfulness`; this module holds only what the command
line needs to build its options: the choices, the defaults and their validation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from clipalign.settings import RUNTIME, TextReference, _check_choice, _result_fields

MaskValue = Literal["baseline", "mean", "zero"]
"""What a masked patch's pixels become: ``baseline`` all-zero normalised pixels (the processor's mean
colour: the reference image of our interactions and of Integrated Gradients, FIxLIP's absent patch),
``mean`` this image's own mean colour, ``zero`` black (pixel value 0 before normalisation)."""

Score = Literal["caption", "phrase"]
"""The image side's tracked score: the cosine of the (masked) image with the whole caption's embedding,
or with the phrase's own embedding (the text the first-order maps explain)."""

CurveNormalize = Literal["unmasked", "range", "difference"]
"""How a curve is made comparable across items: ``unmasked`` divides by the unmasked score (1 = the intact
pair); ``range`` maps the fully masked score to 0 and the unmasked score to 1 (FIxLIP's); ``difference``
subtracts the unmasked score (0 = the intact pair; cosine units, no division, so no item is left out)."""


@dataclass(frozen=True, kw_only=True)
class FaithfulnessSettings:
    """Insertion/deletion curves.

    Attributes:
        steps: the fraction grid 0, 1/steps, …, 1: at step k the first round(k·n/steps) of the n players
            (patches, tokens, or both) in attribution order are masked (deletion) or alone unmasked
            (insertion).
        mask_value: what a masked patch becomes (:data:`MaskValue`).
        text_mask: a masked token's id is replaced by the filler of this text reference (``exclip``:
            id 0, CLIP's ``!``, as the interactions' reference; ``pad``: the tokenizer's pad token).
        score: the image side's tracked cosine (:data:`Score`); the text and joint sides always track the
            cosine of the image with the caption.
        normalize: :data:`CurveNormalize`; it acts on the cached raw curves, so changing it recomputes
            nothing.
        orderings: random orderings averaged into the random floor.
        seed: random state of the floor's orderings (with each item's id, so an item's floor does not
            depend on which other items run).
        batch_size: masked inputs per forward; speed and memory only.
    """

    steps: int = 20
    mask_value: MaskValue = "baseline"
    text_mask: TextReference = "exclip"
    score: Score = "caption"
    normalize: CurveNormalize = "unmasked"
    orderings: int = 5
    seed: int = 0
    batch_size: int = field(default=64, metadata=RUNTIME)

    def __post_init__(self) -> None:
        _check_choice("mask_value", self.mask_value, MaskValue)
        _check_choice("text_mask", self.text_mask, TextReference)
        _check_choice("score", self.score, Score)
        _check_choice("normalize", self.normalize, CurveNormalize)
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.orderings < 1:
            raise ValueError(f"orderings must be ≥ 1, got {self.orderings}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")

    def replace(self, **changes: Any) -> FaithfulnessSettings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Everything that decides the numbers (not ``batch_size``), for reports."""
        return _result_fields(self)

    def curve_dict(self) -> dict[str, Any]:
        """What decides the raw curves (not ``normalize``), for the cache key."""
        return {k: v for k, v in self.to_dict().items() if k != "normalize"}
