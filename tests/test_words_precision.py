"""CLIP4DM word scores in half precision agree with fp32; ``dtype="auto"`` picks bf16 only where it is native.

Half precision is mixed precision: the vision tower runs under autocast (matmuls in fp16/bf16, residual
stream and norms in fp32, weights kept fp32) and the text tower, whose ∂cos/∂A decide the flags, in fp32.
Measured on the shipped synthetic model over 50 generated scenes × 5 captions (250 pairs, CPU): fp16 flags
the same words as fp32 on 100 % of pairs, every caption ρ ≥ 0.997; bf16 on 98.8 % of pairs, 99.2 % of
captions ρ ≥ 0.99, the lowest 0.964. On a tiny random model (40 images × 4 captions) both flag the same
words on every pair; bf16's lowest ρ is 0.964. Casting whole towers to bf16 instead (weights and
residual stream) flagged the same words on only 95.6 % of synthetic pairs: a bf16 text tower alone moves
scores near ε. The bounds below sit just under these measurements (CPU runs are deterministic).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from clipalign import CLIP4DM, WordAlignment, load_model
from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.cli.main import main
from clipalign.models.base import DTYPES, resolve_dtype
from clipalign.settings import ModelSpec
from clipalign.synthetic import generate_scenes


def scene(seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))


CAPTIONS = [
    "a dog",
    "A white husky and a black dog running in a snow covered forest.",
    "xylophone",
    "two snowboarders , one red ; the other blue !",
]


@pytest.fixture(scope="module")
def synthetic_pairs():
    images, captions = [], []
    for s in generate_scenes(50, seed=0):
        image = s.render()
        for caption in [s.caption, *(f.caption for f in s.foils)]:
            images.append(image)
            captions.append(caption)
    reference = CLIP4DM(load_model(SYNTHETIC_CLIP, device="cpu")).attribute(
        images, captions, on_error="raise"
    )
    return images, captions, reference


def agreement(reference: list[WordAlignment], results: list[WordAlignment]) -> tuple[float, np.ndarray]:
    """Share of pairs flagging exactly the same words, and Spearman ρ of each caption's eligible word
    scores (captions with at least two eligible words)."""
    same = [
        [w.misaligned for w in a.words] == [w.misaligned for w in b.words]
        for a, b in zip(reference, results, strict=True)
    ]
    rhos = [
        spearmanr(
            [w.score for w in a.words if w.eligible], [w.score for w in b.words if w.eligible]
        ).statistic
        for a, b in zip(reference, results, strict=True)
        if sum(w.eligible for w in a.words) >= 2
    ]
    return float(np.mean(same)), np.array(rhos)


@pytest.mark.parametrize(
    ("dtype", "same_flags", "ranked", "lowest_rho"),
    [("fp16", 1.0, 1.0, 0.99), ("bf16", 0.98, 0.99, 0.95)],
)
def test_half_precision_agrees_with_fp32_on_the_synthetic_model(
    synthetic_pairs, dtype, same_flags, ranked, lowest_rho
):
    images, captions, reference = synthetic_pairs
    model = load_model(SYNTHETIC_CLIP, device="cpu", dtype=dtype)
    results = CLIP4DM(model).attribute(images, captions, on_error="raise")
    same, rhos = agreement(reference, results)
    assert not np.isnan(rhos).any()
    assert same >= same_flags
    assert np.mean(rhos >= 0.99) >= ranked
    assert rhos.min() >= lowest_rho
    assert max(abs(a.cosine - b.cosine) for a, b in zip(reference, results, strict=True)) < 0.01


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_agrees_with_fp32_on_a_tiny_model(tiny_model_dir, dtype):
    images = [scene(i) for i in range(40) for _ in CAPTIONS]
    captions = CAPTIONS * 40
    reference = CLIP4DM(load_model(tiny_model_dir, device="cpu")).attribute(
        images, captions, on_error="raise"
    )
    half = load_model(tiny_model_dir, device="cpu", dtype=dtype)
    same, rhos = agreement(reference, CLIP4DM(half).attribute(images, captions, on_error="raise"))
    assert same >= 0.98
    assert np.mean(rhos >= 0.99) >= 0.98
    assert rhos.min() >= 0.95


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_is_the_vision_tower_under_autocast(tiny_model_dir, dtype):
    """Weights stay fp32; the text tower's maps and embeddings come out in fp32; the image embedding is
    computed in half precision (close to, not equal to, fp32's)."""
    model = load_model(tiny_model_dir, device="cpu", dtype=dtype)
    fp32 = load_model(tiny_model_dir, device="cpu")
    assert model.dtype == DTYPES[dtype]
    assert {p.dtype for p in model.model.parameters()} == {torch.float32}
    inputs = model.collate(model.encode_captions(["a dog on a red couch"], ""))
    with torch.enable_grad():
        out = model.text_embeddings(inputs, output_attentions=2)
    assert out.attentions is not None and {a.dtype for a in out.attentions} == {torch.float32}
    pixels = model.preprocess([scene(0)])
    assert pixels.dtype == torch.float32
    with torch.no_grad():
        half, full = model.image_embeddings(pixels), fp32.image_embeddings(pixels)
    assert half.dtype == torch.float32
    assert not torch.equal(half, full)
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.02)


def test_auto_dtype_is_bf16_only_on_a_cuda_device_with_native_bf16(monkeypatch):
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert ModelSpec(dtype="auto").dtype == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", lambda _where: contextlib.nullcontext())
    for native, expected in [(True, torch.bfloat16), (False, torch.float32)]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n)
        assert resolve_dtype("auto", "cuda") == expected
        assert resolve_dtype("auto") == expected
    assert resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="'auto'"):
        resolve_dtype("fp8")


def test_cli_records_the_dtype_auto_resolves_to(monkeypatch):
    """Caches and scan metadata are keyed by ``ModelSpec.to_dict()``: they must name the dtype that ran."""
    import argparse

    from clipalign.cli.common import model_spec

    def spec(device: str | None) -> ModelSpec:
        args = argparse.Namespace(model="m", device=device, dtype="auto", allow_pickle=False)
        return model_spec(args)

    assert spec("cpu").to_dict() == {"model": "m", "dtype": "fp32"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", lambda _where: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert spec("cuda").dtype == "bf16"
    assert spec(None).dtype == "bf16"
    assert spec("cpu").dtype == "fp32"


def test_cli_dtype_auto_loads_fp32_on_cpu(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import clipalign.models

    loaded = []
    real = clipalign.models.load_model

    def spy(*args, **kwargs):
        loaded.append(kwargs["dtype"])
        return real(*args, **kwargs)

    monkeypatch.setattr(clipalign.models, "load_model", spy)
    photo = tmp_path / "photo.png"
    scene(0).save(photo)
    argv = [
        "words",
        str(photo),
        "a dog",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--dtype",
        "auto",
    ]
    assert main(argv) == 0
    assert loaded == [torch.float32]
    capsys.readouterr()


def test_load_model_resolves_auto_for_the_device_asked_for(tiny_model_dir, monkeypatch):
    """A CPU run on a machine whose GPU has bf16 still loads fp32: ``auto`` follows ``device``."""
    from clipalign import load_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    model = load_model(tiny_model_dir, device="cpu", dtype="auto")
    assert next(model.model.parameters()).dtype == torch.float32
