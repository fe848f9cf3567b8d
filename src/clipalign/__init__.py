"""clipalign: where an image and its caption disagree, from a pretrained CLIP model alone."""

from clipalign.attribution import CLIP4DM
from clipalign.images import ImageLoadError, load_image
from clipalign.models import ModelLoadError, load_model
from clipalign.results import ItemError, Span, TokenScore, Word, WordAlignment
from clipalign.text import CaptionError, CaptionTruncatedWarning

__version__ = "0.1.0"

__all__ = [
    "CLIP4DM",
    "CaptionError",
    "CaptionTruncatedWarning",
    "ImageLoadError",
    "ItemError",
    "ModelLoadError",
    "Span",
    "TokenScore",
    "Word",
    "WordAlignment",
    "__version__",
    "load_image",
    "load_model",
]
