"""Offline stand-ins for tests, benchmarks, tools and docstring examples: seeded random CLIP checkpoints.

Speed and memory depend on the architecture, not on the weights, so a random B/32 measures what a real
one costs; a tiny one exercises every code path in milliseconds. :func:`tiny_model` builds and loads one
in one call, with the CLIP tokenizer files that ship in :mod:`clipalign.checkpoints`, so an example needs
no download; :func:`example_image` draws a picture to score. :func:`cpu_model` names the CPU that
benchmarks and the training tool record beside their timings.
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionConfig

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
