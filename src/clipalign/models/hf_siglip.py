"""Adapter for Hugging Face ``SiglipModel`` checkpoints: SigLIP and the fixed-resolution SigLIP 2 models.

SigLIP 2 ships in two forms. The fixed-resolution checkpoints (``google/siglip2-base-patch16-224`` and
the other ``-224/-256/-384/-512`` ones) are ``SiglipModel`` with a Gemma tokenizer: config ``model_type``
``siglip``, so :class:`HFSiglipAdapter` loads them. The NaFlex ones (``google/siglip2-*-naflex``,
``Siglip2Model``, ``model_type`` ``siglip2``) load with :mod:`clipalign.models.hf_siglip2`'s adapter,
which shares :class:`SiglipTowers` (the text side and the attention-pooling head) with this one.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np
import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipTextModel,
    SiglipVisionModel,
)
from transformers.convert_slow_tokenizer import import_protobuf
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.siglip.modeling_siglip import SiglipEncoder, SiglipEncoderLayer
from transformers.models.siglip2.modeling_siglip2 import (
    Siglip2Encoder,
    Siglip2EncoderLayer,
    Siglip2TextModel,
    Siglip2VisionModel,
)
from transformers.utils import cached_file

from clipalign.images.geometry import ImageGeometry
from clipalign.models.base import PositionJVPs, TextInputs, TextOutput
from clipalign.models.checkpoint import CheckpointError
from clipalign.models.hf_clip import _at_least_fp32, _fused_block, _last_block_jvps, text_tower
from clipalign.models.hf_dual import HFDualEncoder, ModelT
from clipalign.settings import TextReference
from clipalign.text.alignment import EncodedCaption, encode_captions

SPIECE_FILE = "spiece.model"
"""SigLIP's SentencePiece model; HF reads it with the slow ``SiglipTokenizer`` only."""
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
EXCLIP_REFERENCE_TOKEN_ID = 0
"""As for CLIP, exCLIP's filler is token id 0 (``<pad>`` in SigLIP's and Gemma's vocabularies)."""
_PUNCTUATION = Regex("[" + re.escape(string.punctuation) + "]")


def spiece_tokenizer(
    spiece: str | Path,
    *,
    do_lower_case: bool = True,
    eos_token: str = "</s>",
    pad_token: str = "</s>",
    unk_token: str = "<unk>",
    model_max_length: int = 64,
) -> PreTrainedTokenizerFast:
    """A fast tokenizer (character offsets) that tokenizes as HF's slow ``SiglipTokenizer`` does.

    ``SiglipTokenizer`` canonicalises the text before SentencePiece (big_vision's prompt
    canonicalisation): lower-cased (``do_lower_case``, true in every Google checkpoint), ASCII
    punctuation removed, whitespace runs collapsed to one space, ends stripped; then the SentencePiece
    Unigram model with a ``▁`` before every word, and ``</s>`` appended. Here each of those steps is a
    ``tokenizers`` normaliser, so offsets map every token back to the caption as written (a word that
    is only punctuation has no token). The vocabulary, scores and normalisation map are read from the
    ``spiece.model`` protobuf, which needs ``protobuf`` but not ``sentencepiece``.
    """
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(spiece).read_bytes())
    if proto.trainer_spec.model_type != 1:
        raise ValueError(
            f"{spiece} is not a SentencePiece Unigram model (model_type {proto.trainer_spec.model_type})"
        )
    backend = Tokenizer(
        Unigram(
            [(p.piece, p.score) for p in proto.pieces],
            unk_id=proto.trainer_spec.unk_id,
            byte_fallback=proto.trainer_spec.byte_fallback,
        )
    )
    steps: list[normalizers.Normalizer] = [normalizers.Replace("▁", " ")]
    if do_lower_case:
        steps.append(normalizers.Lowercase())
    steps += [
        normalizers.Replace(_PUNCTUATION, ""),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ]
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    eos_id = backend.token_to_id(eos_token)
    if eos_id is None:
        raise ValueError(f"{spiece} has no {eos_token!r} token")
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos_token}", special_tokens=[(eos_token, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        model_max_length=model_max_length,
    )


