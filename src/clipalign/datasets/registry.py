"""Benchmark name → loader. Importing this imports every loader (and their parsers: pyarrow, tfrecord)."""

from __future__ import annotations

from collections.abc import Callable

from clipalign.datasets.base import MisalignmentItem, PointingItem
from clipalign.datasets.foil import load_foil
from clipalign.datasets.hat import load_hat
from clipalign.datasets.hnc import load_hnc
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
    "hnc": load_hnc,
    "seetrue-feedback": load_seetrue_feedback,
    "richhf": load_richhf,
    "pointing-coco": load_pointing_coco,
    "pointing-flickr30k": load_pointing_flickr30k,
    "synthetic": load_synthetic,
    "pointing-synthetic": load_synthetic_pointing,
}
"""Benchmark name → loader; extra options are keyword-only (``prompts=`` for richhf, ``instances=`` ...)."""
