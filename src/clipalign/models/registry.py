"""Registry of model families: a config's ``model_type`` → the adapter class that knows its internals.

Kept free of torch and transformers at import: the built-in adapters are named ``module:attribute`` and
imported on first use, and what each family needs is a plain string here, so ``clipalign models`` lists
the families without loading a model library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from clipalign.checkpoints import SYNTHETIC_CLIP, SYNTHETIC_SIGLIP
from clipalign.models.errors import ModelLoadError, UnsupportedModelError, check_local_path, check_supported
from clipalign.settings import DEFAULT_MODEL

if TYPE_CHECKING:
    import torch

    from clipalign.models.base import ClipAdapter

MODEL_ALIASES: dict[str, Path] = {"synthetic": SYNTHETIC_CLIP, "synthetic-siglip": SYNTHETIC_SIGLIP}
"""Short names of the checkpoints that ship with clipalign (a folder of that name: pass ``./synthetic``)."""


class AdapterFactory(Protocol):
    def from_pretrained(
        self,
        name_or_path: str | Path,
        device: str | torch.device | None = ...,
        dtype: str | torch.dtype = ...,
        local_files_only: bool = ...,
        allow_pickle: bool = ...,
    ) -> ClipAdapter: ...


FIXED_RESOLUTION_SIGLIP2 = "google/siglip2-base-patch16-224 (or -256, -384, -512; large, so400m, giant-opt)"
"""The SigLIP 2 checkpoints stored as ``SiglipModel`` (one fixed square input)."""

_ADAPTERS: dict[str, AdapterFactory | str] = {
    "clip": "clipalign.models.hf_clip:HFCLIPAdapter",
    "siglip": "clipalign.models.hf_siglip:HFSiglipAdapter",
    "siglip2": "clipalign.models.hf_siglip2:HFSiglip2Adapter",
}
"""``model_type`` → its adapter, or ``module:attribute`` naming it (imported when first loaded)."""
_NEEDS: dict[str, str] = {
    "clip": (
        "config.json, model.safetensors (pytorch_model.bin only with --allow-pickle), the CLIP BPE "
        "tokenizer (vocab.json + merges.txt, or tokenizer.json), preprocessor_config.json; no extra "
        "packages. Any text context length (max_position_embeddings: 77, 248 for LongCLIP)"
    ),
    "siglip": (
        "config.json, model.safetensors (pytorch_model.bin only with --allow-pickle), "
        "preprocessor_config.json, and the tokenizer: spiece.model (SigLIP; read with protobuf, no "
        "sentencepiece needed) or tokenizer.json (SigLIP 2's Gemma tokenizer); no extra packages. Covers "
        f"SigLIP and fixed-resolution SigLIP 2, e.g. {FIXED_RESOLUTION_SIGLIP2}"
    ),
    "siglip2": (
        "config.json, model.safetensors (pytorch_model.bin only with --allow-pickle), "
        "preprocessor_config.json (Siglip2ImageProcessor: patch_size, max_num_patches), tokenizer.json "
        "(Gemma); no extra packages. NaFlex SigLIP 2 (Siglip2Model, google/siglip2-*-naflex): variable "
        "resolution, aspect ratio kept, a patch grid per image"
    ),
}


def register_adapter(model_type: str, factory: AdapterFactory | str, *, needs: str | None = None) -> None:
    """Make :func:`load_model` use ``factory`` for checkpoints whose config has this ``model_type``: a class
    with ``from_pretrained``, or ``"module:attribute"`` naming one, imported when such a checkpoint is
    first loaded. ``needs`` says in a line which files and extra packages such a checkpoint needs
    (``clipalign models`` shows it)."""
    _ADAPTERS[model_type] = factory
    if needs is not None:
        _NEEDS[model_type] = needs


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_factory(model_type: str) -> AdapterFactory:
    """The adapter registered for ``model_type``, importing it when it was registered by name."""
    factory = _ADAPTERS[model_type]
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = cast(AdapterFactory, getattr(importlib.import_module(module), attribute))
        _ADAPTERS[model_type] = factory
    return factory


@dataclass(frozen=True)
class Family:
    """A supported model family, as ``clipalign models`` describes it."""

    model_type: str
    adapter: str
    needs: str


def families() -> list[Family]:
    """Every registered family: its ``model_type``, the adapter class, and what its checkpoints need.

    A family registered with ``needs`` is described without importing its adapter (every built-in one);
    otherwise the adapter is imported for its docstring's summary.
    """
    described = []
    for model_type in supported_model_types():
        factory = _ADAPTERS[model_type]
        if isinstance(factory, str) and model_type in _NEEDS:
            described.append(Family(model_type, factory.replace(":", "."), _NEEDS[model_type]))
            continue
        loaded = adapter_factory(model_type)
        kind = loaded if isinstance(loaded, type) else type(loaded)
        summary = (kind.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        needs = _NEEDS.get(model_type, summary)
        described.append(Family(model_type, f"{kind.__module__}.{kind.__qualname__}", needs))
    return described


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "fp32",
    allow_pickle: bool = False,
) -> ClipAdapter:
    """Load a CLIP-family model by Hub name or local directory, choosing the adapter from its config.

    Args:
        name_or_path: e.g. ``openai/clip-vit-base-patch32``, a directory written by ``save_pretrained``
            (or ``hf download``), or ``"synthetic"``: the small CLIP that ships with clipalign
            (:data:`clipalign.checkpoints.SYNTHETIC_CLIP`), which knows only the shapes world of
            :mod:`clipalign.synthetic` and needs no network.
        device: ``cpu``, ``cuda``, ``cuda:1``...; ``None`` picks CUDA when available.
        dtype: ``fp32``, ``fp16``, ``bf16``, or ``auto`` (bf16 on a CUDA device that supports it, else fp32).
        allow_pickle: also accept ``pytorch_model.bin`` weights (read weights-only) when there are no
            safetensors; off by default because a pickle from an untrusted source can run code.

    An unknown or unavailable device or dtype is a ValueError before anything is read. A path that does
    not exist, a folder without ``config.json`` or tokenizer files, weights that do not match the config,
    and a Hub name that cannot be fetched (not found, offline, no connection) are a one-line
    :class:`ModelLoadError` saying which; there is no fallback to another model. An architecture without
    an adapter, and a checkpoint that needs remote code (``auto_map``, ``trust_remote_code``), are an
    :class:`UnsupportedModelError` naming the supported families, raised from ``config.json`` alone.
    """
    from clipalign.models.base import resolve_device, resolve_dtype
    from clipalign.models.checkpoint import CheckpointError

    name = str(name_or_path)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    name = str(MODEL_ALIASES.get(name, name))
    if check_local_path(name) is not None:
        return _load(name, torch_device, torch_dtype, allow_pickle, local_files_only=True)
    try:
        # the local cache first: offline, a Hub request would retry for ~20 s before failing
        return _load(name, torch_device, torch_dtype, allow_pickle, local_files_only=True)
    except (CheckpointError, UnsupportedModelError):
        raise
    except ModelLoadError:
        pass
    return _load(name, torch_device, torch_dtype, allow_pickle, local_files_only=False)


def _load(
    name: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool, local_files_only: bool
) -> ClipAdapter:
    factory = adapter_factory(_model_type(name, local_files_only))
    return factory.from_pretrained(
        name, device=device, dtype=dtype, local_files_only=local_files_only, allow_pickle=allow_pickle
    )


def _model_type(name: str, local_files_only: bool) -> str:
    """The ``model_type`` in the checkpoint's ``config.json`` when an adapter is registered for it, else a
    one-line :class:`UnsupportedModelError`; a config that cannot be fetched or read is a
    :class:`ModelLoadError`."""
    from transformers import PretrainedConfig

    from clipalign.models.errors import model_load_error

    try:
        # the JSON alone: AutoConfig would fetch a remote-code config class, or ask whether to run it
        config, _ = PretrainedConfig.get_config_dict(name, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise model_load_error(name, exc, offline_hint=True) from exc
    return check_supported(name, config, _ADAPTERS)
