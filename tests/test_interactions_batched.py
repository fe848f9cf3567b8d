"""Pair-batched interactions: the same numbers as the per-pair path, per-pair errors kept apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipalign.attribution.interactions import TokenPatchInteractions, head_jvps
from clipalign.attribution.quadrature import quadrature
from clipalign.images import load_image
from clipalign.results import Interactions, ItemError
from clipalign.settings import InteractionSettings

# lengths 11, 5, 11, 4, 5 tokens with SOT and EOT: two pairs of equal length share their text calls
CAPTIONS = [
    "A white husky and a black dog running.",
    "a red ball",
    "two cats sleep on a big green sofa.",
    "a dog",
    "a blue cup",
]


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def images() -> list[Image.Image]:
    return [photo(seed=1), photo(80, 40, 2), photo(40, 90, 3), photo(seed=4), photo(seed=1)]


@torch.no_grad()
def per_pair(adapter, image, caption: str, settings: InteractionSettings) -> np.ndarray:
    """The per-pair path as clipalign computed it before batching, written plainly: A with the CLS column
    first (tokens × (1 + patches)), from one pair's states, its own reference and its own JVP calls."""
    text_block = settings.text_block % adapter.num_text_layers
    image_block = settings.image_block % adapter.num_vision_layers
    nodes, weights = quadrature(settings.rule, settings.steps)
    [enc] = adapter.encode_captions([caption], settings.template)
    reference = adapter.text_reference_ids(len(enc.input_ids), settings.text_reference)
    x, r_x = adapter.text_states(torch.tensor([enc.input_ids, reference]), text_block)
    pixels = adapter.preprocess([load_image(image)])
    [y] = adapter.image_states(pixels, image_block)
    [r_y] = adapter.image_states(torch.zeros_like(pixels), image_block)
    raw_fx = adapter.text_head(x[None], text_block, enc.pool_index)[0]
    raw_gy = adapter.image_head(y[None], image_block)[0]

    def post_for(raw_input):
        if settings.normalize == "cosine":
            return lambda e: torch.nn.functional.normalize(e, dim=-1)
        return lambda e: e / raw_input.norm()

    post_f, post_g = post_for(raw_fx), post_for(raw_gy)

    def text_head(h):
        return post_f(adapter.text_head(h, text_block, enc.pool_index))

    def image_head(h):
        return post_g(adapter.image_head(h, image_block))

    def columns(head, states, ref):
        """T (D, S): Σ_k w_k · (JVPs at node k along the change at each position), one pair's N points."""
        delta = states - ref
        points = torch.stack([ref + float(alpha) * delta for alpha in nodes])
        directional = head_jvps(head)(points, delta.expand_as(points), 4096).double()  # (N, S, D)
        return sum(float(w) * directional[k].T for k, w in enumerate(weights))

    t = columns(text_head, x, r_x)
    v = columns(image_head, y, r_y)
    return (t.T @ v).numpy()


def assert_same(result: Interactions, expected: np.ndarray) -> None:
    got = np.concatenate([result.cls[:, None], result.matrix], axis=1)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("normalize", ["cosine", "exclip"])
@pytest.mark.parametrize("rule", ["gauss", "riemann"])
def test_batched_equals_the_per_pair_path_at_the_last_block(adapter, normalize, rule):
    settings = InteractionSettings(steps=6, rule=rule, normalize=normalize, batch_size=4)
    method = TokenPatchInteractions(adapter, settings=settings)
    results = method.attribute(images(), CAPTIONS, on_error="raise")
    assert [r.caption for r in results] == CAPTIONS
    for image, caption, result in zip(images(), CAPTIONS, results, strict=True):
        assert_same(result, per_pair(adapter, image, caption, settings))


