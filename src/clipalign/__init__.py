"""clipalign: where an image and its caption disagree, from a pretrained CLIP model alone."""

from clipalign.attribution import CLIP4DM, TokenPatchInteractions
from clipalign.images import ImageLoadError, load_image
from clipalign.metrics.scores import CLIPScore, FCLIPScore, RefCLIPScore
from clipalign.models import ModelLoadError, load_model
from clipalign.results import Interactions, ItemError, Span, TokenScore, Word, WordAlignment
from clipalign.settings import InteractionSettings, ModelSpec, WordSettings
from clipalign.text import CaptionError, CaptionTruncatedWarning

__version__ = "0.1.0"

__all__ = [
    "CLIP4DM",
    "CLIPScore",
    "CaptionError",
    "CaptionTruncatedWarning",
    "FCLIPScore",
    "ImageLoadError",
    "InteractionSettings",
    "Interactions",
    "ItemError",
    "ModelLoadError",
    "ModelSpec",
    "RefCLIPScore",
    "Span",
    "TokenPatchInteractions",
    "TokenScore",
    "Word",
    "WordAlignment",
    "WordSettings",
    "__version__",
    "load_image",
    "load_model",
]
