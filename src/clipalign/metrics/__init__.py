"""Score formulas (CLIPScore, RefCLIPScore, F-CLIPScore) and the cosines they are computed from.

The metric objects built on them (:class:`~clipalign.CLIPScore`, :class:`~clipalign.RefCLIPScore`,
:class:`~clipalign.FCLIPScore`) live in :mod:`clipalign.metrics.scores` and are exported from
:mod:`clipalign`: F-CLIPScore runs the CLIP4DM attribution, which itself uses these formulas.
"""

from clipalign.metrics.cosines import image_text_cosine, reference_cosines
from clipalign.metrics.functional import clip_score, f_clip_score, ref_clip_score, reference_score

__all__ = [
    "clip_score",
    "f_clip_score",
    "image_text_cosine",
    "ref_clip_score",
    "reference_cosines",
    "reference_score",
]