@pytest.mark.parametrize("normalize", ["cosine", "exclip"])
@pytest.mark.parametrize("closed_form", [True, False], ids=["closed-form", "generic"])
def test_batched_equals_the_per_pair_path_below_the_last_block(adapter, monkeypatch, normalize, closed_form):
    """Blocks below the last, different per tower, text template on: the adapter's closed forms, and the
    generic torch.func JVPs that an adapter without them gets."""
    if not closed_form:
        monkeypatch.setattr(adapter, "text_head_jvps", lambda *args: None)
        monkeypatch.setattr(adapter, "image_head_jvps", lambda *args: None)
    settings = InteractionSettings(
        text_block=-2, image_block=1, steps=3, normalize=normalize, template="a photo of ", batch_size=8
    )
    pairs = images()[:3], CAPTIONS[:3]
    results = TokenPatchInteractions(adapter, settings=settings).attribute(*pairs, on_error="raise")
    for image, caption, result in zip(*pairs, results, strict=True):
        assert_same(result, per_pair(adapter, image, caption, settings))


def test_batch_size_does_not_change_the_results(adapter):
    def run(batch_size):
        method = TokenPatchInteractions(adapter, batch_size=batch_size)
        return method.attribute(images(), CAPTIONS, on_error="raise")

    one, all_at_once = run(1), run(5)
    for a, b in zip(one, all_at_once, strict=True):
        np.testing.assert_allclose(b.matrix, a.matrix, rtol=0, atol=1e-6 * np.abs(a.matrix).max())
        np.testing.assert_allclose(b.cls, a.cls, rtol=0, atol=1e-6 * np.abs(a.matrix).max())
        for name in ("s_xy", "s_x_ry", "s_rx_y", "s_rx_ry"):
            assert getattr(b.completeness, name) == pytest.approx(getattr(a.completeness, name), rel=1e-6)
        # sum and target are differences of those cosines: equal to 1e-6 of the cosines' scale
        assert b.completeness.sum == pytest.approx(a.completeness.sum, abs=1e-6)
        assert b.completeness.target == pytest.approx(a.completeness.target, abs=1e-6)
        assert (b.tokens, b.words, b.grid, b.geometry) == (a.tokens, a.words, a.grid, a.geometry)


def test_one_image_call_per_batch_and_one_text_call_per_caption_length(adapter, monkeypatch):
    calls: dict[str, list[int]] = {"image": [], "text": []}
    image_states, text_states = adapter.image_states, adapter.text_states

    def counted_image(pixels, layer):
        calls["image"].append(pixels.shape[0])
        return image_states(pixels, layer)

    def counted_text(ids, layer):
        calls["text"].append(ids.shape[0])
        return text_states(ids, layer)

    monkeypatch.setattr(adapter, "image_states", counted_image)
    monkeypatch.setattr(adapter, "text_states", counted_text)
    TokenPatchInteractions(adapter, batch_size=5).attribute(images(), CAPTIONS, on_error="raise")
    assert calls["image"] == [5, 1]  # the five images, then the all-zero reference (cached from then on)
    # lengths 11, 5, 11, 4, 5: each length's captions and their shared reference in one call
    assert sorted(calls["text"]) == [2, 3, 3]


def test_bad_pairs_become_item_errors_and_the_others_are_computed(adapter, tmp_path):
    missing = tmp_path / "missing.png"
    batch_images = [photo(seed=1), str(missing), photo(seed=2), photo(seed=3)]
    captions = ["a dog", "a cat", "   ", "a red ball"]
    results = TokenPatchInteractions(adapter, batch_size=4).attribute(batch_images, captions)
    assert [type(r) for r in results] == [Interactions, ItemError, ItemError, Interactions]
    assert results[1].index == 1 and "missing.png" in results[1].error
    assert results[2].index == 2
    settings = InteractionSettings()
    for i in (0, 3):
        assert_same(results[i], per_pair(adapter, batch_images[i], captions[i], settings))