def load_siglip_tokenizer(name: str, local_files_only: bool) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer as a fast one: a ``SiglipTokenizer`` checkpoint (``spiece.model``) is
    rebuilt by :func:`spiece_tokenizer` from its files and settings; any other (SigLIP 2's Gemma) is
    loaded by ``AutoTokenizer``, lower-casing added when its config asks for ``do_lower_case``."""
    config_path = cached_file(
        name,
        TOKENIZER_CONFIG_FILE,
        local_files_only=local_files_only,
        _raise_exceptions_for_missing_entries=False,
    )
    config = json.loads(Path(config_path).read_text()) if config_path else {}
    if config.get("tokenizer_class") == "SiglipTokenizer":
        spiece = cached_file(name, SPIECE_FILE, local_files_only=local_files_only)
        if spiece is None:
            raise CheckpointError(f"no {SPIECE_FILE} for the SiglipTokenizer of {name}")
        settings = {
            k: config[k] for k in ("eos_token", "pad_token", "unk_token") if isinstance(config.get(k), str)
        }
        return spiece_tokenizer(
            spiece,
            do_lower_case=bool(config.get("do_lower_case", True)),
            model_max_length=int(config.get("model_max_length", 64)),
            **settings,
        )
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if config.get("do_lower_case") and backend is not None and "Lowercase" not in str(backend.normalizer):
        backend.normalizer = normalizers.Sequence(
            [normalizers.Lowercase(), *([backend.normalizer] if backend.normalizer else [])]
        )
    return tokenizer


def special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (SigLIP: none and ``</s>``), read off by
    tokenizing a word with and without its special tokens, so whatever the checkpoint's tokenizer is
    configured to add (Gemma's ``add_bos_token``/``add_eos_token``) is followed."""
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a")["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ValueError(f"{type(tokenizer).__name__} changes a text's tokens when it adds special tokens")


def _blocks(encoder: SiglipEncoder | Siglip2Encoder) -> list[CLIPEncoderLayer]:
    """The encoder's blocks. A ``SiglipEncoderLayer`` (and SigLIP 2's) has ``CLIPEncoderLayer``'s layout
    (``layer_norm1``, ``self_attn`` with ``q/k/v/out_proj``, ``layer_norm2``, ``mlp``) and the same
    forward, so it is typed as one and HF CLIP's block helpers (fused attention, a block with its map)
    apply to it."""
    kinds = (SiglipEncoderLayer, Siglip2EncoderLayer)
    blocks = [block for block in encoder.layers if isinstance(block, kinds)]
    if len(blocks) != len(encoder.layers):
        raise TypeError("every block of a SigLIP encoder must be a SiglipEncoderLayer")
    return cast(list[CLIPEncoderLayer], blocks)


class SiglipTowers(HFDualEncoder[ModelT]):
    """What SigLIP and SigLIP 2 (fixed resolution and NaFlex) share: the text side (captions padded to the
    full context with the pad token and read without an attention mask, pooled at the last position,
    then the linear ``head``; the tokenizer as :func:`load_siglip_tokenizer` builds it) and the image
    side above the patch embeddings (no class token, the attention-pooling head). The
    :class:`HFSiglipAdapter` docstring says why."""

    def __init__(
        self,
        model: ModelT,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        name: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(model, tokenizer, image_processor, name, dtype)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: SigLIP pads every caption to its full context")
        self._prefix, self._suffix = special_ids(tokenizer)

    @classmethod
    def load_tokenizer(cls, name: str, local_files_only: bool) -> PreTrainedTokenizerBase:
        return load_siglip_tokenizer(name, local_files_only)

    @property
    def _text_model(self) -> SiglipTextModel | Siglip2TextModel:
        """The text tower (the model builds it untyped through ``_from_config``)."""
        return cast("SiglipTextModel | Siglip2TextModel", self.model.get_submodule("text_model"))

    def encode_captions(self, captions: Sequence[str], template: str) -> list[EncodedCaption]:
        """``template + caption`` with the tokenizer's special tokens, whole words cut past the context,
        then right-padded to the full context with the pad token; ``pool_index`` the last position."""
        tok, limit = self.tokenizer, self.max_text_tokens
        pad_id = int(tok.pad_token_id)
        pad = str(tok.convert_ids_to_tokens(pad_id))
        encoded = []
        for enc in encode_captions(
            tok,
            captions,
            template=template,
            prefix_ids=self._prefix,
            suffix_ids=self._suffix,
            max_length=limit,
        ):
            fill = limit - len(enc.input_ids)
            encoded.append(
                replace(
                    enc,
                    input_ids=[*enc.input_ids, *[pad_id] * fill],
                    tokens=[*enc.tokens, *[pad] * fill],
                    token_spans=[*enc.token_spans, *[(0, 0)] * fill],
                    token_word=np.concatenate([enc.token_word, np.full(fill, -1, dtype=np.int64)]),
                    pool_index=limit - 1,
                )
            )
        return encoded

    def collate(self, encoded: Sequence[EncodedCaption]) -> TextInputs:
        """Stack captions already padded to the full context; the mask is all ones, since the model reads
        its padding (it was trained so, and runs here without an attention mask)."""
        limit = self.max_text_tokens
        if any(len(e.input_ids) != limit for e in encoded):
            raise ValueError(f"SigLIP captions must be padded to {limit} tokens: use encode_captions")
        ids = torch.tensor([e.input_ids for e in encoded], dtype=torch.long)
        pool = torch.tensor([e.pool_index for e in encoded], dtype=torch.long)
        return TextInputs(ids.to(self.device), torch.ones_like(ids).to(self.device), pool.to(self.device))

    def text_embeddings(self, inputs: TextInputs, output_attentions: bool | int = False) -> TextOutput:
        """The head's output at ``pool_index`` (the last position), without an attention mask, in the
        weights' dtype (fp32 unless the model was built in half precision).

        With ``output_attentions`` (a number n: the last n blocks, True: all) those blocks run HF's eager
        attention and return their maps, differentiable when grad is enabled; the blocks below run fused
        attention without autograd.
        """
        text = self._text_model
        # collate's mask is all ones: the eager blocks see every position, as HF's unmasked tower does
        hidden, attentions = text_tower(
            text.embeddings, _blocks(text.encoder), inputs, output_attentions, causal=False
        )
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), inputs.pool_index]
        embeds = _at_least_fp32(text.head(text.final_layer_norm(pooled)))
        return TextOutput(embeds, tuple(attentions) if output_attentions else None)

    def text_reference_ids(self, length: int, kind: TextReference = "exclip") -> list[int]:
        """exCLIP's reference in SigLIP's framing: the tokenizer's prefix (none), one filler token, its
        suffix (``</s>``), then filler up to ``length`` (the full context: the encoder is bidirectional,
        so the filler after the suffix reaches the pooled last position, as pads do for a caption)."""
        filler, _ = self.text_reference_token(kind)
        core = [*self._prefix, filler, *self._suffix]
        if length < len(core):
            raise ValueError(f"the text reference needs at least {len(core)} positions, got {length}")
        return core + [filler] * (length - len(core))

    def text_reference_token(self, kind: TextReference = "exclip") -> tuple[int, str]:
        """Token id 0 for ``exclip`` (as exCLIP fills, whatever the vocabulary); the pad token for ``pad``."""
        if kind not in get_args(TextReference):
            raise ValueError(f"text reference must be one of {get_args(TextReference)}, got {kind!r}")
        token_id = EXCLIP_REFERENCE_TOKEN_ID if kind == "exclip" else int(self.tokenizer.pad_token_id)
        return token_id, str(self.tokenizer.convert_ids_to_tokens(token_id))

    def text_states(self, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states entering text block ``layer`` (B, T, d), no mask (as ``text_embeddings``)."""
        hidden = self._text_model.embeddings(input_ids=input_ids)
        for block in _blocks(self._text_model.encoder)[:layer]:
            hidden = block(hidden, None)
        return hidden

    def text_head(self, states: torch.Tensor, layer: int, pool_index: int) -> torch.Tensor:
        """Text embedding (unnormalised) from the states entering block ``layer``: the blocks from there,
        the final layer norm and the head, at ``pool_index``."""
        text = self._text_model
        for block in _blocks(text.encoder)[layer:]:
            states = block(states, None)
        return _at_least_fp32(text.head(text.final_layer_norm(states[:, pool_index])))

    def text_head_jvps(
        self, layer: int, pool_index: int, post: Callable[[torch.Tensor], torch.Tensor]
    ) -> PositionJVPs | None:
        """HF CLIP's closed-form JVPs (:func:`~clipalign.models.hf_clip._last_block_jvps`) without the
        causal mask: the text tower has CLIP's block layout, then the final norm and the head."""
        text = self._text_model
        return _last_block_jvps(
            _blocks(text.encoder)[layer:], pool_index, False, text.final_layer_norm, text.head, post
        )

    @property
    def _vision_model(self) -> SiglipVisionModel | Siglip2VisionModel:
        """The vision tower (the model builds it untyped through ``_from_config``)."""
        return cast("SiglipVisionModel | Siglip2VisionModel", self.model.get_submodule("vision_model"))

    @property
    def image_prefix(self) -> int:
        """No class token: every position of ``image_states`` is a patch."""
        return 0

    def image_head(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        """Image embedding from the states entering vision block ``layer``: the blocks from there, the
        post layer norm and the attention-pooling head."""
        vision = self._vision_model
        for block in _blocks(vision.encoder)[layer:]:
            states = block(states, None)
        return _at_least_fp32(vision.head(vision.post_layernorm(states)))

    def image_head_jvps(
        self, layer: int, post: Callable[[torch.Tensor], torch.Tensor]
    ) -> PositionJVPs | None:
        """None: the generic ``torch.func`` JVPs through the attention-pooling head."""
        return None


class HFSiglipAdapter(SiglipTowers[SiglipModel]):
    """Wraps a HF ``SiglipModel`` (SigLIP, fixed-resolution SigLIP 2) with a fast tokenizer and the PIL
    image processor. What differs from CLIP, and how it is handled:

    * **Text attention is bidirectional** (no causal mask), so every position, padding included, reaches
      the pooled one. Captions are padded as the checkpoints were trained (big_vision, and HF's
      ``padding="max_length"``): to the full context (64) with the tokenizer's pad token, on the right
      (whatever the tokenizer's ``padding_side``: ``GemmaTokenizer`` defaults to left), and the model
      runs without an attention mask, as in training. Every caption then has the same
      length and batch-mates never meet, so word scores are batch-invariant (tested).
    * **Pooling at the last position** (HF: ``last_hidden_state[:, -1]``, then the linear ``head``),
      usually a pad token, not at EOS: ``pool_index`` is that position (63), so CLIP4DM reads row 63 of
      ∂cos/∂A ⊙ A, the row the embedding is computed from. Interactions report all 64 text rows: pads
      are part of the input and carry interaction mass.
    * **Tokenizers**: SigLIP's ``SiglipTokenizer`` is SentencePiece and slow only (no offsets); it is
      rebuilt as a fast one with the same canonicalisation (lower-case, ASCII punctuation dropped,
      whitespace collapsed; see :func:`spiece_tokenizer`). SigLIP 2's is Gemma's (fast), used as saved:
      its special tokens are the ones it adds (:func:`special_ids`), and it lower-cases only when its
      config says ``do_lower_case`` (Google's model card says SigLIP 2 was trained on lower-cased text;
      we follow the tokenizer as saved rather than guess).
    * **Image side**: no class token (``image_prefix`` 0), the multi-head attention-pooling head (MAP)
      gives the embedding, which has no projection. Images are resized to the square input without a
      crop (aspect ratio not kept), by ``SiglipImageProcessorPil`` on every machine (no torchvision);
      ``image_geometry`` is that non-uniform scaling, so heatmaps land on the right pixels.
    * **Scores**: we attribute the cosine of the two embeddings, as for CLIP, and CLIPScore-style
      scores stay cosine-based; SigLIP's sigmoid logit (scale and bias on that cosine) is not used.
    * **Attention and precision** (as HF CLIP's adapter): weights stay fp32; ``image_embeddings`` runs
      every vision block on PyTorch's fused attention (SDPA), under autocast in ``dtype`` for fp16/bf16;
      the text tower runs in fp32, fused below the attributed blocks and eager in them (their maps are
      CLIP4DM's input). Interactions run the blocks as HF does (eager: forward-mode JVPs through the
      vision blocks, ``torch.func.jvp``, which SDPA lacks on CPU). ``text_head_jvps`` is HF CLIP's
      closed form without the causal mask; ``image_head_jvps`` returns None, so the image side takes the
      generic JVPs (no closed form is derived for the attention-pooling head).
    """

    model_class = SiglipModel
    processor_class = SiglipImageProcessorPil
    family = "siglip"

    def __init__(
        self,
        model: SiglipModel,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: SiglipImageProcessorPil,
        name: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(model, tokenizer, image_processor, name, dtype)
        if not model.vision_model.config.vision_use_head:
            raise ValueError("the vision tower has no attention-pooling head (vision_use_head=False)")
        cfg = model.vision_model.config
        side, patch = cfg.image_size, cfg.patch_size
        if not isinstance(side, int) or not isinstance(patch, int):
            raise ValueError(f"a square patch grid needs int image_size and patch_size: {side!r}, {patch!r}")
        size = image_processor.size
        if (size.get("height"), size.get("width")) != (side, side):
            raise ValueError(f"the image processor resizes to {dict(size)}, the model expects {side}×{side}")
        self._grid = (side // patch, side // patch)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, 3, H, W) float32 on the CPU, as ``SiglipImageProcessorPil`` gives them (resize, no crop)."""
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.float()

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.pixel_values(images)
        return pixels.to(self.device, self.weight_dtype, non_blocking=pixels.is_pinned())

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The attention-pooling head's output (SigLIP has no projection), every block on fused attention;
        in half precision under autocast (matmuls in ``dtype``, residual stream and norms in fp32)."""
        vision = self._vision_model
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != self.weight_dtype):
            hidden = vision.embeddings(pixel_values)
            for block in _blocks(vision.encoder):
                hidden = _fused_block(block, hidden, causal=False)
            return _at_least_fp32(vision.head(vision.post_layernorm(hidden)))

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self._grid

    def image_geometry(self, width: int, height: int) -> ImageGeometry:
        """The processor resizes any image to the square input (no crop, aspect ratio not kept)."""
        size = self.image_processor.size
        resized = (int(size["width"]), int(size["height"]))
        return ImageGeometry((width, height), resized, (0, 0, *resized))

    def image_states(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states entering vision block ``layer`` (B, rows·cols, d): patches only, row-major."""
        vision = self._vision_model
        hidden = vision.embeddings(pixel_values)
        for block in _blocks(vision.encoder)[:layer]:
            hidden = block(hidden, None)
        return hidden
