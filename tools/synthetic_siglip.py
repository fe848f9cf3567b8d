"""The small SigLIP that ``tools/train_synthetic_clip.py --family siglip`` trains: its extra settings, its
tokenizer (trained here, offline, on the synthetic world's words), its architecture, its sigmoid loss and
how it is saved.

The model is a real Hugging Face ``SiglipModel`` (model_type ``siglip``, the fixed-resolution SigLIP /
SigLIP 2 layout) that :class:`clipalign.models.hf_siglip.HFSiglipAdapter` loads: bidirectional text
attention over a fixed-length context, every caption right-padded to it and pooled at the last position,
a multi-head attention-pooling head on the patches (no class token), mean and std 0.5 pixels. Captions are
encoded for training by that adapter itself, so training reads them exactly as clipalign scores them.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from synthetic_clip import Texts, TrainConfig, save_checkpoint, sincos_table
from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    GemmaTokenizer,
    PreTrainedTokenizerBase,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
)

from clipalign.models.hf_siglip import HFSiglipAdapter, load_siglip_tokenizer
from clipalign.synthetic import KINDS, generate_scenes
from clipalign.text.alignment import DEFAULT_TEMPLATE

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
"""Gemma's special tokens, in Gemma's order: ``<pad>`` is id 0 (exCLIP's filler), ``<eos>`` id 1."""
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))
"""Byte fallback: a word the synthetic world never uses is spelled in UTF-8 bytes, never ``<unk>``."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class SiglipTrainConfig(TrainConfig):
    """:class:`TrainConfig` plus what only a SigLIP has: its text context, the initial temperature and
    bias of the sigmoid loss (log 10 and −10, as in the SigLIP paper), and the tokenizer's training.
    Half CLIP's steps of half its batch by default: the run had to fit a busy shared 2-core CPU."""

    steps: int = 1500
    batch_size: int = 16
    text_context: int = 32
    logit_scale_init: float = math.log(10.0)
    logit_bias_init: float = -10.0
    tokenizer_scenes: int = 2000
    tokenizer_vocab: int = 400


def tokenizer_corpus(cfg: SiglipTrainConfig) -> list[str]:
    """Lower-cased ``template + caption`` for the true captions and foils of the first training scenes
    (the words the model will read), which is all the tokenizer learns merges from."""
    scenes = generate_scenes(cfg.tokenizer_scenes, cfg.seed, cfg.image_size)
    captions = [c for s in scenes for c in (s.caption, *(f.caption for f in s.foils))]
    return [(DEFAULT_TEMPLATE + c).lower() for c in captions]


