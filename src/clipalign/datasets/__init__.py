"""Benchmark loaders: each parses one benchmark's original files into :mod:`clipalign.datasets.base` items.

Every loader is ``load_X(annotations, images, limit=None, **options) -> list[item]``: ``images`` is the
folder the annotations' image file names are relative to, items come in a deterministic order with
unique, stable ids, and a malformed file raises :class:`AnnotationFormatError` (a ``ValueError``) naming
the file and the problem. :data:`BENCHMARKS` maps benchmark names to loaders.
"""

from __future__ import annotations

from collections.abc import Callable

from clipalign.datasets._common import AnnotationFormatError
from clipalign.datasets.base import Box, MisalignmentItem, PointingItem
from clipalign.datasets.foil import load_foil
from clipalign.datasets.hat import load_hat
from clipalign.datasets.nocaps_foil import load_nocaps_foil
from clipalign.datasets.pointing_coco import load_pointing_coco
from clipalign.datasets.pointing_flickr30k import load_pointing_flickr30k
from clipalign.datasets.richhf import load_richhf
from clipalign.datasets.seetrue_feedback import load_seetrue_feedback
from clipalign.datasets.synthetic import load_synthetic, load_synthetic_pointing

BENCHMARKS: dict[str, Callable[..., list[MisalignmentItem] | list[PointingItem]]] = {
    "foil": load_foil,
    "nocaps-foil": load_nocaps_foil,
    "hat": load_hat,
    "seetrue-feedback": load_seetrue_feedback,
    "richhf": load_richhf,
    "pointing-coco": load_pointing_coco,
    "pointing-flickr30k": load_pointing_flickr30k,
    "synthetic": load_synthetic,
    "pointing-synthetic": load_synthetic_pointing,
}
"""Benchmark name → loader; extra options are keyword-only (``prompts=`` for richhf, ``instances=`` ...)."""

__all__ = [
    "BENCHMARKS",
    "AnnotationFormatError",
    "Box",
    "MisalignmentItem",
    "PointingItem",
    "load_foil",
    "load_hat",
    "load_nocaps_foil",
    "load_pointing_coco",
    "load_pointing_flickr30k",
    "load_richhf",
    "load_seetrue_feedback",
    "load_synthetic",
    "load_synthetic_pointing",
]
