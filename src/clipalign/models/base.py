"""The adapter protocol: the only interface attribution code uses to talk to a CLIP-family model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from clipalign.images.geometry import ImageGeometry
from clipalign.text.alignment import EncodedCaption

PositionJVPs = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""(points (M, S, d), change (S, d), chunk) → (M, S, D): row i is the JVP of an embedding at point m along
the change kept at position i only, evaluated ``chunk`` tangents at a time."""

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A model, tokenizer or image processor could not be loaded (name unknown, offline, missing files)."""


def model_load_error(name: str, exc: BaseException) -> ModelLoadError:
    """A one-line error saying why loading failed and how to point ``--model`` at a local directory."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = (
        f"the path {name!r} does not exist"
        if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists()
        else "if you are offline or the Hub is unreachable, download it where you can "
        f"(`hf download {name} --local-dir DIR`) and pass --model DIR (HF_HUB_OFFLINE=1 fails at once)"
    )
    return ModelLoadError(f"cannot load model {name!r}: {reason} — {hint}")


@dataclass
class TextInputs:
    """A padded batch of encoded captions on the model's device."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pool_index: torch.Tensor


@dataclass
class TextOutput:
    """Text embeddings (unnormalised, fp32 or wider) and, when asked, each layer's post-softmax attention."""

    embeds: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None


@runtime_checkable
class ClipAdapter(Protocol):
    """What attribution needs from a dual-encoder model; one implementation per model family."""

    name: str
    device: torch.device
    dtype: torch.dtype

    @property
    def num_text_layers(self) -> int: ...

    @property
    def max_text_tokens(self) -> int: ...

    def encode_captions(self, captions: Sequence[str], template: str) -> list[EncodedCaption]: ...

    def collate(self, encoded: Sequence[EncodedCaption]) -> TextInputs: ...

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor: ...

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def text_embeddings(self, inputs: TextInputs, output_attentions: bool = False) -> TextOutput: ...


@runtime_checkable
class InteractionAdapter(ClipAdapter, Protocol):
    """What second-order interactions need in addition: hidden states at a block and the network above it."""

    @property
    def num_vision_layers(self) -> int: ...

    @property
    def patch_grid(self) -> tuple[int, int]: ...

    def image_geometry(self, width: int, height: int) -> ImageGeometry: ...

    def text_reference_ids(self, length: int) -> list[int]: ...

    def text_states(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor: ...

    def text_head(self, states: torch.Tensor, layer: int, pool_index: int) -> torch.Tensor: ...

    def image_states(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor: ...

    def image_head(self, states: torch.Tensor, layer: int) -> torch.Tensor: ...

    def text_head_jvps(
        self, layer: int, pool_index: int, post: Callable[[torch.Tensor], torch.Tensor]
    ) -> PositionJVPs | None:
        """A faster :data:`PositionJVPs` of ``post(text_head(·, layer, pool_index))``, or None if none."""
        ...

    def image_head_jvps(
        self, layer: int, post: Callable[[torch.Tensor], torch.Tensor]
    ) -> PositionJVPs | None:
        """A faster :data:`PositionJVPs` of ``post(image_head(·, layer))``, or None if none."""
        ...


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept ``fp32``/``fp16``/``bf16`` or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}") from None
