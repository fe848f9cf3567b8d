"""Second-order interactions against a per-embedding-dimension backward oracle, completeness, and JVPs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.activations import QuickGELUActivation
from transformers.models.clip import modeling_clip

from clipalign.attribution.interactions import (
    IdentityPost,
    TokenPatchInteractions,
    UnitPost,
    head_jvps,
    integrated_jacobian,
)
from clipalign.attribution.quadrature import quadrature
from clipalign.models.hf_clip import _activation_slope, _layer_norm_jvp

CAPTION = "A white husky and a black dog running."


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def oracle_matrix(adapter, image, caption, layer, nodes, weights, normalize):
    """The paper's formula with one backward per embedding dimension and loops over nodes (exCLIP's way)."""
    [enc] = adapter.encode_captions([caption], "")
    ids = torch.tensor([enc.input_ids])
    ref_ids = torch.tensor([adapter.text_reference_ids(len(enc.input_ids))])
    pixels = adapter.preprocess([image])
    x, r_x = adapter.text_states(ids, layer)[0], adapter.text_states(ref_ids, layer)[0]
    y, r_y = adapter.image_states(pixels, layer)[0], adapter.image_states(torch.zeros_like(pixels), layer)[0]

    def text(h):
        return adapter.text_head(h[None], layer, enc.pool_index)[0]

    def image_embed(h):
        return adapter.image_head(h[None], layer)[0]

    def normalised(fn, at):
        if normalize == "cosine":
            return lambda h: fn(h) / fn(h).norm()
        norm = fn(at).norm().detach()
        return lambda h: fn(h) / norm

    def integrated(fn, inp, ref):
        jac = None
        for alpha, w in zip(nodes, weights, strict=True):
            point = (ref + float(alpha) * (inp - ref)).detach().requires_grad_(True)
            out = fn(point)
            rows = []
            for d in range(out.shape[0]):
                (grad,) = torch.autograd.grad(out[d], point, retain_graph=True)
                rows.append(grad.double())
            step = float(w) * torch.stack(rows)  # (D, S, d)
            jac = step if jac is None else jac + step
        return (jac * (inp - ref).double()[None]).sum(dim=-1)  # (D, S)

    with torch.enable_grad():
        t = integrated(normalised(text, x), x, r_x)
        v = integrated(normalised(image_embed, y), y, r_y)
    return (t.T @ v).numpy()


@pytest.mark.parametrize("rule", ["gauss", "riemann"])
@pytest.mark.parametrize("normalize", ["cosine", "exclip"])
@pytest.mark.parametrize(
    "layer", [pytest.param(2, marks=pytest.mark.slow), 3], ids=["generic-jvp", "closed-form-last-block"]
)
def test_matches_per_dimension_backward_oracle(adapter, rule, normalize, layer):
    method = TokenPatchInteractions(
        adapter, text_block=layer, image_block=layer, steps=4, rule=rule, normalize=normalize
    )
    [result] = method.attribute(photo(), CAPTION)
    nodes, weights = quadrature(rule, 4)
    expected = oracle_matrix(adapter, photo(), CAPTION, layer, nodes, weights, normalize)
    got = np.concatenate([result.cls[:, None], result.matrix], axis=1)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("normalize", ["cosine", "exclip"])
@pytest.mark.parametrize(
    "layers",
    [(-1, -1), pytest.param((0, 2), marks=pytest.mark.slow), pytest.param((1, 0), marks=pytest.mark.slow)],
)
def test_completeness(adapter, normalize, layers):
    method = TokenPatchInteractions(
        adapter, text_block=layers[0], image_block=layers[1], steps=20, normalize=normalize
    )
    [result] = method.attribute(photo(), CAPTION)
    c = result.completeness
    assert result.matrix.sum() + result.cls.sum() == pytest.approx(c.sum, rel=1e-9)
    assert c.target == pytest.approx(c.s_xy - c.s_x_ry - c.s_rx_y + c.s_rx_ry)
    assert abs(c.residual) <= 1e-5 * abs(c.target)


def test_completeness_terms_are_the_cosines(adapter):
    from clipalign.metrics import image_text_cosine

    [result] = TokenPatchInteractions(adapter).attribute(photo(), CAPTION)
    assert result.completeness.s_xy == pytest.approx(
        float(image_text_cosine(adapter, [photo()], [CAPTION], "")[0]), abs=1e-6
    )


def test_exclip_completeness_is_the_bilinear_form_of_embedding_differences(adapter):
    [result] = TokenPatchInteractions(adapter, steps=20, normalize="exclip").attribute(photo(), CAPTION)
    [enc] = adapter.encode_captions([CAPTION], "")
    layer = adapter.num_text_layers - 1
    with torch.no_grad():
        ids = torch.tensor([enc.input_ids])
        ref = torch.tensor([adapter.text_reference_ids(len(enc.input_ids))])
        pixels = adapter.preprocess([photo()])
        ex = adapter.text_head(adapter.text_states(ids, layer), layer, enc.pool_index)[0].double()
        erx = adapter.text_head(adapter.text_states(ref, layer), layer, enc.pool_index)[0].double()
        ey = adapter.image_head(adapter.image_states(pixels, layer), layer)[0].double()
        ery = adapter.image_head(adapter.image_states(torch.zeros_like(pixels), layer), layer)[0].double()
    expected = float((ex - erx) @ (ey - ery) / (ex.norm() * ey.norm()))
    assert result.completeness.sum == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_gauss_beats_riemann_and_error_falls_with_steps(adapter):
    def error(rule, steps):
        [r] = TokenPatchInteractions(adapter, steps=steps, rule=rule).attribute(photo(seed=3), CAPTION)
        return abs(r.completeness.residual / r.completeness.target)

    gauss = [error("gauss", n) for n in (1, 2, 4, 10)]
    riemann = [error("riemann", n) for n in (2, 4, 10, 20)]
    assert gauss[-1] <= riemann[2] / 10
    assert (np.diff(gauss) < 0).all()
    # a right Riemann sum is first order: the error falls, and halves from N=10 to N=20 (N=1 can be
    # lucky, so it is left out)
    assert (np.diff(riemann) < 0).all()
    assert 1.5 < riemann[2] / riemann[3] < 2.5


def fp64_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF's eager attention with the softmax kept in the input dtype (HF's runs in fp32), for fp64 checks."""
    logits = query @ key.transpose(-1, -2) * scaling
    weights = torch.softmax(logits if attention_mask is None else logits + attention_mask, dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def test_one_jvp_column_equals_finite_differences(adapter, monkeypatch):
    monkeypatch.setattr(modeling_clip, "eager_attention_forward", fp64_eager_attention)
    layer = adapter.num_text_layers - 1
    [enc] = adapter.encode_captions(["a black dog"], "")
    x = adapter.text_states(torch.tensor([enc.input_ids]), layer)[0].double()
    r = adapter.text_states(torch.tensor([adapter.text_reference_ids(len(enc.input_ids))]), layer)[0].double()
    adapter.model.double()
    try:

        def head(h):
            return torch.nn.functional.normalize(adapter.text_head(h, layer, enc.pool_index), dim=-1)

        alpha = np.array([0.37])
        with torch.no_grad():
            [cols] = integrated_jacobian(head_jvps(head), x[None], r, alpha, np.array([1.0]))
            for i in range(x.shape[0]):
                step = torch.zeros_like(x)
                step[i] = (x - r)[i]
                point = r + 0.37 * (x - r)
                eps = 1e-6
                fd = (head((point + eps * step)[None]) - head((point - eps * step)[None]))[0] / (2 * eps)
                torch.testing.assert_close(cols[:, i], fd, rtol=1e-6, atol=1e-9)
    finally:
        adapter.model.float()


@pytest.mark.parametrize("normalize", ["cosine", "exclip"])
@pytest.mark.parametrize("from_last", [1, 2, 3, 4], ids=["last-block", "2-blocks", "3-blocks", "4-blocks"])
def test_closed_form_jvps_equal_generic_jvps(adapter, monkeypatch, normalize, from_last):
    """fp64: the adapter's closed-form JVPs equal torch.func JVPs of the plain head at every position, the
    pooled one (query moves too) included. At the last block a change at one position moves one key and
    value; from a block below, the first block sees one position, the blocks above whole sequences."""
    monkeypatch.setattr(modeling_clip, "eager_attention_forward", fp64_eager_attention)
    layer = adapter.num_text_layers - from_last
    [enc] = adapter.encode_captions([CAPTION], "")
    ids = torch.tensor([enc.input_ids, adapter.text_reference_ids(len(enc.input_ids))])
    pixels = adapter.preprocess([photo(), photo(seed=5)])
    adapter.model.double()
    try:
        with torch.no_grad():
            text = adapter.text_states(ids, layer).double()
            image = adapter.image_states(pixels.double(), layer)
            scale = torch.tensor(3.0, dtype=torch.float64)

            def post(e):
                return torch.nn.functional.normalize(e, dim=-1) if normalize == "cosine" else e / scale

            cases = [
                (
                    adapter.text_head_jvps(layer, enc.pool_index, post),
                    lambda h: post(adapter.text_head(h, layer, enc.pool_index)),
                    text,
                ),
                (adapter.image_head_jvps(layer, post), lambda h: post(adapter.image_head(h, layer)), image),
            ]
            for closed_form, head, states in cases:
                points = states[1] + torch.tensor([0.2, 0.9], dtype=torch.float64)[:, None, None] * (
                    states[0] - states[1]
                )
                delta = (states[0] - states[1]).expand_as(points)
                expected = head_jvps(head)(points, delta, 1000)
                dims = adapter.model.config.projection_dim
                assert expected.shape == (2, states.shape[1], dims)
                for chunk in (5, 1000):  # positions in several chunks, or all at once
                    got = closed_form(points, delta, chunk)
                    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    finally:
        adapter.model.float()


@pytest.mark.parametrize("post", [UnitPost(), IdentityPost()])
def test_post_maps_closed_form_jvps_equal_forward_ad(post):
    """fp64: the posts' own JVPs (what the last-block tail uses) equal torch.func JVPs, e broadcasting."""
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(3, 1, 8, dtype=torch.float64, generator=gen)
    de = torch.randn(3, 5, 8, dtype=torch.float64, generator=gen)
    expected = torch.func.jvp(post, (e.expand_as(de).contiguous(),), (de,))[1]
    torch.testing.assert_close(post.jvp(e, de), expected, rtol=1e-12, atol=1e-14)
    plain = e / e.norm(dim=-1, keepdim=True) if isinstance(post, UnitPost) else e
    torch.testing.assert_close(post(e), plain)


def test_layer_norm_and_activation_closed_forms_equal_forward_ad():
    """fp64: the tail's closed-form layer-norm JVP and quick-GELU slope equal torch.func JVPs; any other
    activation falls back to forward AD."""
    gen = torch.Generator().manual_seed(1)
    norm = torch.nn.LayerNorm(8, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.normal_(generator=gen)
        norm.bias.normal_(generator=gen)
    x = torch.randn(3, 1, 8, dtype=torch.float64, generator=gen)
    dx = torch.randn(3, 5, 8, dtype=torch.float64, generator=gen)
    y, dy = _layer_norm_jvp(norm, x, dx)
    expected = torch.func.jvp(norm, (x.expand_as(dx).contiguous(),), (dx,))[1]
    torch.testing.assert_close(dy, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(y, norm(x), rtol=0, atol=0)
    for activation in (QuickGELUActivation(), torch.nn.GELU()):
        slope = _activation_slope(activation, x)
        expected = torch.func.jvp(activation, (x,), (torch.ones_like(x),))[1]
        torch.testing.assert_close(slope, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("normalize", ["cosine", "exclip"])
def test_library_posts_closed_form_jvps_equal_generic_jvps(adapter, monkeypatch, normalize):
    """fp64, with the posts TokenPatchInteractions passes (closed-form post JVPs): the adapter's last-block
    JVPs equal torch.func JVPs of the plain heads."""
    monkeypatch.setattr(modeling_clip, "eager_attention_forward", fp64_eager_attention)
    last = adapter.num_text_layers - 1
    [enc] = adapter.encode_captions([CAPTION], "")
    ids = torch.tensor([enc.input_ids, adapter.text_reference_ids(len(enc.input_ids))])
    pixels = adapter.preprocess([photo(), photo(seed=5)])
    method = TokenPatchInteractions(adapter, text_block=last, image_block=last, normalize=normalize)
    adapter.model.double()
    try:
        with torch.no_grad():
            text = adapter.text_states(ids, last)
            image = adapter.image_states(pixels.double(), last)

            post = method._post()

            def f(h):
                return post(adapter.text_head(h, last, enc.pool_index))

            def g(h):
                return post(adapter.image_head(h, last))

            cases = [
                (adapter.text_head_jvps(last, enc.pool_index, post), f, text),
                (adapter.image_head_jvps(last, post), g, image),
            ]
            for closed_form, head, states in cases:
                # two points on the path of one pair, one on that of a pair with twice the change
                change = states[0] - states[1]
                delta = torch.stack([change, change, 2 * change])
                alphas = torch.tensor([0.3, 0.8, 0.4], dtype=torch.float64)[:, None, None]
                points = states[1] + alphas * delta
                got = closed_form(points, delta, 5)
                torch.testing.assert_close(got, head_jvps(head)(points, delta, 7), rtol=1e-9, atol=1e-12)
    finally:
        adapter.model.float()


@pytest.mark.parametrize(
    "layer", [pytest.param(1, marks=pytest.mark.slow), -1], ids=["generic-jvp", "closed-form-last-block"]
)
def test_chunk_size_does_not_change_the_result(adapter, layer):
    a = TokenPatchInteractions(adapter, text_block=layer, image_block=layer, chunk=7).attribute(
        photo(), CAPTION
    )[0]
    b = TokenPatchInteractions(adapter, text_block=layer, image_block=layer, chunk=1000).attribute(
        photo(), CAPTION
    )[0]
    np.testing.assert_allclose(a.matrix, b.matrix, rtol=0, atol=1e-6 * np.abs(b.matrix).max())


@pytest.mark.parametrize("normalize", ["cosine", "exclip"])
def test_several_pairs_in_one_call_equal_one_by_one(adapter, normalize):
    """Pairs after the first reuse the cached image reference: the same numbers as a fresh method per pair."""
    images, captions = [photo(seed=1), photo(80, 40, 2), photo(seed=1)], ["a dog", CAPTION, CAPTION]

    def method():
        return TokenPatchInteractions(adapter, normalize=normalize)

    together = method().attribute(images, captions, on_error="raise")
    for image, caption, got in zip(images, captions, together, strict=True):
        [alone] = method().attribute(image, caption, on_error="raise")
        for ours, theirs in ((got.matrix, alone.matrix), (got.cls, alone.cls)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())
        for name in ("s_xy", "s_x_ry", "s_rx_y", "s_rx_ry"):
            expected = getattr(alone.completeness, name)
            assert getattr(got.completeness, name) == pytest.approx(expected, rel=1e-6)
        # sum and target are differences of those cosines: equal to 1e-6 of the cosines' scale
        assert got.completeness.sum == pytest.approx(alone.completeness.sum, abs=1e-6)
        assert got.completeness.target == pytest.approx(alone.completeness.target, abs=1e-6)


def test_several_pairs_and_no_hooks_left(adapter):
    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in adapter.model.modules())

    before = hooks()
    results = TokenPatchInteractions(adapter).attribute([photo(seed=1), photo(80, 40, 2)], ["a dog", CAPTION])
    assert [r.caption for r in results] == ["a dog", CAPTION]
    assert results[0].matrix.shape == (4, 16) and results[1].matrix.shape == (len(results[1].tokens), 16)
    assert hooks() == before
    with torch.no_grad():
        [enc] = adapter.encode_captions(["a dog"], "")
        plain = adapter.model.get_text_features(input_ids=torch.tensor([enc.input_ids])).pooler_output
        ours = adapter.text_embeddings(adapter.collate([enc])).embeds
    torch.testing.assert_close(plain, ours)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be ≥ 1"),
        ({"text_block": 4}, "text layer must be in -4..3"),
        ({"image_block": -5}, "image layer must be in -4..3"),
        ({"rule": "simpson"}, "rule must be"),
        ({"normalize": "l1"}, "normalize must be"),
    ],
)
def test_invalid_settings(adapter, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenPatchInteractions(adapter, **kwargs)


def test_result_json_schema(adapter):
    import json

    [result] = TokenPatchInteractions(adapter).attribute(photo(), "a black dog")
    data = json.loads(result.to_json())
    assert data["tokens"][0] == "<|startoftext|>" and data["tokens"][-1] == "<|endoftext|>"
    assert (
        data["grid"] == [4, 4] and len(data["matrix"]) == len(data["tokens"]) and len(data["matrix"][0]) == 16
    )
    assert [w["word"] for w in data["words"]] == ["a", "black", "dog"] and data["words"][1]["tokens"] == [2]
    assert set(data["completeness"]) >= {"sum", "target", "residual", "s_xy", "s_x_ry", "s_rx_y", "s_rx_ry"}
    assert len(data["cls"]) == len(data["tokens"])
