"""Model adapters: the one place that knows each model family's internals.

Names load on first use (PEP 562): :class:`ModelLoadError` and the ``--model`` checks in
:mod:`clipalign.models.errors` need neither torch nor transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipalign._lazy import lazy_exports

if TYPE_CHECKING:
    from clipalign.models.base import ClipAdapter, TextInputs, TextOutput
    from clipalign.models.checkpoint import CheckpointError
    from clipalign.models.errors import ModelLoadError, UnsupportedModelError
    from clipalign.models.hf_clip import HFCLIPAdapter
    from clipalign.models.registry import (
        MODEL_ALIASES,
        families,
        load_model,
        register_adapter,
        supported_model_types,
    )
    from clipalign.settings import DEFAULT_MODEL

_EXPORTS: dict[str, str] = {
    "DEFAULT_MODEL": "clipalign.settings",
    "CheckpointError": "clipalign.models.checkpoint",
    "ClipAdapter": "clipalign.models.base",
    "HFCLIPAdapter": "clipalign.models.hf_clip",
    "MODEL_ALIASES": "clipalign.models.registry",
    "ModelLoadError": "clipalign.models.errors",
    "UnsupportedModelError": "clipalign.models.errors",
    "families": "clipalign.models.registry",
    "TextInputs": "clipalign.models.base",
    "TextOutput": "clipalign.models.base",
    "load_model": "clipalign.models.registry",
    "register_adapter": "clipalign.models.registry",
    "supported_model_types": "clipalign.models.registry",
}
"""Public name → the module that defines it, imported when the name is first read."""

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ALIASES",
    "CheckpointError",
    "ClipAdapter",
    "HFCLIPAdapter",
    "ModelLoadError",
    "TextInputs",
    "TextOutput",
    "UnsupportedModelError",
    "families",
    "load_model",
    "register_adapter",
    "supported_model_types",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
