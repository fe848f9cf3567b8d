"""Model adapters: the one place that knows each model family's internals."""

from clipalign.models.base import ClipAdapter, ModelLoadError, TextInputs, TextOutput
from clipalign.models.checkpoint import CheckpointError
from clipalign.models.hf_clip import HFCLIPAdapter
from clipalign.models.registry import load_model, register_adapter, supported_model_types
from clipalign.settings import DEFAULT_MODEL

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "ClipAdapter",
    "HFCLIPAdapter",
    "ModelLoadError",
    "TextInputs",
    "TextOutput",
    "load_model",
    "register_adapter",
    "supported_model_types",
]
