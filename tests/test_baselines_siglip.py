"""First-order baselines on SigLIP (no class token; an attention-pooling head gives the embedding).

The MAP head's probe attention plays the class token's part (see ``attribution/baselines/towers.py``).
Each reference below restates a method on a tiny random SigLIP from the HF ``SiglipModel``'s own modules
and hidden states, one patch or one head at a time; MaskCLIP's is also checked against HF's own
``nn.MultiheadAttention`` told (by its attention mask) to attend to one patch alone.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clipalign import load_model
from clipalign.attribution.baselines import BASELINES, PatchMap, get_baseline
from clipalign.cli.main import main
from clipalign.synthetic import write_dataset
from clipalign.testing import example_image, save_random_siglip

CAPTION = "a red ball on green grass"


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory):
    return save_random_siglip(tmp_path_factory.mktemp("tiny-siglip"), "siglip", seed=0)


@pytest.fixture(scope="module")
def siglip(siglip_dir):
    return load_model(siglip_dir, device="cpu")


def ln(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias


def linear(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x @ weight.T + bias


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def mlp(module, x: torch.Tensor) -> torch.Tensor:
    hidden = module.activation_fn(linear(module.fc1.weight, module.fc1.bias, x))
    return linear(module.fc2.weight, module.fc2.bias, hidden)


def head_projections(head):
    """The head attention's (W, b) of query, key and value, cut from its packed in-projection."""
    d = head.attention.embed_dim
    w, b = head.attention.in_proj_weight, head.attention.in_proj_bias
    return [(w[i * d : (i + 1) * d], b[i * d : (i + 1) * d]) for i in range(3)]


def after_attention(head, o: torch.Tensor) -> torch.Tensor:
    """The head from its attention output: output projection, then + mlp(layernorm(·))."""
    out = head.attention.out_proj
    hidden = linear(out.weight, out.bias, o)
    return hidden + mlp(head.mlp, ln(head.layernorm, hidden))


def post_normed(siglip, image) -> torch.Tensor:
    """HF's own last_hidden_state (P, d): the patch states after every block and the post layer norm."""
    pixels = siglip.preprocess([image])
    return siglip.model.vision_model(pixel_values=pixels).last_hidden_state[0]


def text_direction(siglip, text: str) -> torch.Tensor:
    inputs = siglip.collate(siglip.encode_captions([text], ""))
    return unit(siglip.text_embeddings(inputs).embeds[0])


@pytest.mark.parametrize("residual", [True, False])
def test_maskclip_is_the_map_head_attending_to_each_patch_alone(siglip, residual):
    image = example_image()
    [result] = get_baseline("maskclip", siglip, residual=residual).attribute(
        [image], [CAPTION], "red ball", on_error="raise"
    )
    head = siglip.model.vision_model.head
    x = post_normed(siglip, image)
    direction = text_direction(siglip, "red ball")
    (_, _), (_, _), (wv, bv) = head_projections(head)
    patches = x.shape[0]
    for patch in range(patches):
        value = linear(wv, bv, x[patch])
        out = head.attention.out_proj
        feature = after_attention(head, value) if residual else linear(out.weight, out.bias, value)
        expected = float(unit(feature) @ direction)
        assert math.isclose(result.values.reshape(-1)[patch], expected, abs_tol=1e-5)
        if residual:  # HF's own head, its attention masked to this patch: the same feature
            mask = torch.full((1, patches), float("-inf"))
            mask[0, patch] = 0.0
            attended = head.attention(head.probe, x[None], x[None], attn_mask=mask)[0]
            pooled = attended + head.mlp(head.layernorm(attended))
            torch.testing.assert_close(pooled[0, 0], feature, atol=1e-5, rtol=0)
    assert result.grid == siglip.patch_grid


def test_gradeclip_weights_the_probe_attention_values_by_the_gradient_at_its_output(siglip):
    image = example_image()
    [result] = get_baseline("gradeclip", siglip).attribute([image], [CAPTION], on_error="raise")
    head = siglip.model.vision_model.head
    x = post_normed(siglip, image).detach()
    direction = text_direction(siglip, CAPTION)
    (wq, bq), (wk, bk), (wv, bv) = head_projections(head)
    q, k, v = linear(wq, bq, head.probe[0, 0]), linear(wk, bk, x), linear(wv, bv, x)
    heads = head.attention.num_heads
    hd = q.shape[0] // heads
    pieces = []
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        weights = torch.softmax(k[:, cols] @ q[cols] * hd**-0.5, dim=0)
        pieces.append(weights @ v[:, cols])
    o = torch.cat(pieces).detach().requires_grad_(True)
    value = unit(after_attention(head, o)) @ direction
    # the restated head reproduces the model's own image–text cosine
    whole = unit(siglip.image_embeddings(siglip.preprocess([image]))[0]) @ direction
    assert math.isclose(float(value.detach()), float(whole), abs_tol=1e-5)
    [w] = torch.autograd.grad(value, o)
    sims = [float(unit(q) @ unit(k[i])) for i in range(len(k))]
    low, high = min(sims), max(sims)
    for i, sim in enumerate(sims):
        expected = max(0.0, (sim - low) / (high - low) * float(w @ v[i]))
        assert math.isclose(result.values.reshape(-1)[i], expected, abs_tol=1e-6)
    assert (result.values > 0).any()


