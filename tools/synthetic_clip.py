"""The small CLIP that ``tools/train_synthetic_clip.py`` trains: its settings, its architecture, its inputs
read exactly as clipalign reads them, its embeddings, and how it is saved.

Kept apart from the training loop so that what the model *is* (and what a saved checkpoint holds) can be
read in one place; the training script imports everything here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoTokenizer,
    BaseImageProcessor,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from clipalign.synthetic import generate_scenes
from clipalign.testing import CLIP_BOS, CLIP_EOS, CLIP_VOCAB_SIZE
from clipalign.text.alignment import DEFAULT_TEMPLATE, encode_caption

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO.parent / "shared" / "data" / "clip-tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")


@dataclass
class TrainConfig:
    """Everything that determines the trained weights (with the torch version and the CPU)."""

    seed: int = 0
    val_seed: int = 1
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 150
    weight_decay: float = 0.05
    hard_weight: float = 1.0
    extra_foils: int = 0
    width: int = 64
    text_layers: int = 4
    vision_layers: int = 4
    heads: int = 4
    mlp_ratio: int = 2
    projection_dim: int = 64
    image_size: int = 64
    patch_size: int = 8
    pos_init: float = 0.3
    val_scenes: int = 300
    eval_every: int = 500
    threads: int = 1


def build_config(cfg: TrainConfig) -> CLIPConfig:
    """The model architecture: real vocabulary and 77-token context, eager attention (for attribution)."""
    text = {
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_size": cfg.width,
        "intermediate_size": cfg.mlp_ratio * cfg.width,
        "num_hidden_layers": cfg.text_layers,
        "num_attention_heads": cfg.heads,
        "max_position_embeddings": 77,
        "bos_token_id": CLIP_BOS,
        "eos_token_id": CLIP_EOS,
        "pad_token_id": CLIP_EOS,
    }
    vision = {
        "hidden_size": cfg.width,
        "intermediate_size": cfg.mlp_ratio * cfg.width,
        "num_hidden_layers": cfg.vision_layers,
        "num_attention_heads": cfg.heads,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)
    config._attn_implementation = "eager"
    return config


def sincos_table(side: int, width: int) -> torch.Tensor:
    """A 2-D sine-cosine position pattern for a ``side``×``side`` patch grid, row-major (side², width),
    float64: sin and cos of each patch's row then column at ``width // 4`` frequencies 16^(−k/quarter),
    the columns past ``4 · (width // 4)`` zero."""
    quarter = width // 4
    omega = 16.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angle = coord[:, None].double() * omega[None]
        parts += [angle.sin(), angle.cos()]
    table = torch.zeros(side * side, width, dtype=torch.float64)
    table[:, : 4 * quarter] = torch.cat(parts, dim=1)
    return table


def init_vision_positions(model: CLIPModel, scale: float) -> None:
    """Initialise the (still learned) vision position embeddings with a 2-D sine-cosine pattern of
    amplitude ``scale`` (:func:`sincos_table`) instead of N(0, 0.02) noise, so that where an object is
    shows from the first step (the default init is ~10× weaker than patch content; position words were
    then not learned in budget). The CLS position stays zero. ``scale`` 0 keeps Hugging Face's init."""
    if scale == 0:
        return
    emb = model.vision_model.embeddings
    width = emb.position_embedding.weight.shape[1]
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    table = torch.zeros(1 + side * side, width, dtype=torch.float64)
    table[1:] = sincos_table(side, width)
    with torch.no_grad():
        emb.position_embedding.weight.copy_(scale * table)


def image_processor(size: int) -> CLIPImageProcessorPil:
    """The image processor saved with the model: resize and centre-crop to ``size`` pixels."""
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


class Pixels:
    """Rendered scenes → normalised pixels, exactly as ``CLIPImageProcessorPil`` does at the model's size
    (resize and crop are the identity there; checked against the processor at start-up)."""

    def __init__(self, processor: CLIPImageProcessorPil) -> None:
        self.mean = np.asarray(processor.image_mean, dtype=np.float32)
        self.std = np.asarray(processor.image_std, dtype=np.float32)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / np.float32(255.0)
        return torch.from_numpy(((array - self.mean) / self.std).transpose(0, 3, 1, 2).copy())


@dataclass
class Texts:
    """A padded batch of encoded captions and the position each is pooled at (its EOT token)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pool_index: torch.Tensor


def encode_texts(tokenizer: PreTrainedTokenizerBase, captions: list[str]) -> Texts:
    """SOT + template + caption + EOT, right-padded; pooled at EOT (what clipalign's adapter does)."""
    enc = tokenizer([DEFAULT_TEMPLATE + c for c in captions], padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    return Texts(enc["input_ids"], mask, mask.sum(dim=1) - 1)


def check_encoding(tokenizer: PreTrainedTokenizerBase) -> None:
    """Training reads captions exactly as clipalign's adapter encodes them (same ids, same EOT position)."""
    captions = [s.caption for s in generate_scenes(4, 0)]
    got = encode_texts(tokenizer, captions)
    for i, caption in enumerate(captions):
        expected = encode_caption(
            tokenizer,
            caption,
            template=DEFAULT_TEMPLATE,
            prefix_ids=[CLIP_BOS],
            suffix_ids=[CLIP_EOS],
            max_length=77,
        )
        n = len(expected.input_ids)
        assert got.input_ids[i, :n].tolist() == expected.input_ids, caption
        assert int(got.pool_index[i]) == expected.pool_index, caption


def text_features(model: CLIPModel, texts: Texts) -> torch.Tensor:
    """Unit-norm text embeddings, pooled at each caption's EOT token."""
    hidden = model.text_model(
        input_ids=texts.input_ids, attention_mask=texts.attention_mask
    ).last_hidden_state
    pooled = hidden[torch.arange(hidden.shape[0]), texts.pool_index]
    return F.normalize(model.text_projection(pooled), dim=-1)


def image_features(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings."""
    pooled = model.vision_model(pixel_values=pixels).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)


def contrastive_loss(
    model: CLIPModel, pixels: torch.Tensor, texts: Texts, batch: int, hard_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """CLIP loss with each image's foils as extra negatives.

    ``texts`` holds the B true captions then K foils per image (image-major). image→text: cross-entropy
    over all (1 + K)·B captions; text→image: over the B images; hard: each image against only its own true
    caption and its K foils.
    """
    img = image_features(model, pixels)
    txt = text_features(model, texts)
    scale = model.logit_scale.exp().clamp(max=100.0)
    target = torch.arange(batch)
    logits = scale * img @ txt.T  # (B, (1 + K)·B)
    i2t = F.cross_entropy(logits, target)
    t2i = F.cross_entropy(logits[:, :batch].T, target)
    own_foils = logits[:, batch:].reshape(batch, batch, -1)[target, target]  # (B, 4)
    own = torch.cat([logits[target, target][:, None], own_foils], dim=1)
    hard = F.cross_entropy(own, torch.zeros(batch, dtype=torch.long))
    loss = (i2t + t2i) / 2 + hard_weight * hard
    return loss, {"loss": loss.item(), "i2t": i2t.item(), "t2i": t2i.item(), "hard": hard.item()}


class ClipFamily:
    """The CLIP side of the training script: the shared CLIP tokenizer, the model, encoded captions,
    embeddings, the contrastive loss and saving, for one :class:`TrainConfig`."""

    name = "clip"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        check_encoding(self.tokenizer)
        self.processor = image_processor(cfg.image_size)

    def build(self) -> CLIPModel:
        """A fresh model (torch's RNG, seeded by the caller), vision positions at the sine-cosine init."""
        model = CLIPModel(build_config(self.cfg))
        init_vision_positions(model, self.cfg.pos_init)
        return model

    def encode(self, captions: list[str]) -> Texts:
        return encode_texts(self.tokenizer, captions)

    @staticmethod
    def text_features(model: CLIPModel, texts: Texts) -> torch.Tensor:
        return text_features(model, texts)

    @staticmethod
    def image_features(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
        return image_features(model, pixels)

    def loss(
        self, model: CLIPModel, pixels: torch.Tensor, texts: Texts, batch: int, hard_weight: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return contrastive_loss(model, pixels, texts, batch, hard_weight)

    def save(self, model: CLIPModel, out: Path) -> None:
        save(model, self.cfg, out)

    def close(self) -> None:
        """Nothing to clean up."""


def save_checkpoint(
    model: PreTrainedModel, out: Path, files: list[Path], processor: BaseImageProcessor
) -> None:
    """A fresh ``out``: the weights in fp16 safetensors (the model is put back in fp32), a copy of each of
    ``files`` (the tokenizer's) and the image processor config."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.to(torch.float16).save_pretrained(out)
    model.to(torch.float32)
    for path in files:
        shutil.copyfile(path, out / path.name)
    processor.save_pretrained(out)


def save(model: CLIPModel, cfg: TrainConfig, out: Path) -> None:
    """fp16 safetensors + the tokenizer's vocab/merges (1.5 MB; a saved tokenizer.json would add 3.6 MB)
    + the image processor config."""
    files = [TOKENIZER_DIR / name for name in TOKENIZER_FILES]
    save_checkpoint(model, out, files, image_processor(cfg.image_size))


def dir_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
