"""Benchmark items in one shape, whatever file format they came from.

Loaders parse each benchmark's original annotation files (see the sibling modules) into these items;
evaluation code only ever sees items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipalign.images.geometry import Box


@dataclass(frozen=True)
class MisalignmentItem:
    """One image–caption pair of a word-level misalignment benchmark.

    Attributes:
        id: unique within the benchmark (used as the cache key of per-item results).
        image: path of the image file (``images_dir`` joined with the annotation's file name).
        caption: the caption to score, as written in the annotations.
        aligned: True for a correct caption (FOIL "ORIG", nocaps baseline, HAT without hallucination).
        misaligned_phrases: ground-truth wrong words or phrases as written in ``caption`` ("golf ball");
            empty when aligned.
        word_labels: per whitespace-delimited word of ``caption``, True when that word is misaligned
            (HAT grounding, Rich-HF token labels); None when the benchmark has no word labels.
        references: human reference captions, when the benchmark has them.
        feedback: ground-truth textual description of the misalignment (SeeTRUE-Feedback).
        misalignment_score: a human misalignment score (Rich-HF), when given.
        meta: anything else worth keeping (domain, original ids); ``clip4dm_target`` is the ground-truth
            string the CLIP4DM authors' evaluation code compares predictions with (lower-cased; "orig" or
            empty for a correct caption), see :mod:`clipalign.evaluation.authors`.
        problem: why the item cannot be evaluated (e.g. its labels do not fit its prompt): it is then
            not scored and is reported as a failure with this reason; None for a usable item.
    """

    id: str
    image: Path
    caption: str
    aligned: bool
    misaligned_phrases: tuple[str, ...] = ()
    word_labels: tuple[bool, ...] | None = None
    references: tuple[str, ...] = ()
    feedback: str | None = None
    misalignment_score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    problem: str | None = None


@dataclass(frozen=True)
class PointingItem:
    """One phrase of a caption grounded by boxes in its image (pointing game).

    ``phrase_start``/``phrase_end`` are character offsets of the phrase in ``caption``; ``boxes`` are
    every ground-truth box of the phrase, (x, y, w, h) in original pixels.
    """

    id: str
    image: Path
    caption: str
    phrase: str
    phrase_start: int
    phrase_end: int
    boxes: tuple[Box, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
