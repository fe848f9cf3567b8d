"""Benchmark loaders: each parses one benchmark's original files into :mod:`clipalign.datasets.base` items.

Every loader is ``load_X(annotations, images, limit=None, **options) -> list[item]``: ``images`` is the
folder the annotations' image file names are relative to, items come in a deterministic order with
unique, stable ids, and a malformed file raises :class:`AnnotationFormatError` (a ``ValueError``) naming
the file and the problem. :data:`BENCHMARKS` maps benchmark names to loaders.

Names load on first use (PEP 562): :data:`BENCHMARK_NAMES` is here, so that the command line can list
the benchmarks without importing the loaders' parsers (tfrecord imports torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipalign._lazy import lazy_exports

if TYPE_CHECKING:
    from clipalign.datasets._common import AnnotationFormatError
    from clipalign.datasets.base import Box, MisalignmentItem, PointingItem
    from clipalign.datasets.foil import load_foil
    from clipalign.datasets.hat import load_hat
    from clipalign.datasets.hnc import load_hnc
    from clipalign.datasets.nocaps_foil import load_nocaps_foil
    from clipalign.datasets.pointing_coco import load_pointing_coco
    from clipalign.datasets.pointing_flickr30k import load_pointing_flickr30k
    from clipalign.datasets.registry import BENCHMARKS
    from clipalign.datasets.richhf import load_richhf
    from clipalign.datasets.seetrue_feedback import load_seetrue_feedback
    from clipalign.datasets.synthetic import load_synthetic, load_synthetic_pointing

BENCHMARK_NAMES: tuple[str, ...] = (
    "foil",
    "hat",
    "hnc",
    "nocaps-foil",
    "pointing-coco",
    "pointing-flickr30k",
    "pointing-synthetic",
    "richhf",
    "seetrue-feedback",
    "synthetic",
)
"""The keys of :data:`BENCHMARKS`, sorted (a test keeps the two equal)."""

POINTING_NAMES: tuple[str, ...] = ("hnc", "pointing-coco", "pointing-flickr30k", "pointing-synthetic")
"""The benchmarks that are pointing games (their loaders give :class:`PointingItem`)."""

_EXPORTS: dict[str, str] = {
    "BENCHMARKS": "clipalign.datasets.registry",
    "AnnotationFormatError": "clipalign.datasets._common",
    "Box": "clipalign.datasets.base",
    "MisalignmentItem": "clipalign.datasets.base",
    "PointingItem": "clipalign.datasets.base",
    "load_foil": "clipalign.datasets.foil",
    "load_hat": "clipalign.datasets.hat",
    "load_hnc": "clipalign.datasets.hnc",
    "load_nocaps_foil": "clipalign.datasets.nocaps_foil",
    "load_pointing_coco": "clipalign.datasets.pointing_coco",
    "load_pointing_flickr30k": "clipalign.datasets.pointing_flickr30k",
    "load_richhf": "clipalign.datasets.richhf",
    "load_seetrue_feedback": "clipalign.datasets.seetrue_feedback",
    "load_synthetic": "clipalign.datasets.synthetic",
    "load_synthetic_pointing": "clipalign.datasets.synthetic",
}
"""Public name → the module that defines it, imported when the name is first read."""

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_NAMES",
    "POINTING_NAMES",
    "AnnotationFormatError",
    "Box",
    "MisalignmentItem",
    "PointingItem",
    "load_foil",
    "load_hat",
    "load_hnc",
    "load_nocaps_foil",
    "load_pointing_coco",
    "load_pointing_flickr30k",
    "load_richhf",
    "load_seetrue_feedback",
    "load_synthetic",
    "load_synthetic_pointing",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
