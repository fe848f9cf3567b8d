"""First-order baselines: each method's defining property on a tiny random CLIP and a tiny random SigLIP,
against plain restatements.

The references below re-derive every map from the HF ``CLIPModel``'s (``SiglipModel``'s) own weights and
its own hidden states, one patch or one head at a time, never through the library's helpers. On SigLIP
(no class token) the attention-pooling head's probe attention plays the class token's part (see
``attribution/baselines/towers.py``); MaskCLIP's map there is also checked against HF's own
``nn.MultiheadAttention`` told, by its attention mask, to attend to one patch alone.
"""

from __future__ import annotations

import doctest
import importlib
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clipalign import load_model
from clipalign.attribution.baselines import (
    BASELINES,
    CentreMap,
    CLIPSurgery,
    GradECLIP,
    IntegratedGradients,
    MaskCLIP,
    PatchMap,
    RandomMap,
    get_baseline,
)
from clipalign.attribution.baselines.clipsurgery import feature_surgery
from clipalign.cli.main import main
from clipalign.results import ItemError
from clipalign.synthetic import write_dataset
from clipalign.testing import example_image, save_random_siglip

CAPTION = "a red ball on green grass"


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory):
    return save_random_siglip(tmp_path_factory.mktemp("tiny-siglip"), "siglip", seed=0)


@pytest.fixture(scope="module")
def siglip(siglip_dir):
    return load_model(siglip_dir, device="cpu")


@pytest.fixture(params=["clip", "siglip"])
def model(request: pytest.FixtureRequest):
    """Each family's tiny model in turn: CLIP (class token), SigLIP (attention-pooling head)."""
    return request.getfixturevalue("adapter" if request.param == "clip" else "siglip")


