"""Loading checkpoints through the registry, adapter invariants, and leaving the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

from clipalign import CLIP4DM, ModelLoadError, load_model
from clipalign.models import HFCLIPAdapter, supported_model_types


def scene() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))


def test_load_from_local_directory(adapter, tiny_model_dir):
    assert isinstance(adapter, HFCLIPAdapter)
    assert adapter.name == str(tiny_model_dir)
    assert adapter.model.config.text_config._attn_implementation == "eager"
    assert not adapter.model.training
    assert not any(p.requires_grad for p in adapter.model.parameters())
    assert adapter.num_text_layers == 4 and adapter.max_text_tokens == 77
    assert (tiny_model_dir / "model.safetensors").exists()
    assert "clip" in supported_model_types()


@pytest.mark.parametrize(("dtype", "expected"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_dtype_choice(tiny_model_dir, dtype, expected):
    model = load_model(tiny_model_dir, device="cpu", dtype=dtype)
    assert model.dtype == expected
    [result] = CLIP4DM(model).attribute([scene()], ["a dog"])
    assert np.isfinite(result.cosine) and all(np.isfinite(w.score) for w in result.words)


@pytest.mark.slow
def test_bf16_scores_track_fp32(tiny_model_dir):
    fp32 = CLIP4DM(load_model(tiny_model_dir, dtype="fp32")).attribute([scene()], ["a dog on a red couch"])[0]
    bf16 = CLIP4DM(load_model(tiny_model_dir, dtype="bf16")).attribute([scene()], ["a dog on a red couch"])[0]
    assert bf16.cosine == pytest.approx(fp32.cosine, abs=0.02)
    a, b = np.array([w.score for w in fp32.words]), np.array([w.score for w in bf16.words])
    assert np.corrcoef(a, b)[0, 1] > 0.9


def test_invalid_dtype(tiny_model_dir):
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(tiny_model_dir, dtype="fp8")


def test_missing_directory_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "absent")


def test_directory_without_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(tmp_path / "empty")


def test_adapter_rejects_non_eager_attention(tiny_model_dir):
    model = CLIPModel.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="eager"):
        HFCLIPAdapter(model, AutoTokenizer.from_pretrained(tiny_model_dir), CLIPImageProcessorPil())


def hooks(model: torch.nn.Module) -> dict[str, list]:
    return {n: [*m._forward_hooks.values(), *m._forward_pre_hooks.values()] for n, m in model.named_modules()}


def test_no_hook_left_and_model_unchanged_after_attribution(adapter):
    inputs = adapter.collate(adapter.encode_captions(["a dog"], "A photo depicts "))
    with torch.no_grad():
        adapter.model.text_model(
            input_ids=inputs.input_ids, output_attentions=True
        )  # transformers' own hooks
        before = adapter.text_embeddings(inputs).embeds
    registered = hooks(adapter.model)
    CLIP4DM(adapter).attribute([scene()], ["a dog"])
    assert hooks(adapter.model) == registered
    assert not adapter.model.text_model.embeddings._forward_hooks
    with torch.no_grad():
        after = adapter.text_embeddings(inputs).embeds
        plain = adapter.model.get_text_features(**{"input_ids": inputs.input_ids}).pooler_output
    torch.testing.assert_close(before, after)
    torch.testing.assert_close(after, plain)
    assert not any(p.grad is not None for p in adapter.model.parameters())


def test_frozen_or_trainable_parameters_give_the_same_scores(tiny_model_dir):
    frozen = load_model(tiny_model_dir)
    trainable = load_model(tiny_model_dir)
    trainable.model.requires_grad_(True)
    a = CLIP4DM(frozen).attribute([scene()], ["a cat sleeps"])[0]
    b = CLIP4DM(trainable).attribute([scene()], ["a cat sleeps"])[0]
    assert [w.score for w in a.words] == pytest.approx([w.score for w in b.words], abs=1e-12)
    assert not any(p.grad is not None for p in trainable.model.parameters())
