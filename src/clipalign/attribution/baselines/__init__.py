"""First-order baselines beside our interactions (the comparison of arXiv 2408.14153): one interface.

Each method maps an image and a caption span to a patch map (:class:`PatchMap`) through
``attribute(images, captions, spans)``; :data:`BASELINES` names them as ``--method`` does, and
:func:`get_baseline` builds one by name. Integrated Gradients needs the ``analysis`` extra (captum),
imported only when it runs.
"""

from __future__ import annotations

from typing import Any

from clipalign.attribution.baselines.base import BaselineSettings, FirstOrderMethod, PatchMap, SpanInput
from clipalign.attribution.baselines.clipsurgery import CLIPSurgery, SurgerySettings
from clipalign.attribution.baselines.gradeclip import GradECLIP
from clipalign.attribution.baselines.ig import IGSettings, IntegratedGradients
from clipalign.attribution.baselines.maskclip import MaskCLIP, MaskCLIPSettings
from clipalign.attribution.baselines.reference import CentreMap, CentreSettings, RandomMap, RandomSettings
from clipalign.models.base import ClipAdapter

BASELINES: dict[str, type[FirstOrderMethod]] = {
    cls.name: cls for cls in (MaskCLIP, IntegratedGradients, CLIPSurgery, GradECLIP, RandomMap, CentreMap)
}
"""Method name (as ``--method`` spells it) → class."""


def get_baseline(name: str, model: ClipAdapter, **settings: Any) -> FirstOrderMethod:
    """The baseline registered as ``name``, built on ``model``; keyword arguments set its settings."""
    try:
        cls = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}: choose from {', '.join(BASELINES)}") from None
    return cls(model, **settings)


__all__ = [
    "BASELINES",
    "BaselineSettings",
    "CLIPSurgery",
    "CentreMap",
    "CentreSettings",
    "FirstOrderMethod",
    "GradECLIP",
    "IGSettings",
    "IntegratedGradients",
    "MaskCLIP",
    "MaskCLIPSettings",
    "PatchMap",
    "RandomMap",
    "RandomSettings",
    "SpanInput",
    "SurgerySettings",
    "get_baseline",
]
