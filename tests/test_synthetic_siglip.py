"""The synthetic SigLIP that ships in the package (clipalign.checkpoints.SYNTHETIC_SIGLIP; never trained
here): it loads by its alias, reads captions as it was trained to, and sees the wrong word on the shipped
examples; and its training (``tools/train_synthetic_clip.py --family siglip``): the sigmoid loss against
a plain restatement, and a few tiny steps that are deterministic from the seed and lower the loss."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from PIL import Image

from clipalign.checkpoints import SYNTHETIC_SIGLIP
from clipalign.synthetic import VOCABULARY
from clipalign.text.alignment import DEFAULT_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "synthetic"


@pytest.fixture(scope="module")
def model() -> Any:
    from clipalign import load_model

    return load_model("synthetic-siglip", device="cpu")


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModuleType]:
    """The training script and its SigLIP module, imported from tools/ as the script imports them."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    return {name: importlib.import_module(name) for name in ("synthetic_siglip", "train_synthetic_clip")}


def test_committed_checkpoint_is_small_fp16_and_complete() -> None:
    from safetensors import safe_open

    names = {p.name for p in SYNTHETIC_SIGLIP.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"preprocessor_config.json", "README.md"} <= names
    size = sum(p.stat().st_size for p in SYNTHETIC_SIGLIP.rglob("*") if p.is_file())
    assert 0 < size <= 3_000_000, size
    with safe_open(str(SYNTHETIC_SIGLIP / "model.safetensors"), framework="pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F16"}  # noqa: SIM118
    config = json.loads((SYNTHETIC_SIGLIP / "config.json").read_text())
    assert config["model_type"] == "siglip" and config["architectures"] == ["SiglipModel"]


def test_alias_loads_a_siglip_adapter_that_reads_every_word_as_one_token(model: Any) -> None:
    from clipalign.models import MODEL_ALIASES
    from clipalign.models.hf_siglip import HFSiglipAdapter

    assert MODEL_ALIASES["synthetic-siglip"] == SYNTHETIC_SIGLIP
    assert isinstance(model, HFSiglipAdapter)
    assert model.dtype == torch.float32  # fp16 on disk, upcast on load
    assert model.model.vision_model.config.vision_use_head
    words = [w for values in VOCABULARY.values() for w in values] + ["a", "on", "the", "and"]
    caption = " ".join(words)
    (enc,) = model.encode_captions([caption], DEFAULT_TEMPLATE)
    assert len(enc.input_ids) == model.max_text_tokens and enc.pool_index == model.max_text_tokens - 1
    per_word = [list(enc.token_word).count(i) for i in range(len(words))]
    assert per_word == [1] * len(words)  # every synthetic word is one token, and so is the template's
    assert enc.tokens[: len(words) + 4] == ["a", "▁photo", "▁depicts", *(f"▁{w}" for w in words), "<eos>"]
    # capitals are lower-cased (as training read them), an unknown word is spelled in bytes, not <unk>
    (upper,) = model.encode_captions([caption.upper()], DEFAULT_TEMPLATE)
    assert upper.input_ids == enc.input_ids
    (other,) = model.encode_captions(["a zebra"], DEFAULT_TEMPLATE)
    assert model.tokenizer.unk_token_id not in other.input_ids


def _examples() -> list[dict[str, Any]]:
    return json.loads((EXAMPLES / "captions.json").read_text())


LEARNED_KINDS = ("color", "shape")
"""The shipped examples' foil kinds this model tells apart: on held-out validation it ranks the true
caption above a colour foil 100 % of the time and above a shape foil 78 %, but above a position foil only
53 % (chance: it was trained on a quarter of synthetic-clip's images and never learned where things are;
see its README), so the position example (``top`` for ``right``) is left out."""


