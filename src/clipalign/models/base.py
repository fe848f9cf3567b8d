"""The adapter protocol: the only interface attribution code uses to talk to a CLIP-family model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from clipalign.images.geometry import ImageGeometry
from clipalign.models.errors import ModelLoadError as ModelLoadError
from clipalign.models.errors import model_load_error as model_load_error
from clipalign.settings import TextReference
from clipalign.text.alignment import EncodedCaption

PositionJVPs = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""(points (M, S, d), changes (M, S, d), chunk) → (M, S, D): row i of point m is the JVP of an embedding at
point m along that point's change kept at position i only, evaluated ``chunk`` tangents at a time. Each point
has its own change, so the path points of several pairs (each its own x − r) go through in one call; a
change (S, d) is shared by every point."""

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TextInputs:
    """A right-padded batch of encoded captions on the model's device, built by ``ClipAdapter.collate``."""

    input_ids: torch.Tensor
    """(B, T) int64 token ids, T the longest caption of the batch; padding uses the tokenizer's pad id."""
    attention_mask: torch.Tensor
    """(B, T) int64: 1 on each caption's tokens, 0 on its padding."""
    pool_index: torch.Tensor
    """(B,) int64: per row, the position whose output the text embedding is read from (CLIP: EOT)."""


@dataclass
class TextOutput:
    """What ``ClipAdapter.text_embeddings`` returns for a :class:`TextInputs` batch."""

    embeds: torch.Tensor
    """(B, D) text embeddings, unnormalised, in fp32 or wider (half-precision models are upcast)."""
    attentions: tuple[torch.Tensor, ...] | None = None
    """When asked: one post-softmax (B, heads, T, T) map per text block, first to last (all blocks, or the
    last n when n was asked for), in the text tower's dtype, part of the autograd graph of ``embeds``
    when grad is enabled; None otherwise."""


