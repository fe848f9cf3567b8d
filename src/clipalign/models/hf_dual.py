"""What every Hugging Face dual-encoder adapter shares: loading with clipalign's checks, device and dtype.

Each family's adapter (:mod:`.hf_clip`, :mod:`.hf_siglip`, :mod:`.hf_siglip2`) subclasses
:class:`HFDualEncoder`, names its model and image processor classes, and holds only what differs: its
tokenizer, padding, pooling and image side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from clipalign.models.base import model_load_error, resolve_device, resolve_dtype
from clipalign.models.checkpoint import (
    CheckpointError,
    check_local_files,
    check_tokenizer_size,
    load_checkpoint,
)

ModelT = TypeVar("ModelT", bound=PreTrainedModel)
AdapterT = TypeVar("AdapterT", bound="HFDualEncoder[Any]")


class HFDualEncoder(Generic[ModelT]):
    """A HF dual-encoder model with its fast tokenizer and PIL image processor, on one device.

    Weights stay fp32 (``dtype`` fp16/bf16 is autocast on the image tower); the text tower must use eager
    attention (CLIP4DM reads its maps) and the tokenizer must be fast (character offsets).
    """

    model_class: ClassVar[type[PreTrainedModel]]
    """The transformers class of the whole model (``CLIPModel``, ``SiglipModel``...)."""
    processor_class: ClassVar[Any]
    """The image processor's PIL-backend class (no torchvision, the same pixels on every machine)."""
    family: ClassVar[str]
    """The config's ``model_type``, also the adapter's ``name`` when none is given."""
    offline_hint: ClassVar[bool] = False
    """Whether a Hub failure names the bundled synthetic CLIP as an offline alternative."""

    def __init__(
        self,
        model: ModelT,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        name: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        impl = model.config.text_config._attn_implementation
        if impl != "eager":
            raise ValueError(
                f"text attention implementation is {impl!r}; attention maps need 'eager': load the model "
                f"with {type(model).__name__}.from_pretrained(..., attn_implementation='eager')"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(f"{type(self).__name__} needs a fast tokenizer (offset mapping)")
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name or self.family
        param = next(model.parameters())
        self.device = param.device
        self.weight_dtype = param.dtype
        self.dtype = dtype or param.dtype

    @classmethod
    def load_tokenizer(cls, name: str, local_files_only: bool) -> PreTrainedTokenizerBase:
        """The checkpoint's tokenizer, as a fast one (``AutoTokenizer`` unless the family says otherwise)."""
        return AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)

    @classmethod
    def from_pretrained(
        cls: type[AdapterT],
        name_or_path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "fp32",
        local_files_only: bool = False,
        allow_pickle: bool = False,
    ) -> AdapterT:
        """Load model, tokenizer and image processor from a Hub name or a local directory.

        ``local_files_only`` uses the Hugging Face cache without asking the Hub. Weights must be
        safetensors unless ``allow_pickle`` (then a ``pytorch_model.bin`` is read weights-only) and must
        match the config; a folder without tokenizer files is refused (see :mod:`.checkpoint`). The model
        is put in eval mode with gradients off for its parameters (attribution differentiates activations).
        """
        name = str(name_or_path)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        check_local_files(name, allow_pickle)
        # weights stay fp32: half precision is autocast on the vision tower (see image_embeddings)
        model = load_checkpoint(cls.model_class, name, torch.float32, local_files_only, allow_pickle)
        try:
            tokenizer = cls.load_tokenizer(name, local_files_only)
            processor = cls.processor_class.from_pretrained(name, local_files_only=local_files_only)
        except CheckpointError:
            raise
        except (OSError, ValueError) as exc:
            raise model_load_error(name, exc, offline_hint=cls.offline_hint) from exc
        embeddings = model.get_submodule("text_model.embeddings.token_embedding")
        if not isinstance(embeddings, torch.nn.Embedding):
            raise TypeError(f"{name}: the text token embeddings are not an nn.Embedding")
        check_tokenizer_size(name, len(tokenizer), embeddings.num_embeddings)
        # both towers load eager (CLIP4DM reads the text tower's maps, and interactions below the last
        # block differentiate vision blocks in forward mode, which SDPA lacks on CPU); blocks whose maps
        # are not needed run PyTorch's fused attention instead
        module: torch.nn.Module = model  # PreTrainedModel.to's @wraps hides its signature from mypy
        module.to(torch_device).eval().requires_grad_(False)
        return cls(model, tokenizer, processor, name=name, dtype=torch_dtype)

    @property
    def num_text_layers(self) -> int:
        return int(self.model.config.text_config.num_hidden_layers)

    @property
    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def num_vision_layers(self) -> int:
        return int(self.model.config.vision_config.num_hidden_layers)
