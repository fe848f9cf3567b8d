"""clipalign: where an image and its caption disagree, from a pretrained CLIP model alone.

The public names load on first use (PEP 562), so that ``import clipalign`` and the command line's
``--help`` do not pay for torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipalign._lazy import lazy_exports

if TYPE_CHECKING:
    from clipalign.attribution import CLIP4DM, TokenPatchInteractions
    from clipalign.images import ImageLoadError, load_image
    from clipalign.metrics.scores import CLIPScore, FCLIPScore, RefCLIPScore
    from clipalign.models import ModelLoadError, load_model
    from clipalign.results import Interactions, ItemError, Span, TokenScore, Word, WordAlignment
    from clipalign.settings import InteractionSettings, ModelSpec, WordSettings
    from clipalign.text import CaptionError, CaptionTruncatedWarning

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "CLIP4DM": "clipalign.attribution",
    "TokenPatchInteractions": "clipalign.attribution",
    "ImageLoadError": "clipalign.images",
    "load_image": "clipalign.images",
    "CLIPScore": "clipalign.metrics.scores",
    "FCLIPScore": "clipalign.metrics.scores",
    "RefCLIPScore": "clipalign.metrics.scores",
    "ModelLoadError": "clipalign.models",
    "load_model": "clipalign.models",
    "Interactions": "clipalign.results",
    "ItemError": "clipalign.results",
    "Span": "clipalign.results",
    "TokenScore": "clipalign.results",
    "Word": "clipalign.results",
    "WordAlignment": "clipalign.results",
    "InteractionSettings": "clipalign.settings",
    "ModelSpec": "clipalign.settings",
    "WordSettings": "clipalign.settings",
    "CaptionError": "clipalign.text",
    "CaptionTruncatedWarning": "clipalign.text",
}
"""Public name → the module that defines it, imported when the name is first read."""

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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