@runtime_checkable
class ClipAdapter(Protocol):
    """What attribution needs from a dual-encoder model; one implementation per model family.

    A new family (e.g. SigLIP) registers itself with :func:`clipalign.models.register_adapter` under
    its config's ``model_type`` and keeps every shape and dtype below; what differs from CLIP (tokens,
    pooling, padding) is noted on the member that must handle it.
    """

    name: str
    """The Hub name or local directory the model was loaded from; written into reports."""
    device: torch.device
    """Where the parameters live; input tensors must be there (``collate`` and ``preprocess`` see to it)."""
    dtype: torch.dtype
    """The compute dtype asked for (fp32, fp16 or bf16). Half precision is mixed: the image tower runs under
    autocast in it while weights, pixel values, the text tower and every embedding stay fp32 (the text
    tower's ∂cos/∂A decide the flags and do not survive bf16); a model built in half precision computes
    in its weights' dtype throughout."""

    @property
    def num_text_layers(self) -> int:
        """Number of text-encoder blocks, i.e. of attention maps in ``TextOutput.attentions``."""
        ...

    @property
    def max_text_tokens(self) -> int:
        """The text context in tokens, special tokens included (77 for CLIP, 64 for SigLIP)."""
        ...

    def encode_captions(self, captions: Sequence[str], template: str) -> list[EncodedCaption]:
        """One :class:`EncodedCaption` per caption: ``template + caption`` with the family's special tokens,
        whole words cut past ``max_text_tokens``, ``pool_index`` the pooled position (CLIP: EOT; SigLIP
        pools its last position, not EOT, so must pad to the full context first). Raises CaptionError.
        """
        ...

    def collate(self, encoded: Sequence[EncodedCaption]) -> TextInputs:
        """Pad a batch into :class:`TextInputs` on ``device``. Padding must not change any embedding: CLIP's
        causal mask hides it from EOT; a bidirectional encoder must mask it or pad to a fixed length."""
        ...

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Pixel values (B, 3, H, W) float32 on the CPU, resized, cropped and normalised exactly as the
        family's image processor does (the crop must match ``image_geometry``). Called from worker threads
        to prepare batches ahead of the model, so it must be thread-safe, and a batch must equal its images
        processed one at a time and stacked."""
        ...

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``pixel_values(images)`` moved to ``device`` (non-blocking when pinned), in the dtype the image
        tower takes them in (fp32 unless the model was built in half precision; see ``dtype``)."""
        ...

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, D) image embeddings, unnormalised, fp32 or wider, in the space of the text embeddings
        (SigLIP: the attention-pooling head's output, as it has no projection)."""
        ...

    def text_embeddings(self, inputs: TextInputs, output_attentions: bool | int = False) -> TextOutput:
        """Embeddings pooled at ``inputs.pool_index``; with ``output_attentions`` (and grad enabled) each text
        block's attention, differentiable although the parameters are frozen: CLIP4DM takes ∂cos/∂A and
        reads row ``pool_index``, so that row must be the one the embedding is computed from. A number n
        in 1..``num_text_layers`` returns only the last n maps (the blocks below build no autograd graph
        and may use fused attention); a larger one is a ValueError."""
        ...


@runtime_checkable
class StatesAdapter(ClipAdapter, Protocol):
    """What second-order interactions need in addition, whatever the patch grid: hidden states at a block
    and the network above it. :class:`InteractionAdapter` adds one grid for every image,
    :class:`PerImageGridAdapter` a grid per image.

    Heads must be differentiable by ``torch.func.jvp`` under ``vmap`` (no in-place writes to their input,
    no data-dependent control flow), and ``text_head(text_states(ids, L), L, p)`` must reproduce
    ``text_embeddings`` to rounding (images likewise): the completeness terms are those cosines.
    """

    @property
    def num_vision_layers(self) -> int:
        """Number of vision-encoder blocks; ``image_states``/``image_head`` take a layer in 0..this − 1."""
        ...

    def image_geometry(self, width: int, height: int) -> ImageGeometry:
        """How ``preprocess`` maps a ``width``×``height`` image to the model input (resize, centre crop),
        so that patch scores can be drawn on the original image."""
        ...

    def text_reference_ids(self, length: int, kind: TextReference = "exclip") -> list[int]:
        """``length`` token ids of the caption-free text reference, pooled at the input's ``pool_index``:
        CLIP's is SOT, one filler token, EOT, then filler (the filler: :meth:`text_reference_token`);
        a family with other special tokens defines its own."""
        ...

    def text_reference_token(self, kind: TextReference = "exclip") -> tuple[int, str]:
        """(id, vocabulary string) of the reference's filler token: for ``exclip`` id 0 (CLIP's ``!``),
        as exCLIP builds it whatever the tokenizer pads with; for ``pad`` the tokenizer's pad token."""
        ...

    def text_states(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states (B, T, d) in ``dtype`` at the input of text block ``layer`` (0-based) for unpadded
        ids (B, T) int64; ``text_head(·, layer, ·)`` continues from them."""
        ...

    def text_head(self, states: torch.Tensor, layer: int, pool_index: int) -> torch.Tensor:
        """(M, D) text embeddings, unnormalised, fp32 or wider, from states (M, T, d) entering block
        ``layer``: the remaining blocks, final norm and projection (SigLIP: its head), at ``pool_index``."""
        ...

    @property
    def image_prefix(self) -> int:
        """Number of leading non-patch positions in ``image_states`` (CLIP: 1, the class token; SigLIP: 0).
        Interactions sum those columns into ``cls`` (empty when 0) and read the rest as the patch grid."""
        ...

    def image_states(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states (B, image_prefix + rows·cols, d) in ``dtype`` at the input of vision block
        ``layer``: the ``image_prefix`` non-patch positions (CLIP: the class token), then the patches
        row-major."""
        ...

    def image_head(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        """(M, D) image embeddings, unnormalised, fp32 or wider, from states (M, S, d) entering vision block
        ``layer`` (CLIP: pooled at the class token; SigLIP: its attention-pooling head)."""
        ...

    def text_head_jvps(
        self, layer: int, pool_index: int, post: Callable[[torch.Tensor], torch.Tensor]
    ) -> PositionJVPs | None:
        """A faster :data:`PositionJVPs` of ``post(text_head(·, layer, pool_index))`` with the same numbers,
        or None to use the generic ``torch.func`` JVPs (always correct, slower)."""
        ...

    def image_head_jvps(
        self, layer: int, post: Callable[[torch.Tensor], torch.Tensor]
    ) -> PositionJVPs | None:
        """A faster :data:`PositionJVPs` of ``post(image_head(·, layer))`` with the same numbers, or None to
        use the generic ``torch.func`` JVPs (always correct, slower)."""
        ...


@runtime_checkable
class InteractionAdapter(StatesAdapter, Protocol):
    """A :class:`StatesAdapter` whose every input has one patch grid (CLIP, SigLIP)."""

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of patches in the model input; ``image_states`` holds rows·cols patch positions."""
        ...


@runtime_checkable
class PerImageGridAdapter(StatesAdapter, Protocol):
    """A :class:`StatesAdapter` whose images each have their own patch grid (SigLIP 2 NaFlex): its
    ``image_states`` takes images of one grid, and the all-zero reference image is per grid."""

    def patch_grids(self, pixel_values: torch.Tensor) -> list[tuple[int, int]]:
        """(rows, cols) of each image of a batch of preprocessed pixel values."""
        ...

    def reference_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The all-zero image at each image's own grid, in the form of ``pixel_values``."""
        ...


_DEVICE_HELP = "use cpu, cuda, cuda:N or mps"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available, else CPU; an unknown or unavailable device is a ValueError,
    raised before anything is loaded rather than deep inside ``model.to``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}: {_DEVICE_HELP}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {str(device)!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: MPS is not available on this machine")
    elif resolved.type != "cpu":
        raise ValueError(f"unknown device {str(device)!r}: {_DEVICE_HELP}")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """Accept ``fp32``/``fp16``/``bf16``, ``auto`` or a torch dtype. ``auto`` is bf16 on a CUDA device that
    supports it (``device`` as :func:`resolve_device` reads it), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        where = resolve_device(device)
        if where.type != "cuda":
            return torch.float32
        with torch.cuda.device(where):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or 'auto', got {dtype!r}") from None