def test_clipsurgery_runs_the_vv_path_and_maps_tokens_through_the_head(siglip):
    image = example_image()
    [result] = get_baseline("clipsurgery", siglip, blocks=2).attribute(
        [image], [CAPTION], "ball", on_error="raise"
    )
    vision = siglip.model.vision_model
    layers = vision.encoder.layers
    pixels = siglip.preprocess([image])
    hidden = [vision.embeddings(pixels)]
    for layer in layers:
        hidden.append(layer(hidden[-1], None))
    surgery = hidden[-3][0].clone()
    for depth in (len(layers) - 2, len(layers) - 1):
        attn = layers[depth].self_attn
        v = linear(attn.v_proj.weight, attn.v_proj.bias, ln(layers[depth].layer_norm1, hidden[depth][0]))
        out = torch.zeros_like(v)
        hd = attn.head_dim
        for h in range(attn.num_heads):
            cols = slice(h * hd, (h + 1) * hd)
            out[:, cols] = torch.softmax(v[:, cols] @ v[:, cols].T * hd**-0.5, dim=-1) @ v[:, cols]
        surgery = surgery + linear(attn.out_proj.weight, attn.out_proj.bias, out)
    head = vision.head
    (_, _), (_, _), (wv, bv) = head_projections(head)
    features = unit(after_attention(head, linear(wv, bv, ln(vision.post_layernorm, surgery))))
    image_embedding = unit(siglip.image_embeddings(pixels)[0])
    span = text_direction(siglip, "ball")
    pad = siglip.tokenizer.pad_token_id  # SigLIP's empty text: </s>, padded to the context with </s>
    ids = torch.tensor([[siglip.tokenizer.eos_token_id] + [pad] * (siglip.max_text_tokens - 1)])
    empty = unit(siglip.model.get_text_features(input_ids=ids).pooler_output.reshape(-1))
    prob = torch.softmax(2.0 * torch.stack([image_embedding @ span, image_embedding @ empty]), 0)
    w = prob / prob.mean()
    expected = (w[0] * features @ span - w[1] * features @ empty) / 2
    np.testing.assert_allclose(result.values.reshape(-1), expected.detach().numpy(), atol=1e-5)


def test_integrated_gradients_is_complete_on_siglip(siglip):
    image = example_image()
    [result] = get_baseline("ig", siglip, steps=64).attribute(
        [image], [CAPTION], "red ball", on_error="raise"
    )
    direction = text_direction(siglip, "red ball")
    pixels = siglip.preprocess([image])
    with torch.no_grad():
        target = float(
            unit(siglip.image_embeddings(pixels)[0]) @ direction
            - unit(siglip.image_embeddings(torch.zeros_like(pixels))[0]) @ direction
        )
    assert abs(result.values.sum() - target) <= abs(result.details["delta"]) + 1e-6
    assert abs(result.details["delta"]) < 0.02 * abs(target)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_on_siglip_batched_equals_alone(siglip, name):
    images = [example_image(), example_image(48, 64), example_image(80, 40)]
    captions = ["a red ball on grass", "a blue sky", "green grass under a sky"]
    spans = ["red ball", (2, 6), None]
    settings = {"steps": 8} if name == "ig" else {}
    batched = get_baseline(name, siglip, batch_size=3, **settings).attribute(images, captions, spans)
    alone = get_baseline(name, siglip, batch_size=1, **settings).attribute(images, captions, spans)
    for a, b in zip(batched, alone, strict=True):
        assert isinstance(a, PatchMap) and isinstance(b, PatchMap)
        assert a.grid == siglip.patch_grid and np.isfinite(a.values).all()
        np.testing.assert_allclose(a.values, b.values, rtol=1e-4, atol=1e-6)
        # SigLIP resizes without a crop: the heatmap covers the whole image
        assert not np.isnan(a.heatmap()).any()


def test_a_model_of_another_family_is_refused_in_one_line(siglip):
    class Foreign:
        """An adapter whose ``model`` is neither a HF CLIPModel nor a SiglipModel."""

        def __init__(self) -> None:
            self.model = object()

        def __getattr__(self, name: str):
            return getattr(siglip, name)

    for name in ("maskclip", "gradeclip", "clipsurgery"):
        with pytest.raises(ValueError, match="ig, random and centre work on any model") as info:
            get_baseline(name, Foreign()).attribute(example_image(), CAPTION, on_error="raise")
        assert "\n" not in str(info.value) and name in str(info.value)


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
        assert row["failed"] == 0 and row["items"] > 0, name
        assert 0 <= row["accuracy"] <= 1, name