def test_a_failing_batch_is_retried_pair_by_pair(adapter, monkeypatch):
    """A batch too large for memory (any batch of more than one image fails here) still computes every
    pair; a pair that fails alone too gets its ItemError and only it."""
    image_states = adapter.image_states
    poisoned = adapter.preprocess([photo(seed=2)])

    def fragile(pixels, layer):
        if pixels.shape[0] > 1:
            raise RuntimeError("out of memory")
        if torch.equal(pixels, poisoned):
            raise RuntimeError("this image breaks the model")
        return image_states(pixels, layer)

    monkeypatch.setattr(adapter, "image_states", fragile)
    batch_images = [photo(seed=1), photo(seed=2), photo(seed=3)]
    captions = ["a dog", "a cat", "a red ball"]
    results = TokenPatchInteractions(adapter, batch_size=3).attribute(batch_images, captions)
    assert [type(r) for r in results] == [Interactions, ItemError, Interactions]
    assert results[1].index == 1 and "this image breaks the model" in results[1].error
    monkeypatch.undo()
    settings = InteractionSettings()
    for i in (0, 2):
        assert_same(results[i], per_pair(adapter, batch_images[i], captions[i], settings))
    with pytest.raises(RuntimeError, match="breaks the model"):
        monkeypatch.setattr(adapter, "image_states", fragile)
        TokenPatchInteractions(adapter, batch_size=3).attribute(batch_images, captions, on_error="raise")


def test_batch_size_is_a_runtime_setting():
    assert InteractionSettings().batch_size == 8
    assert "batch_size" not in InteractionSettings(batch_size=3).to_dict()
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        InteractionSettings(batch_size=0)


def test_image_prefix_columns_are_cls(adapter, monkeypatch):
    """CLIP's one class token is ``cls``; an adapter without one (prefix 0, as SigLIP) gives an empty
    ``cls`` and every position in ``matrix``; the sum, hence completeness, is the same."""
    rows, cols = adapter.patch_grid
    assert adapter.image_prefix == 1
    pixels = adapter.preprocess([photo()])
    assert adapter.image_states(pixels, 0).shape[1] == adapter.image_prefix + rows * cols
    [clip] = TokenPatchInteractions(adapter).attribute(photo(), "a dog", on_error="raise")
    assert clip.cls.shape == (len(clip.tokens),) and clip.matrix.shape == (len(clip.tokens), rows * cols)
    monkeypatch.setattr(type(adapter), "image_prefix", property(lambda self: 0))
    [flat] = TokenPatchInteractions(adapter).attribute(photo(), "a dog", on_error="raise")
    assert flat.cls.shape == (0,) and flat.matrix.shape == (len(flat.tokens), 1 + rows * cols)
    np.testing.assert_array_equal(flat.matrix, np.concatenate([clip.cls[:, None], clip.matrix], axis=1))
    assert flat.completeness == clip.completeness


def test_eval_batch_size_reaches_the_pointing_games():
    from clipalign.cli.evaluate import pointing_settings
    from clipalign.cli.main import build_parser

    base = ["eval", "pointing-flickr30k", "--annotations", "a", "--images", "i"]
    assert pointing_settings(build_parser().parse_args([*base, "--batch-size", "3"])).batch_size == 3
    exclip = pointing_settings(build_parser().parse_args([*base, "--exclip", "--batch-size", "5"]))
    assert exclip.batch_size == 5 and exclip.rule == "riemann"


def test_a_change_of_one_sequence_is_shared_by_every_point(adapter):
    """PositionJVPs take a change per point, or one (S, d) for all of them (the closed forms and generic)."""
    layer = adapter.num_vision_layers - 1
    with torch.no_grad():
        states = adapter.image_states(adapter.preprocess([photo(), photo(seed=5)]), layer)
        change = states[0] - states[1]
        points = states[1] + torch.tensor([0.25, 0.75])[:, None, None] * change

        def head(h):
            return adapter.image_head(h, layer)

        for jvps in (adapter.image_head_jvps(layer, lambda e: e), head_jvps(head)):
            shared, each = jvps(points, change, 64), jvps(points, change.expand_as(points), 64)
            torch.testing.assert_close(shared, each, rtol=0, atol=0)
