"""Seeded, randomly initialised CLIP checkpoints built from a config, for tests, benchmarks and demos offline.

Speed and memory depend on the architecture, not on the weights, so a random B/32 measures what a real
one costs; a tiny one exercises every code path in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel

CLIP_VOCAB_SIZE = 49408
CLIP_BOS, CLIP_EOS = 49406, 49407


def tiny_clip_config(
    hidden_size: int = 32,
    layers: int = 4,
    heads: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 16,
) -> CLIPConfig:
    """A small CLIP architecture with the real 49,408-token vocabulary and 77-token context."""
    text = {
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
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
    out = Path(out_dir)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    size = config.vision_config.image_size
    CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(out)
    return out
