"""Every HF CLIP-layout checkpoint size: the adapter on the real configs of OpenAI B/32, B/16, L/14 and
LAION's H/14 (GELU, not quick GELU), with random weights and 2 blocks per tower (widths, heads, patch and
image size, projection, vocabulary, positions and activation as in the config).

Checked on each: embeddings and EOT pooling against HF's own ``get_*_features``, word scores against the
loop oracle, the last block's closed-form interaction JVPs and the activation slope against finite
differences (fp64), and the image geometry against a resize and crop redone from it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED
from PIL import Image
from test_interactions import fp64_eager_attention
from test_words_oracle import oracle_word_scores
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel
from transformers.models.clip import modeling_clip

from clipalign import CLIP4DM, load_model
from clipalign.attribution.interactions import UnitPost
from clipalign.models.hf_clip import _activation_slope
from clipalign.testing import save_random_clip

CONFIGS = SHARED / "configs"
FAMILIES = {
    "clip-vit-base-patch32": ("quick_gelu", 7),
    "clip-vit-base-patch16": ("quick_gelu", 14),
    "clip-vit-large-patch14": ("quick_gelu", 16),
    "CLIP-ViT-H-14-laion2B-s32B-b79K": ("gelu", 16),
}
"""Config folder → the activation it names and its patch grid side (224 / patch size)."""
LAYERS = 2
CAPTION = "a dog on a red couch."


def family_config(name: str) -> CLIPConfig:
    """The shared config.json of ``name`` with ``LAYERS`` blocks per tower, everything else kept."""
    path = CONFIGS / name / "config.json"
    if not path.is_file():
        pytest.skip(
            f"model config not found: {path}; put there the config.json of the Hub repo "
            f"(openai/{name} or laion/{name}: `hf download REPO config.json --local-dir {path.parent}`)"
        )
    raw = json.loads(path.read_text())
    raw["text_config"]["num_hidden_layers"] = raw["vision_config"]["num_hidden_layers"] = LAYERS
    return CLIPConfig.from_dict(raw)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, tokenizer_dir):
    """(config folder name, checkpoint folder, loaded adapter, the same weights as a plain HF model with
    gradients, for the oracles), one family at a time."""
    name = request.param
    folder = save_random_clip(tmp_path_factory.mktemp(name), family_config(name), tokenizer_dir, seed=1)
    original = CLIPModel.from_pretrained(folder, attn_implementation="eager").eval()
    return name, folder, load_model(folder, device="cpu"), original


def test_shapes_follow_the_config(family):
    name, _, model, _ = family
    activation, side = FAMILIES[name]
    raw = json.loads((CONFIGS / name / "config.json").read_text())
    text, vision = model.model.config.text_config, model.model.config.vision_config
    for ours, theirs in ((text, raw["text_config"]), (vision, raw["vision_config"])):
        for key in ("hidden_size", "intermediate_size", "num_attention_heads", "hidden_act"):
            assert getattr(ours, key) == theirs[key], key
    assert text.hidden_act == vision.hidden_act == activation
    assert model.max_text_tokens == 77 and model.num_text_layers == model.num_vision_layers == LAYERS
    assert model.patch_grid == (side, side)
    pixels = model.preprocess([photo(300, 200)])
    assert pixels.shape == (1, 3, 224, 224)
    states = model.image_states(pixels, LAYERS - 1)
    assert states.shape == (1, 1 + side * side, raw["vision_config"]["hidden_size"])
    assert model.image_embeddings(pixels).shape == (1, raw["projection_dim"])


def test_embeddings_pool_at_eot_as_hf_does(family):
    *_, model, original = family
    captions = [CAPTION, "a much longer caption about a dog that sits on a red couch in a room"]
    encoded = model.encode_captions(captions, "A photo depicts ")
    pixels = model.preprocess([photo(300, 200)])
    with torch.no_grad():
        batch = model.text_embeddings(model.collate(encoded)).embeds  # the short one right-padded
        for i, enc in enumerate(encoded):
            alone = original.get_text_features(input_ids=torch.tensor([enc.input_ids])).pooler_output
            torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=2e-5)
        image = original.get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(model.image_embeddings(pixels), image, rtol=0, atol=1e-6)


def test_word_scores_match_the_oracle(family):
    _, folder, model, original = family
    image = photo(300, 200)
    [result] = CLIP4DM(model, layers=LAYERS).attribute([image], [CAPTION], on_error="raise")
    tokenizer, processor = (
        AutoTokenizer.from_pretrained(folder),
        CLIPImageProcessorPil.from_pretrained(folder),
    )
    expected, cosine = oracle_word_scores(original, tokenizer, processor, image, CAPTION, layers=LAYERS)
    assert [w.word for w in result.words] == [w for w, _ in expected]
    assert result.cosine == pytest.approx(cosine, abs=1e-6)
    scale = max(abs(s) for _, s in expected)
    assert [w.score for w in result.words] == pytest.approx([s for _, s in expected], abs=1e-4 * scale)


def test_activation_slope_equals_finite_differences(family):
    """The MLP activation's derivative the closed-form JVPs use (quick GELU's formula, GELU's forward AD)
    against central differences, fp64."""
    _, _, model, _ = family
    activation = model.model.text_model.encoder.layers[0].mlp.activation_fn
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    h = 1e-5
    numeric = (activation(x + h) - activation(x - h)) / (2 * h)
    torch.testing.assert_close(_activation_slope(activation, x), numeric, rtol=0, atol=1e-8)


def test_last_block_closed_form_jvps_equal_finite_differences(family, monkeypatch):
    """fp64: the adapter's closed-form position JVPs of the normalised embedding at the last block (text
    and image) against central differences of the plain heads, along one position's change at a time."""
    _, _, model, _ = family
    monkeypatch.setattr(modeling_clip, "eager_attention_forward", fp64_eager_attention)
    last = LAYERS - 1
    [enc] = model.encode_captions([CAPTION], "")
    ids = torch.tensor([enc.input_ids, model.text_reference_ids(len(enc.input_ids))])
    pixels = model.preprocess([photo(300, 200), photo(240, 240, seed=3)]).double()
    model.model.double()
    try:
        with torch.no_grad():
            text = model.text_states(ids, last)
            image = model.image_states(pixels, last)
            cases = [
                (
                    model.text_head_jvps(last, enc.pool_index, UnitPost()),
                    lambda h: UnitPost()(model.text_head(h, last, enc.pool_index)),
                    text,
                    [0, 1, enc.pool_index],
                ),
                (
                    model.image_head_jvps(last, UnitPost()),
                    lambda h: UnitPost()(model.image_head(h, last)),
                    image,
                    [0, 1, image.shape[1] - 1],
                ),
            ]
            for closed_form, head, states, positions in cases:
                assert closed_form is not None
                delta = states[0] - states[1]
                point = states[1:] + 0.4 * delta
                got = closed_form(point, delta, 64)[0]  # (positions, D)
                for i in positions:
                    step = torch.zeros_like(point)
                    step[0, i] = 1e-5 * delta[i]
                    numeric = (head(point + step) - head(point - step))[0] / 2e-5
                    torch.testing.assert_close(got[i], numeric, rtol=1e-5, atol=1e-8)
    finally:
        model.model.float()


@pytest.mark.parametrize("size", [(640, 480), (300, 500)])
def test_image_geometry_reproduces_the_preprocessing(family, size):
    """Resizing to ``resized`` and cropping ``crop``, as the geometry says, gives the processor's pixels."""
    _, _, model, _ = family
    image = photo(*size, seed=2)
    geometry = model.image_geometry(*size)
    short = min(size)
    expected_resized = tuple(round(224 * s / short) if s != short else 224 for s in size)
    assert (
        abs(geometry.resized[0] - expected_resized[0]) <= 1
        and abs(geometry.resized[1] - expected_resized[1]) <= 1
    )
    left, top, w, h = geometry.crop
    assert (
        (w, h) == (224, 224)
        and left == (geometry.resized[0] - 224) // 2
        and top == (geometry.resized[1] - 224) // 2
    )
    redone = image.resize(geometry.resized, Image.Resampling.BICUBIC).crop((left, top, left + w, top + h))
    processor = model.image_processor
    array = (np.asarray(redone, dtype=np.float64) / 255 - processor.image_mean) / processor.image_std
    pixels = model.preprocess([image])[0].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(pixels, array, rtol=0, atol=1e-4)