def write_tokenizer(cfg: SiglipTrainConfig, out: Path) -> None:
    """A SigLIP 2-style Gemma tokenizer (byte-fallback BPE over ``▁``-marked words, no BOS, EOS appended)
    trained on :func:`tokenizer_corpus`, saved as ``tokenizer.json`` + ``tokenizer_config.json`` with
    ``do_lower_case`` (the adapter then lower-cases, as SigLIP 2 was trained) and the text context as
    ``model_max_length``. ``tokenizers``' BPE trainer is deterministic for a given corpus."""
    backend = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.tokenizer_vocab, special_tokens=[*SPECIAL_TOKENS, *BYTE_TOKENS], show_progress=False
    )
    backend.train_from_iterator(tokenizer_corpus(cfg), trainer)
    model = json.loads(backend.to_str())["model"]
    merges: Any = [tuple(m) for m in model["merges"]]  # (left, right) pairs, as the BPE model takes them
    tokenizer = GemmaTokenizer(
        vocab=model["vocab"],
        merges=merges,
        add_bos_token=False,
        add_eos_token=True,
        model_max_length=cfg.text_context,
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["do_lower_case"] = True
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for extra in set(p.name for p in out.iterdir()) - set(TOKENIZER_FILES):
        (out / extra).unlink()


def build_siglip_config(cfg: SiglipTrainConfig, vocab_size: int, pad_id: int, eos_id: int) -> SiglipConfig:
    """The architecture: ``SiglipModel`` with CLIP's sizes from ``cfg`` (no separate projection: the text
    head maps to the width), the text context of ``cfg``, eager attention (for attribution)."""
    tower = {
        "hidden_size": cfg.width,
        "intermediate_size": cfg.mlp_ratio * cfg.width,
        "num_attention_heads": cfg.heads,
    }
    text = {
        **tower,
        "num_hidden_layers": cfg.text_layers,
        "vocab_size": vocab_size,
        "max_position_embeddings": cfg.text_context,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "bos_token_id": None,
    }
    vision = {
        **tower,
        "num_hidden_layers": cfg.vision_layers,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
    }
    config = SiglipConfig(text_config=text, vision_config=vision)
    config._attn_implementation = "eager"
    return config


def image_processor(size: int) -> SiglipImageProcessorPil:
    """SigLIP's processor: resize to ``size``×``size`` (no crop), mean and std 0.5."""
    return SiglipImageProcessorPil(size={"height": size, "width": size})


class SiglipFamily:
    """The SigLIP side of the training script: tokenizer, model, encoded captions, embeddings, the
    sigmoid loss and saving, for one :class:`SiglipTrainConfig`."""

    name = "siglip"

    def __init__(self, cfg: SiglipTrainConfig) -> None:
        self.cfg = cfg
        self._tokenizer_dir = Path(tempfile.mkdtemp(prefix="synthetic-siglip-tokenizer-"))
        write_tokenizer(cfg, self._tokenizer_dir)
        self.tokenizer: PreTrainedTokenizerBase = load_siglip_tokenizer(
            str(self._tokenizer_dir), local_files_only=True
        )
        self.processor = image_processor(cfg.image_size)
        self._adapter: HFSiglipAdapter | None = None
        self._cache: dict[str, list[int]] = {}

    def build(self) -> SiglipModel:
        """A fresh model (torch's RNG, seeded by the caller), the temperature and bias at the SigLIP init
        and the vision position embeddings at the sine-cosine pattern of ``cfg.pos_init``."""
        tok = self.tokenizer
        config = build_siglip_config(self.cfg, len(tok), int(tok.pad_token_id), int(tok.eos_token_id))
        model = SiglipModel(config)
        with torch.no_grad():
            model.logit_scale.fill_(self.cfg.logit_scale_init)
            model.logit_bias.fill_(self.cfg.logit_bias_init)
            if self.cfg.pos_init:
                emb = model.vision_model.embeddings.position_embedding.weight
                side = self.cfg.image_size // self.cfg.patch_size
                emb.copy_(self.cfg.pos_init * sincos_table(side, emb.shape[1]))
        self._adapter = HFSiglipAdapter(model, self.tokenizer, self.processor)
        return model

    def encode(self, captions: list[str]) -> Texts:
        """``template + caption`` exactly as the adapter encodes it for scoring: padded to the full
        context, no attention mask, pooled at the last position."""
        if self._adapter is None:
            raise RuntimeError("build the model first")
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        encoded = self._adapter.encode_captions(missing, DEFAULT_TEMPLATE)
        self._cache.update((caption, enc.input_ids) for caption, enc in zip(missing, encoded, strict=True))
        ids = torch.tensor([self._cache[c] for c in captions], dtype=torch.long)
        return Texts(ids, torch.ones_like(ids), torch.full((len(captions),), ids.shape[1] - 1))

    @staticmethod
    def text_features(model: SiglipModel, texts: Texts) -> torch.Tensor:
        """Unit-norm text embeddings: the head at the last position, the tower run without a mask."""
        return F.normalize(model.text_model(input_ids=texts.input_ids).pooler_output, dim=-1)

    @staticmethod
    def image_features(model: SiglipModel, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings: the attention-pooling head's output."""
        return F.normalize(model.vision_model(pixel_values=pixels).pooler_output, dim=-1)

    def loss(
        self, model: SiglipModel, pixels: torch.Tensor, texts: Texts, batch: int, hard_weight: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """:func:`sigmoid_loss` on the model's embeddings, temperature and bias."""
        img = self.image_features(model, pixels)
        txt = self.text_features(model, texts)
        return sigmoid_loss(img, txt, model.logit_scale, model.logit_bias, batch, hard_weight)

    def save(self, model: SiglipModel, out: Path) -> None:
        """fp16 safetensors, the tokenizer files and the image processor config."""
        save_checkpoint(model, out, [self._tokenizer_dir / name for name in TOKENIZER_FILES], self.processor)

    def close(self) -> None:
        """Remove the temporary tokenizer folder."""
        shutil.rmtree(self._tokenizer_dir, ignore_errors=True)


def sigmoid_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    batch: int,
    hard_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SigLIP's pairwise sigmoid loss with each image's foils as extra negatives, and a hard term.

    ``img`` (B, d) and ``txt`` ((1 + K)·B, d) are unit-norm; ``txt`` holds the B true captions then K foils
    per image (image-major). Every (image, text) pair is an independent binary problem on
    ``exp(logit_scale)·cos + logit_bias``: positive for image i with its own caption i, negative for every
    other pair. ``sigmoid`` sums the pairs' −log σ(±logit) over texts and averages over images (as
    big_vision's SigLIP loss); ``hard`` is the same sum over each image's own K foils only, averaged over
    images, added with ``hard_weight`` so that one wrong word is a strong negative.
    """
    logits = logit_scale.exp() * img @ txt.T + logit_bias  # (B, (1 + K)·B)
    signs = -torch.ones_like(logits)
    target = torch.arange(batch)
    signs[target, target] = 1.0
    nll = -F.logsigmoid(signs * logits)
    sigmoid = nll.sum(dim=1).mean()
    hard = nll[:, batch:].reshape(batch, batch, -1)[target, target].sum(dim=1).mean()
    loss = sigmoid + hard_weight * hard
    parts = {"loss": loss.item(), "sigmoid": sigmoid.item(), "hard": hard.item()}
    return loss, parts


def write_siglip_readme(out: Path, cfg: SiglipTrainConfig, summary: dict[str, Any], command: str) -> None:
    """The model card: command, seed, config, tokenizer, wall time, final loss and validation numbers."""
    final = summary["final"]
    names = {"color": "colour"}
    kinds = ", ".join(f"{names.get(k, k)} {final['retrieval'][f'per_foil_{k}']:.1%}" for k in KINDS)
    sha256 = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    vocab = config["text_config"]["vocab_size"]
    text = f"""# synthetic-siglip

A small SigLIP (Hugging Face `SiglipModel`, model_type `siglip`: the layout of SigLIP and of the
fixed-resolution SigLIP 2 checkpoints; {summary["parameters"] / 1e6:.2f} M parameters) trained from scratch
on CPU on the synthetic shapes world of `clipalign.synthetic` with SigLIP's **sigmoid loss**, next to
`synthetic-clip` (the same world and sizes, CLIP's softmax loss; this one had a quarter of its training
images: half the steps, half the batch, to fit a busy shared CPU). It exists so that word-level
misalignment (CLIP4DM) can be tested where the truth is known on a sigmoid-trained model; it knows
nothing else. Load it with `clipalign.load_model("synthetic-siglip")` or `--model synthetic-siglip`.

Trained with (from the repository root):

```bash
{command}
```

- seed {cfg.seed} (training scenes `default_rng([{cfg.seed}, i])`, in order; `torch.manual_seed({cfg.seed})`),
  validation seed {cfg.val_seed} ({cfg.val_scenes} scenes); `torch.use_deterministic_algorithms(True)`,
  {cfg.threads} torch thread(s). **Reproducible from the seed**: the same command with the same torch,
  transformers and tokenizers versions, thread count and kind of CPU gives the same
  `model.safetensors`, byte for byte (sha256 `{sha256}`); float reductions may differ on other CPUs or
  thread counts.
- Loss: every (image, text) pair of the batch is a binary problem on `exp(t)·cos + b` (t and b learned,
  initialised at log 10 and {cfg.logit_bias_init:g}, as in the SigLIP paper): positive for an image with
  its own caption, negative otherwise, −log σ summed over texts and averaged over images. The texts are
  the {cfg.batch_size} true captions and each image's 4 one-word foils (colour, shape, size, position);
  each image's own foils count again with weight {cfg.hard_weight} (hard negatives). {cfg.steps} steps of
  {cfg.batch_size} images; AdamW lr {cfg.lr} (warm-up {cfg.warmup}, cosine to 5 %), weight decay
  {cfg.weight_decay}, gradient clipping 1.0. Final temperature exp(t) = {final["logit_scale"]:.1f}, bias
  b = {final["logit_bias"]:.2f}.
- Captions are read as `"{DEFAULT_TEMPLATE}" + caption`, encoded by clipalign's `HFSiglipAdapter` itself
  (lower-cased, `<eos>` appended, right-padded with `<pad>` to the {cfg.text_context}-token context, no
  attention mask, pooled at the last position), so training reads them exactly as clipalign scores them.
- Tokenizer: a SigLIP 2-style Gemma tokenizer (`tokenizer.json`: byte-fallback BPE over `▁`-marked
  words, no BOS, EOS appended; `do_lower_case` in `tokenizer_config.json`), {vocab} tokens, trained
  offline with `tokenizers` on the lower-cased template + captions and foils of the first
  {cfg.tokenizer_scenes} training scenes: every word of the synthetic world is one token; any other word
  is spelled in bytes.
- Architecture: text and vision width {cfg.width}, {cfg.text_layers} text / {cfg.vision_layers} vision
  layers, {cfg.heads} heads, MLP {cfg.mlp_ratio * cfg.width}; bidirectional text attention over a
  {cfg.text_context}-token context, the text head a linear map at the last position;
  {cfg.image_size}×{cfg.image_size} images, patch {cfg.patch_size}, no class token, the multi-head
  attention-pooling head; vision position embeddings initialised with a 2-D sine-cosine pattern of
  amplitude {cfg.pos_init} (then learned); eager attention. The image processor is
  `SiglipImageProcessorPil` at {cfg.image_size} px (mean and std 0.5).
- Saved in fp16 (`model.safetensors`); `clipalign.load_model(dir)` loads it in fp32 (upcast).
  Directory size {summary["size_bytes"] / 1e6:.2f} MB.
- Wall time {summary["wall_s"] / 60:.1f} min ({summary["train_s"] / 60:.1f} min of training steps) on
  {summary["machine"]["cpu"]}, torch {summary["machine"]["torch"]}.
- Final training loss {summary["final_loss"]:.4f} (mean of the last 50 steps; sigmoid loss + hard term).

Held-out validation ({cfg.val_scenes} scenes of seed {cfg.val_seed}, the saved fp16 model reloaded with
`clipalign.load_model`): the true caption scores above a foil in {final["retrieval"]["per_foil"]:.1%} of
(image, foil) pairs ({kinds}) and above all 4 of its foils for {final["retrieval"]["all_foils"]:.1%} of
images. CLIP4DM `most_negative` (layers={final["layers"]}) finds the changed word in {final["la"]:.1%} of
foils (random word: {final["random_la"]:.1%}).

Evaluation through `clipalign eval`: `benchmarks/results/synthetic_world_siglip.md`; layer by layer:
`benchmarks/results/synthetic_layers_siglip.md`.
"""
    (out / "README.md").write_text(text, encoding="utf-8")