@pytest.mark.usefixtures("one_thread")
def test_true_caption_scores_higher_and_the_wrong_word_is_flagged(model: Any) -> None:
    """On the shipped colour and shape examples: a higher cosine (CLIPScore) for the true caption than
    for the caption with one wrong word, and CLIP4DM (all text layers) flags that word as the most
    negative."""
    from clipalign import CLIP4DM, WordAlignment

    examples = [e for e in _examples() if e["kind"] in LEARNED_KINDS]
    assert len(examples) == 2
    images = [Image.open(EXAMPLES / e["file"]).convert("RGB") for e in examples]
    detector = CLIP4DM(model, layers=model.num_text_layers)
    true = detector.attribute(images, [e["caption"] for e in examples], mode="most_negative")
    wrong = detector.attribute(images, [e["wrong_caption"] for e in examples], mode="most_negative")
    for example, right_result, wrong_result in zip(examples, true, wrong, strict=True):
        assert isinstance(right_result, WordAlignment) and isinstance(wrong_result, WordAlignment)
        assert right_result.clipscore > wrong_result.clipscore, example["file"]
        flagged = [w.word for w in wrong_result.words if w.misaligned]
        assert flagged == [example["wrong_word"]], (example["file"], flagged)


@pytest.mark.usefixtures("one_thread")
def test_words_cli_runs_on_the_alias(capsys: pytest.CaptureFixture[str]) -> None:
    from clipalign.cli.main import main

    example = _examples()[0]
    image = EXAMPLES / example["file"]
    assert main(["words", str(image), example["wrong_caption"], "--model", "synthetic-siglip"]) == 0
    assert example["wrong_word"] in capsys.readouterr().out


def test_sigmoid_loss_matches_a_plain_restatement(tools: dict[str, ModuleType]) -> None:
    """Every (image, text) pair −log σ(±(e^t·cos + b)), + for an image's own caption, summed over texts
    and averaged over images; plus the hard term: each image's own K foils again, with its weight."""
    sigmoid_loss = tools["synthetic_siglip"].sigmoid_loss
    batch, k, dim = 3, 2, 5
    gen = torch.Generator().manual_seed(4)
    img = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(batch * (1 + k), dim, generator=gen), dim=-1)
    scale, bias, hard_weight = torch.tensor([0.7]), torch.tensor([-1.5]), 0.5

    def nll(i: int, j: int, positive: bool) -> float:
        logit = math.exp(0.7) * float(img[i] @ txt[j]) - 1.5
        sign = 1.0 if positive else -1.0
        return math.log1p(math.exp(-sign * logit))  # −log σ(sign · logit)

    total = sum(nll(i, j, i == j) for i in range(batch) for j in range(len(txt))) / batch
    own = sum(nll(i, batch + i * k + f, False) for i in range(batch) for f in range(k)) / batch
    loss, parts = sigmoid_loss(img, txt, scale, bias, batch, hard_weight)
    assert parts["sigmoid"] == pytest.approx(total, rel=1e-6)
    assert parts["hard"] == pytest.approx(own, rel=1e-6)
    assert float(loss) == pytest.approx(total + hard_weight * own, rel=1e-6)


def _tiny_run(tools: dict[str, ModuleType], steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """A few training steps of a tiny SigLIP (the script's own functions), from seed 5."""
    siglip, train = tools["synthetic_siglip"], tools["train_synthetic_clip"]
    cfg = siglip.SiglipTrainConfig(
        seed=5,
        batch_size=4,
        width=16,
        text_layers=1,
        vision_layers=1,
        heads=2,
        image_size=32,
        warmup=1,
        lr=3e-3,
        tokenizer_scenes=40,
        threads=1,
    )
    train.seed_everything(cfg)
    family = siglip.SiglipFamily(cfg)
    try:
        model = family.build()
        optimizer = train.make_optimizer(model, cfg)
        to_pixels = train.Pixels(family.processor)
        losses = [train.train_step(family, model, optimizer, to_pixels, cfg, s)["loss"] for s in range(steps)]
    finally:
        family.close()
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.usefixtures("one_thread")
def test_training_steps_are_deterministic_and_lower_the_loss(tools: dict[str, ModuleType]) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    try:  # the script switches deterministic algorithms on
        losses, weights = _tiny_run(tools, 6)
        again, weights_again = _tiny_run(tools, 6)
    finally:
        torch.use_deterministic_algorithms(before)
    assert losses == again
    assert weights.keys() == weights_again.keys()
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)
    assert losses[-1] < losses[0] - 1.0, losses  # from e^t·cos + b ≈ −10 on every positive pair
