"""CLIPScore, RefCLIPScore and F-CLIPScore: metric objects and their functional formulas."""

from clipalign.metrics.functional import clip_score, f_clip_score, ref_clip_score, reference_score
from clipalign.metrics.scores import CLIPScore, FCLIPScore, RefCLIPScore, image_text_cosine, reference_cosines

__all__ = [
    "CLIPScore",
    "FCLIPScore",
    "RefCLIPScore",
    "clip_score",
    "f_clip_score",
    "image_text_cosine",
    "ref_clip_score",
    "reference_cosines",
    "reference_score",
]
