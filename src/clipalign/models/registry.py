"""Registry of model families: a config's ``model_type`` → the adapter class that knows its internals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from transformers import PretrainedConfig

from clipalign.checkpoints import SYNTHETIC_CLIP, SYNTHETIC_SIGLIP
from clipalign.models.base import ClipAdapter, ModelLoadError, model_load_error, resolve_device, resolve_dtype
from clipalign.models.checkpoint import CheckpointError
from clipalign.models.errors import UnsupportedModelError, check_local_path, check_supported
from clipalign.models.hf_clip import HFCLIPAdapter
from clipalign.models.hf_siglip import SIGLIP2_NEEDS, SIGLIP_NEEDS, HFSiglipAdapter, Siglip2NaFlexRefusal
from clipalign.settings import DEFAULT_MODEL

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


_ADAPTERS: dict[str, AdapterFactory] = {
    "clip": HFCLIPAdapter,
    "siglip": HFSiglipAdapter,
    "siglip2": Siglip2NaFlexRefusal,
}
_NEEDS: dict[str, str] = {
    "clip": (
        "config.json, model.safetensors (pytorch_model.bin only with --allow-pickle), the CLIP BPE "
        "tokenizer (vocab.json + merges.txt, or tokenizer.json), preprocessor_config.json; no extra "
        "packages. Any text context length (max_position_embeddings: 77, 248 for LongCLIP)"
    ),
    "siglip": SIGLIP_NEEDS,
    "siglip2": SIGLIP2_NEEDS,
}


def register_adapter(model_type: str, factory: AdapterFactory, *, needs: str | None = None) -> None:
    """Make :func:`load_model` use ``factory`` for checkpoints whose config has this ``model_type``;
    ``needs`` says in a line which files and extra packages such a checkpoint needs (``clipalign models``
    shows it)."""
    _ADAPTERS[model_type] = factory
    if needs is not None:
        _NEEDS[model_type] = needs


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


@dataclass(frozen=True)
class Family:
    """A supported model family, as ``clipalign models`` describes it."""

    model_type: str
    adapter: str
    needs: str


def families() -> list[Family]:
    """Every registered family: its ``model_type``, the adapter class, and what its checkpoints need (the
    adapter's docstring summary when it was registered without ``needs``)."""
    described = []
    for model_type in supported_model_types():
        factory = _ADAPTERS[model_type]
        kind = factory if isinstance(factory, type) else type(factory)
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
    factory = _ADAPTERS[_model_type(name, local_files_only)]
    return factory.from_pretrained(
        name, device=device, dtype=dtype, local_files_only=local_files_only, allow_pickle=allow_pickle
    )


def _model_type(name: str, local_files_only: bool) -> str:
    """The ``model_type`` in the checkpoint's ``config.json`` when an adapter is registered for it, else a
    one-line :class:`UnsupportedModelError`; a config that cannot be fetched or read is a
    :class:`ModelLoadError`."""
    try:
        # the JSON alone: AutoConfig would fetch a remote-code config class, or ask whether to run it
        config, _ = PretrainedConfig.get_config_dict(name, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise model_load_error(name, exc, offline_hint=True) from exc
    return check_supported(name, config, _ADAPTERS)