def ln(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """A layer norm written out."""
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def last_block_input(adapter, image) -> torch.Tensor:
    """The states (S, d) entering the last vision block, from HF's own forward."""
    pixels = adapter.preprocess([image])
    out = adapter.model.vision_model(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[-2][0]


def text_direction(adapter, text: str) -> torch.Tensor:
    inputs = adapter.collate(adapter.encode_captions([text], ""))
    return unit(adapter.text_embeddings(inputs).embeds[0])


@pytest.mark.parametrize("residual", [True, False])
def test_maskclip_is_the_value_path_cosine_of_each_patch(adapter, residual):
    image = example_image()
    method = MaskCLIP(adapter, residual=residual)
    [result] = method.attribute([image], [CAPTION], "red ball", on_error="raise")
    clip = adapter.model
    block = clip.vision_model.encoder.layers[-1]
    mlp = block.mlp
    states = last_block_input(adapter, image)
    direction = text_direction(adapter, "red ball")
    rows, cols = adapter.patch_grid
    for patch in (0, 5, rows * cols - 1):
        x = states[1 + patch]
        value = linear(block.self_attn.v_proj, ln(block.layer_norm1, x))
        feature = linear(block.self_attn.out_proj, value)
        if residual:
            feature = x + feature
            feature = feature + linear(
                mlp.fc2, mlp.activation_fn(linear(mlp.fc1, ln(block.layer_norm2, feature)))
            )
        embedded = ln(clip.vision_model.post_layernorm, feature) @ clip.visual_projection.weight.T
        expected = float(unit(embedded) @ direction)
        assert math.isclose(result.values.reshape(-1)[patch], expected, abs_tol=1e-5)
    assert result.text == "red ball" and result.span == (2, 10)


def test_gradeclip_is_relu_of_loosened_attention_times_gradient_weighted_values(adapter):
    image = example_image()
    [result] = GradECLIP(adapter).attribute([image], [CAPTION], on_error="raise")
    clip = adapter.model
    block = clip.vision_model.encoder.layers[-1]
    attn = block.self_attn
    x = last_block_input(adapter, image).detach()
    direction = text_direction(adapter, CAPTION)
    z = ln(block.layer_norm1, x)
    q, k, v = linear(attn.q_proj, z), linear(attn.k_proj, z), linear(attn.v_proj, z)
    heads, hd = attn.num_heads, attn.head_dim
    pieces = []
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        weights = torch.softmax(k[:, cols] @ q[0, cols] * hd**-0.5, dim=0)
        pieces.append(weights @ v[:, cols])
    o = torch.cat(pieces).detach().requires_grad_(True)

    def cosine(o: torch.Tensor) -> torch.Tensor:
        hidden = x[0] + linear(attn.out_proj, o)
        hidden = hidden + linear(
            block.mlp.fc2, block.mlp.activation_fn(linear(block.mlp.fc1, ln(block.layer_norm2, hidden)))
        )
        return (
            unit(ln(clip.vision_model.post_layernorm, hidden) @ clip.visual_projection.weight.T) @ direction
        )

    value = cosine(o)
    # the restated block reproduces the model's own image–text cosine
    whole = unit(adapter.image_embeddings(adapter.preprocess([image]))[0]) @ direction
    assert math.isclose(float(value.detach()), float(whole), abs_tol=1e-5)
    [w] = torch.autograd.grad(value, o)
    sims = [float(unit(q[0]) @ unit(k[i])) for i in range(1, len(k))]
    low, high = min(sims), max(sims)
    for i, sim in enumerate(sims):
        loosened = (sim - low) / (high - low)
        expected = max(0.0, loosened * float(w @ v[1 + i]))
        assert math.isclose(result.values.reshape(-1)[i], expected, abs_tol=1e-6)


def test_feature_surgery_removes_the_class_mean_of_the_weighted_products():
    gen = torch.Generator().manual_seed(0)
    patches = unit(torch.randn(2, 5, 8, generator=gen))
    image = unit(torch.randn(2, 8, generator=gen))
    texts = unit(torch.randn(2, 3, 8, generator=gen))
    got = feature_surgery(patches, image, texts, temperature=2.0)
    for b in range(2):
        logits = [2.0 * float(image[b] @ texts[b, k]) for k in range(3)]
        exps = [math.exp(v) for v in logits]
        prob = [e / sum(exps) for e in exps]
        weight = [p / (sum(prob) / 3) for p in prob]
        for i in range(5):
            for k in range(3):
                total = 0.0
                for c in range(8):
                    products = [float(patches[b, i, c] * texts[b, j, c]) * weight[j] for j in range(3)]
                    total += products[k] - sum(products) / 3
                assert math.isclose(float(got[b, i, k]), total, abs_tol=1e-6)
    # the redundant (class-mean) part is gone: the scores of the classes sum to zero
    assert torch.allclose(got.sum(-1), torch.zeros(2, 5), atol=1e-6)


def test_clipsurgery_scores_the_vv_path_against_the_empty_text(adapter):
    image = example_image()
    [result] = CLIPSurgery(adapter, blocks=2).attribute([image], [CAPTION], "ball", on_error="raise")
    clip = adapter.model
    layers = clip.vision_model.encoder.layers
    pixels = adapter.preprocess([image])
    hidden = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    surgery = hidden[-3][0].clone()
    for depth in (len(layers) - 2, len(layers) - 1):
        attn = layers[depth].self_attn
        v = linear(attn.v_proj, ln(layers[depth].layer_norm1, hidden[depth][0]))
        heads, hd = attn.num_heads, attn.head_dim
        out = torch.zeros_like(v)
        for h in range(heads):
            cols = slice(h * hd, (h + 1) * hd)
            weights = torch.softmax(v[:, cols] @ v[:, cols].T * hd**-0.5, dim=-1)
            out[:, cols] = weights @ v[:, cols]
        surgery = surgery + linear(attn.out_proj, out)
    features = unit(ln(clip.vision_model.post_layernorm, surgery[1:]) @ clip.visual_projection.weight.T)
    image_embedding = unit(adapter.image_embeddings(pixels)[0])
    span = text_direction(adapter, "ball")
    ids = torch.tensor([[adapter.tokenizer.bos_token_id, adapter.tokenizer.eos_token_id]])
    empty = unit(clip.get_text_features(input_ids=ids).pooler_output.reshape(-1))
    prob = torch.softmax(2.0 * torch.stack([image_embedding @ span, image_embedding @ empty]), 0)
    w = prob / prob.mean()
    expected = (w[0] * features @ span - w[1] * features @ empty) / 2
    np.testing.assert_allclose(result.values.reshape(-1), expected.detach().numpy(), atol=1e-5)


def test_integrated_gradients_is_complete(model):
    image = example_image()
    [result] = IntegratedGradients(model, steps=64).attribute(
        [image], [CAPTION], "red ball", on_error="raise"
    )
    direction = text_direction(model, "red ball")
    pixels = model.preprocess([image])
    with torch.no_grad():
        fx = unit(model.image_embeddings(pixels)[0]) @ direction
        f0 = unit(model.image_embeddings(torch.zeros_like(pixels))[0]) @ direction
    target = float(fx - f0)
    delta = result.details["delta"]
    assert abs(result.values.sum() - target) <= abs(delta) + 1e-6
    assert abs(delta) < 0.02 * abs(target)
    assert math.isclose(result.details["target"], target, abs_tol=1e-6)


def test_random_is_reproducible_by_seed(adapter):
    pairs = ([example_image(), example_image(48, 64)], ["a red ball", "grass"])
    first = RandomMap(adapter, seed=1).attribute(*pairs, on_error="raise")
    again = RandomMap(adapter, seed=1).attribute(*pairs, on_error="raise")
    other = RandomMap(adapter, seed=2).attribute(*pairs, on_error="raise")
    for a, b, c in zip(first, again, other, strict=True):
        assert np.array_equal(a.values, b.values)
        assert not np.array_equal(a.values, c.values)
    assert not np.array_equal(first[0].values, first[1].values)


def test_centre_is_a_symmetric_peak_at_the_centre(adapter):
    [result] = CentreMap(adapter).attribute([example_image()], [CAPTION], on_error="raise")
    values = result.values
    assert np.allclose(values, values[::-1]) and np.allclose(values, values[:, ::-1])
    assert np.allclose(values, values.T)
    rows, cols = values.shape
    assert values.argmax() in {(rows // 2 - 1 + r) * cols + cols // 2 - 1 + c for r in (0, 1) for c in (0, 1)}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_batched_equals_one_pair_at_a_time(model, name):
    images = [example_image(), example_image(48, 64), example_image(80, 40)]
    captions = ["a red ball on grass", "a blue sky", "green grass under a sky"]
    spans = ["red ball", (2, 6), None]
    settings = {"steps": 8} if name == "ig" else {}
    batched = get_baseline(name, model, batch_size=3, **settings).attribute(images, captions, spans)
    alone = get_baseline(name, model, batch_size=1, **settings).attribute(images, captions, spans)
    for a, b in zip(batched, alone, strict=True):
        assert isinstance(a, PatchMap) and isinstance(b, PatchMap)
        assert a.grid == model.patch_grid and np.isfinite(a.values).all()
        np.testing.assert_allclose(a.values, b.values, rtol=1e-4, atol=1e-6)
        assert a.heatmap().shape == (b.geometry.original[1], b.geometry.original[0])


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_a_bad_pair_is_an_item_error_and_the_others_are_computed(adapter, tmp_path, name):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    images = [example_image(), broken, example_image(), example_image()]
    captions = [CAPTION, CAPTION, CAPTION, ""]
    spans = ["red ball", "red ball", "purple cow", None]
    settings = {"steps": 4} if name == "ig" else {}
    results = get_baseline(name, adapter, **settings).attribute(images, captions, spans)
    assert isinstance(results[0], PatchMap)
    assert [type(r) for r in results[1:]] == [ItemError] * 3
    assert [r.index for r in results[1:]] == [1, 2, 3]
    assert "purple cow" in results[2].error
    with pytest.raises(ValueError, match="does not occur"):
        get_baseline(name, adapter).attribute(images[2], captions[2], spans[2], on_error="raise")


def test_caption_text_embeds_the_whole_caption(adapter):
    [span] = MaskCLIP(adapter).attribute(example_image(), CAPTION, "ball", on_error="raise")
    [whole] = MaskCLIP(adapter, text="caption").attribute(example_image(), CAPTION, "ball", on_error="raise")
    assert (span.text, whole.text) == ("ball", CAPTION)
    assert not np.allclose(span.values, whole.values)


def test_registry_and_adapters_without_clip_internals(adapter):
    assert set(BASELINES) == {"maskclip", "ig", "clipsurgery", "gradeclip", "random", "centre"}
    with pytest.raises(ValueError, match="unknown baseline 'nope'"):
        get_baseline("nope", adapter)
    with pytest.raises(ValueError, match="steps"):
        get_baseline("ig", adapter, steps=0)

    class Foreign:
        """An adapter whose ``model`` is not a HF CLIPModel (another family)."""

        def __init__(self) -> None:
            self.model = object()

        def __getattr__(self, name: str):
            return getattr(adapter, name)

    for name in ("maskclip", "gradeclip", "clipsurgery"):
        with pytest.raises(ValueError, match="needs a Hugging Face CLIPModel or SiglipModel") as info:
            get_baseline(name, Foreign()).attribute(example_image(), CAPTION, on_error="raise")
        assert "ig, random and centre work on any model" in str(info.value) and "\n" not in str(info.value)
    # the model-free maps need only the patch grid and geometry
    [centre] = get_baseline("centre", Foreign()).attribute(example_image(), CAPTION, on_error="raise")
    assert centre.grid == adapter.patch_grid


@pytest.mark.parametrize("name", ["maskclip", "gradeclip", "ig", "clipsurgery", "reference"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"clipalign.attribution.baselines.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no >>> examples"
    assert result.failed == 0


def test_patch_map_serialises_and_settings_key_only_what_changes_numbers(adapter):
    [m] = GradECLIP(adapter).attribute(example_image(80, 40), CAPTION, (2, 10), on_error="raise")
    row = json.loads(json.dumps(m.to_dict()))
    assert row["method"] == "gradeclip" and row["span"] == [2, 10] and len(row["values"]) == m.grid[0]
    heat = m.heatmap()
    assert heat.shape == (40, 80) and np.isnan(heat[:, 0]).all() and not np.isnan(heat[:, 40]).any()
    ig = IntegratedGradients(adapter, steps=5, batch_size=2, internal_batch_size=4)
    assert ig.settings.to_dict() == {"text": "span", "template": "", "steps": 5, "method": "gausslegendre"}


# --- SigLIP: the attention-pooling head's probe attention in the class token's part ----------------


def head_projections(head) -> list[SimpleNamespace]:
    """The head attention's query, key and value projections, cut from its packed in-projection."""
    d = head.attention.embed_dim
    w, b = head.attention.in_proj_weight, head.attention.in_proj_bias
    return [SimpleNamespace(weight=w[i * d : (i + 1) * d], bias=b[i * d : (i + 1) * d]) for i in range(3)]


def head_mlp(head, hidden: torch.Tensor) -> torch.Tensor:
    """The head's MLP with its residual, written out."""
    mlp = head.mlp
    return hidden + linear(mlp.fc2, mlp.activation_fn(linear(mlp.fc1, ln(head.layernorm, hidden))))


def post_normed(siglip, image) -> torch.Tensor:
    """HF's own last_hidden_state (P, d): the patch states after every block and the post layer norm."""
    return siglip.model.vision_model(pixel_values=siglip.preprocess([image])).last_hidden_state[0]


@pytest.mark.parametrize("residual", [True, False])
def test_siglip_maskclip_is_the_map_head_attending_to_each_patch_alone(siglip, residual):
    image = example_image()
    [result] = MaskCLIP(siglip, residual=residual).attribute([image], [CAPTION], "red ball", on_error="raise")
    head = siglip.model.vision_model.head
    x = post_normed(siglip, image)
    direction = text_direction(siglip, "red ball")
    value = head_projections(head)[2]
    patches = x.shape[0]
    for patch in range(patches):
        feature = linear(head.attention.out_proj, linear(value, x[patch]))
        if residual:
            feature = head_mlp(head, feature)
            # HF's own head with its attention masked to this patch gives the same feature
            mask = torch.full((1, patches), float("-inf"))
            mask[0, patch] = 0.0
            attended = head.attention(head.probe, x[None], x[None], attn_mask=mask)[0]
            torch.testing.assert_close(head_mlp(head, attended)[0, 0], feature, atol=1e-5, rtol=0)
        expected = float(unit(feature) @ direction)
        assert math.isclose(result.values.reshape(-1)[patch], expected, abs_tol=1e-5)


def test_siglip_gradeclip_weights_the_probe_attention_values_by_the_gradient_at_its_output(siglip):
    image = example_image()
    [result] = GradECLIP(siglip).attribute([image], [CAPTION], on_error="raise")
    head = siglip.model.vision_model.head
    x = post_normed(siglip, image).detach()
    direction = text_direction(siglip, CAPTION)
    query, key, value = head_projections(head)
    q, k, v = linear(query, head.probe[0, 0]), linear(key, x), linear(value, x)
    heads = head.attention.num_heads
    hd = q.shape[0] // heads
    pieces = []
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        pieces.append(torch.softmax(k[:, cols] @ q[cols] * hd**-0.5, dim=0) @ v[:, cols])
    o = torch.cat(pieces).detach().requires_grad_(True)
    cosine = unit(head_mlp(head, linear(head.attention.out_proj, o))) @ direction
    # the restated head reproduces the model's own image–text cosine
    whole = unit(siglip.image_embeddings(siglip.preprocess([image]))[0]) @ direction
    assert math.isclose(float(cosine.detach()), float(whole), abs_tol=1e-5)
    [w] = torch.autograd.grad(cosine, o)
    sims = [float(unit(q) @ unit(k[i])) for i in range(len(k))]
    low, high = min(sims), max(sims)
    for i, sim in enumerate(sims):
        expected = max(0.0, (sim - low) / (high - low) * float(w @ v[i]))
        assert math.isclose(result.values.reshape(-1)[i], expected, abs_tol=1e-6)
    assert (result.values > 0).any()


def test_siglip_clipsurgery_runs_the_vv_path_and_maps_tokens_through_the_head(siglip):
    image = example_image()
    [result] = CLIPSurgery(siglip, blocks=2).attribute([image], [CAPTION], "ball", on_error="raise")
    vision = siglip.model.vision_model
    layers = vision.encoder.layers
    pixels = siglip.preprocess([image])
    hidden = [vision.embeddings(pixels)]
    for layer in layers:
        hidden.append(layer(hidden[-1], None))
    surgery = hidden[-3][0].clone()
    for depth in (len(layers) - 2, len(layers) - 1):
        attn = layers[depth].self_attn
        v = linear(attn.v_proj, ln(layers[depth].layer_norm1, hidden[depth][0]))
        out = torch.zeros_like(v)
        hd = attn.head_dim
        for h in range(attn.num_heads):
            cols = slice(h * hd, (h + 1) * hd)
            out[:, cols] = torch.softmax(v[:, cols] @ v[:, cols].T * hd**-0.5, dim=-1) @ v[:, cols]
        surgery = surgery + linear(attn.out_proj, out)
    head = vision.head
    values = linear(head_projections(head)[2], ln(vision.post_layernorm, surgery))
    features = unit(head_mlp(head, linear(head.attention.out_proj, values)))
    image_embedding = unit(siglip.image_embeddings(pixels)[0])
    span = text_direction(siglip, "ball")
    pad = siglip.tokenizer.pad_token_id  # SigLIP's empty text: </s>, padded to the context
    ids = torch.tensor([[siglip.tokenizer.eos_token_id] + [pad] * (siglip.max_text_tokens - 1)])
    empty = unit(siglip.model.get_text_features(input_ids=ids).pooler_output.reshape(-1))
    prob = torch.softmax(2.0 * torch.stack([image_embedding @ span, image_embedding @ empty]), 0)
    w = prob / prob.mean()
    expected = (w[0] * features @ span - w[1] * features @ empty) / 2
    np.testing.assert_allclose(result.values.reshape(-1), expected.detach().numpy(), atol=1e-5)


def test_eval_pointing_synthetic_scores_every_baseline_on_siglip(siglip_dir, tmp_path):
    annotations = write_dataset(tmp_path / "synthetic", 2, seed=0)
    out = tmp_path / "out"
    methods = "maskclip,gradeclip,clipsurgery,ig,random,centre"
    argv = ["eval", "pointing-synthetic", "--annotations", str(annotations)]
    argv += ["--images", str(annotations.parent / "images"), "--model", str(siglip_dir)]
    assert main([*argv, "--out", str(out), "--no-progress", "--method", methods]) == 0
    report = json.loads((out / "pointing-synthetic" / "report.json").read_text())
    scored = report["metrics"]["methods"]
    assert list(scored) == methods.split(",")
    for name, row in scored.items():
        assert row["failed"] == 0 and row["items"] > 0 and 0 <= row["accuracy"] <= 1, name
