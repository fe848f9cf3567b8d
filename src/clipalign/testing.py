"""Offline stand-ins for tests, benchmarks, tools and docstring examples: seeded random CLIP checkpoints.

Speed and memory depend on the architecture, not on the weights, so a random B/32 measures what a real
one costs; a tiny one exercises every code path in milliseconds. :func:`tiny_model` builds and loads one
in one call, with the CLIP tokenizer files that ship in :mod:`clipalign.checkpoints`, so an example needs
no download; :func:`example_image` draws a picture to score. :func:`cpu_model` names the CPU that
benchmarks and the training tool record beside their timings.
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, ImageDraw
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionConfig,
    Siglip2Config,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    Siglip2VisionConfig,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipVisionConfig,
)

from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.models import ClipAdapter, load_model

CLIP_VOCAB_SIZE = 49408
CLIP_BOS, CLIP_EOS = 49406, 49407


def tiny_clip_config(
    hidden_size: int = 32,
    layers: int = 4,
    heads: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 16,
    max_positions: int = 77,
) -> CLIPConfig:
    """A small CLIP architecture with the real 49,408-token vocabulary and a 77-token context
    (``max_positions=248`` for a long-context CLIP such as a LongCLIP conversion)."""
    text = {
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": max_positions,
        "bos_token_id": CLIP_BOS,
        "eos_token_id": CLIP_EOS,
        "pad_token_id": CLIP_EOS,
    }
    vision = {
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def save_random_clip(
    out_dir: str | Path, config: CLIPConfig, tokenizer_dir: str | Path, seed: int = 0
) -> Path:
    """Write a seeded random ``CLIPModel`` (safetensors), the tokenizer and a matching image processor."""
    vision = config.vision_config
    if not isinstance(vision, CLIPVisionConfig):
        raise TypeError(f"config.vision_config must be a CLIPVisionConfig, got {type(vision).__name__}")
    out = Path(out_dir)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    size = vision.image_size
    CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(out)
    return out


def tiny_model(directory: str | Path | None = None, *, seed: int = 0, **config: int) -> ClipAdapter:
    """A seeded random tiny CLIP, written with :func:`save_random_clip` and loaded on CPU, offline.

    ``config`` overrides :func:`tiny_clip_config`'s arguments (``layers=2``, ``image_size=64`` ...); the
    tokenizer is the real CLIP one shipped with the package. The checkpoint is written to ``directory``
    when given (and kept there), else to a temporary directory that is removed once the model is loaded
    (the adapter's ``name`` then names a folder that is gone). The same seed and config give the same
    weights, so examples and tests can print exact numbers.

    >>> from PIL import Image
    >>> from clipalign.testing import tiny_model
    >>> model = tiny_model(seed=0, layers=2)
    >>> model.num_text_layers
    2
    >>> model.preprocess([Image.new("RGB", (64, 48))]).shape
    torch.Size([1, 3, 32, 32])
    """
    if directory is not None:
        out = save_random_clip(directory, tiny_clip_config(**config), SYNTHETIC_CLIP, seed=seed)
        return load_model(out, device="cpu")
    with tempfile.TemporaryDirectory(prefix="clipalign-tiny-") as tmp:
        return load_model(save_random_clip(tmp, tiny_clip_config(**config), SYNTHETIC_CLIP, seed=seed), "cpu")


def example_image(width: int = 64, height: int = 48) -> Image.Image:
    """A small deterministic picture for examples: a red ball on green grass under a blue sky.

    >>> example_image().size
    (64, 48)
    """
    image = Image.new("RGB", (width, height), (110, 170, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height * 2 // 3, width, height), fill=(60, 150, 60))
    r = min(width, height) // 5
    cx, cy = width // 2, height * 2 // 3 - r // 2
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(210, 30, 30))
    return image


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo, or what ``platform`` knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


SiglipFamily = Literal["siglip", "siglip2"]
"""Which tokenizer a tiny SigLIP gets: SigLIP's SentencePiece (``spiece.model``, ``SiglipTokenizer``) or
SigLIP 2's Gemma BPE (``tokenizer.json``, ``GemmaTokenizer``); the model is a ``SiglipModel`` either way."""

SIGLIP_TEXT_CONTEXT = 64
_TOKENIZER_TEXT = """
A photo depicts a cup of coke. A snowboarder jumps over a xylophone in the snow.
A street sign with a detour pointing in different directions. The dog runs fast, the cat sleeps.
A red cube on a blue sphere. A white husky and a black dog running in a snow covered forest.
Two people ride bicycles along the beach at sunset while a man walks his small brown dog.
A woman holds an umbrella in the rain next to a yellow taxi on a busy city street at night.
A plate of food with rice, beans and green vegetables sits on a wooden table by the window.
Children play football on the grass of a park; an old tree stands behind them under the clouds.
A large green star on the right, a small purple circle on the left, an orange square at the top,
a pink triangle at the bottom, a cyan diamond and a gray cross in the middle of the picture.
"""
"""The few hundred words the test tokenizers are trained on: the test captions and the synthetic world's."""


def _tokenizer_corpus() -> list[str]:
    """Sentences of :data:`_TOKENIZER_TEXT`, each lower-cased copy too (the SigLIP tokenizers lower-case)."""
    lines = [line.strip() for line in _TOKENIZER_TEXT.strip().splitlines()]
    return [*lines, *(line.lower() for line in lines)] * 4


def _write_spiece_tokenizer(out: Path) -> int:
    """Train a SentencePiece-style Unigram model and write it as SigLIP does: ``spiece.model`` (the
    protobuf HF's slow ``SiglipTokenizer`` reads) and its ``tokenizer_config.json``; also the
    ``tokenizer.json`` of the fast equivalent. Returns the vocabulary size."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import Unigram
    from transformers.convert_slow_tokenizer import import_protobuf

    from clipalign.models.hf_siglip import SPIECE_FILE, spiece_tokenizer

    backend = Tokenizer(Unigram())
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    backend.train_from_iterator(_tokenizer_corpus(), trainer)
    model = json.loads(backend.to_str())["model"]
    proto = import_protobuf().ModelProto()
    for piece, score in model["vocab"]:
        entry = proto.pieces.add()
        entry.piece, entry.score = piece, score
        entry.type = 2 if piece == "<unk>" else 3 if piece in specials else 1  # UNKNOWN, CONTROL, NORMAL
    proto.trainer_spec.model_type = 1  # UNIGRAM
    proto.trainer_spec.unk_id = model["unk_id"]
    proto.normalizer_spec.name = "identity"
    (out / SPIECE_FILE).write_bytes(proto.SerializeToString())
    config = {
        "tokenizer_class": "SiglipTokenizer",
        "do_lower_case": True,
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": SIGLIP_TEXT_CONTEXT,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    spiece_tokenizer(out / SPIECE_FILE).backend_tokenizer.save(str(out / "tokenizer.json"))
    return len(model["vocab"])


def _write_gemma_tokenizer(out: Path) -> int:
    """Train a byte-fallback BPE and save it as SigLIP 2's ``GemmaTokenizer`` (no BOS, EOS appended, as
    the SigLIP 2 checkpoints' tokenizers add). Returns the vocabulary size."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import GemmaTokenizer

    backend = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(_tokenizer_corpus(), trainer)
    model = json.loads(backend.to_str())["model"]
    # (left, right) pairs, as the BPE model takes them (GemmaTokenizer's annotation says strings)
    merges: Any = [tuple(m) for m in model["merges"]]
    tokenizer = GemmaTokenizer(
        vocab=model["vocab"], merges=merges, add_bos_token=False, add_eos_token=True, model_max_length=64
    )
    tokenizer.save_pretrained(out)
    return len(tokenizer)


def tiny_siglip_config(
    vocab_size: int,
    pad_token_id: int,
    eos_token_id: int,
    hidden_size: int = 32,
    layers: int = 4,
    heads: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
) -> SiglipConfig:
    """A small ``SiglipModel`` architecture with a 64-token text context and the attention-pooling head."""
    tower = _tower(hidden_size, layers, heads)
    text = _siglip_text(tower, vocab_size, pad_token_id, eos_token_id)
    vision = {**tower, "image_size": image_size, "patch_size": patch_size}
    return SiglipConfig(text_config=text, vision_config=vision)


def _tower(hidden_size: int, layers: int, heads: int) -> dict[str, int]:
    """The sizes both towers of a tiny SigLIP share (the MLP twice the width)."""
    return {
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    }


def _siglip_text(
    tower: dict[str, int], vocab_size: int, pad_token_id: int, eos_token_id: int
) -> dict[str, Any]:
    """A SigLIP text tower's config: ``tower``'s sizes, the vocabulary, a 64-token context, no BOS."""
    return {
        **tower,
        "vocab_size": vocab_size,
        "max_position_embeddings": SIGLIP_TEXT_CONTEXT,
        "pad_token_id": pad_token_id,
        "eos_token_id": eos_token_id,
        "bos_token_id": None,
    }


def save_random_siglip(
    out_dir: str | Path, family: SiglipFamily = "siglip", seed: int = 0, **config: int
) -> Path:
    """Write a seeded random ``SiglipModel`` (safetensors) with a tokenizer trained here, offline, for
    ``family``, and SigLIP's image processor (resize to the square input, no crop, mean and std 0.5).

    ``config`` overrides :func:`tiny_siglip_config`'s arguments; the vocabulary is the tokenizer's.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _write_spiece_tokenizer(out) if family == "siglip" else _write_gemma_tokenizer(out)
    pad, eos = (1, 1) if family == "siglip" else (0, 1)  # SigLIP pads with </s>; Gemma has <pad> 0, <eos> 1
    cfg = tiny_siglip_config(vocab, pad, eos, **config)
    vision = cfg.vision_config
    if not isinstance(vision, SiglipVisionConfig):
        raise TypeError(f"config.vision_config must be a SiglipVisionConfig, got {type(vision).__name__}")
    torch.manual_seed(seed)
    SiglipModel(cfg).save_pretrained(out)
    size = vision.image_size
    SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(out)
    return out


GEMMA_PAD, GEMMA_EOS = 0, 1
"""The pad and end-of-sequence ids of the Gemma tokenizer :func:`_write_gemma_tokenizer` trains."""


def tiny_siglip2_config(
    vocab_size: int,
    hidden_size: int = 32,
    layers: int = 4,
    heads: int = 4,
    patch_size: int = 8,
    num_patches: int = 16,
) -> Siglip2Config:
    """A small NaFlex ``Siglip2Model``: SigLIP's text tower with a 64-token context, and a vision tower
    whose ``num_patches`` position embeddings (a square grid) are resized to each image's patch grid."""
    tower = _tower(hidden_size, layers, heads)
    text = _siglip_text(tower, vocab_size, GEMMA_PAD, GEMMA_EOS)
    vision = {**tower, "patch_size": patch_size, "num_patches": num_patches}
    return Siglip2Config(text_config=text, vision_config=vision)


def save_random_siglip2(out_dir: str | Path, seed: int = 0, max_num_patches: int = 24, **config: int) -> Path:
    """Write a seeded random NaFlex ``Siglip2Model`` (safetensors) with a Gemma tokenizer trained here,
    offline, and SigLIP 2's NaFlex image processor (aspect ratio kept, at most ``max_num_patches``
    patches of the model's patch size, mean and std 0.5).

    ``config`` overrides :func:`tiny_siglip2_config`'s arguments; the vocabulary is the tokenizer's.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_siglip2_config(_write_gemma_tokenizer(out), **config)
    torch.manual_seed(seed)
    Siglip2Model(cfg).save_pretrained(out)
    vision = cfg.vision_config
    if not isinstance(vision, Siglip2VisionConfig):
        raise TypeError(f"config.vision_config must be a Siglip2VisionConfig, got {type(vision).__name__}")
    Siglip2ImageProcessorPil(patch_size=vision.patch_size, max_num_patches=max_num_patches).save_pretrained(
        out
    )
    return out
