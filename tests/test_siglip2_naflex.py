"""NaFlex SigLIP 2 (``Siglip2Model``) on a tiny random checkpoint with a Gemma tokenizer trained here.

The oracles call HF's ``Siglip2Model`` on what ``Siglip2ImageProcessorPil`` gives for each image alone
(patches, ``pixel_attention_mask``, ``spatial_shapes``): the library's packed pixel values, masked fused
attention and batching of mixed aspect ratios must give those numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_siglip import (
    CONTEXT,
    ORACLE_CAPTIONS,
    TEMPLATE,
    assert_token_scores_are_finite_differences,
    oracle_matrix,
    oracle_word_scores,
    scene,
)
from transformers import Siglip2Model
from transformers.models.siglip2 import modeling_siglip2

from clipalign import CLIP4DM, load_model
from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.quadrature import quadrature
from clipalign.cli.main import main
from clipalign.models.hf_siglip2 import HFSiglip2Adapter
from clipalign.testing import save_random_siglip2

PATCH = 8
MAX_PATCHES = 24
SIZES = [(64, 48), (30, 90), (90, 30), (40, 40), (120, 20)]
"""Image sizes (width, height) of different aspect ratios, so each gets its own patch grid."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return save_random_siglip2(
        tmp_path_factory.mktemp("tiny-siglip2"), seed=0, patch_size=PATCH, max_num_patches=MAX_PATCHES
    )


@pytest.fixture(scope="module")
def naflex(model_dir) -> HFSiglip2Adapter:
    model = load_model(model_dir, device="cpu")
    assert isinstance(model, HFSiglip2Adapter)
    return model


@pytest.fixture(scope="module")
def hf_model(model_dir):
    return Siglip2Model.from_pretrained(model_dir, attn_implementation="eager").eval()


def images() -> list[Image.Image]:
    return [scene(i, size) for i, size in enumerate(SIZES)]


def test_images_get_their_own_grids(naflex):
    grids = [tuple(naflex.unpack(naflex.pixel_values([image]))[1][0].tolist()) for image in images()]
    assert len(set(grids)) == len(SIZES)
    for (rows, cols), size in zip(grids, SIZES, strict=True):
        assert rows * cols <= MAX_PATCHES and (rows, cols) == naflex.patch_grid_for(*size)


def test_image_embeddings_match_hf_per_image_in_a_mixed_batch(naflex, hf_model):
    pixels = naflex.preprocess(images())
    assert pixels.shape == (len(SIZES), MAX_PATCHES, 3 * PATCH * PATCH + 2)
    with torch.no_grad():
        batched = naflex.image_embeddings(pixels)
        for image, ours in zip(images(), batched, strict=True):
            inputs = naflex.image_processor(images=[image], return_tensors="pt")
            theirs = hf_model.get_image_features(**inputs).pooler_output[0]
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
            torch.testing.assert_close(naflex.image_embeddings(naflex.preprocess([image]))[0], ours)


def test_text_embeddings_match_hf(naflex, hf_model):
    [enc] = naflex.encode_captions(["a cup of coke"], TEMPLATE)
    assert len(enc.input_ids) == CONTEXT and enc.pool_index == CONTEXT - 1
    inputs = naflex.collate([enc])
    with torch.no_grad():
        ours = naflex.text_embeddings(inputs).embeds
        theirs = hf_model.get_text_features(input_ids=inputs.input_ids).pooler_output
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(("layers", "unit"), [(1, "clip4dm"), (3, "whitespace")])
def test_library_matches_loop_oracle(naflex, hf_model, layers, unit):
    attributor = CLIP4DM(naflex, layers=layers, unit=unit)
    pictures = images()[: len(ORACLE_CAPTIONS)]
    results = attributor.attribute(pictures, ORACLE_CAPTIONS, on_error="raise")
    for image, caption, result in zip(pictures, ORACLE_CAPTIONS, results, strict=True):
        expected, cos = oracle_word_scores(
            hf_model, naflex.tokenizer, naflex.image_processor, image, caption, layers, unit
        )
        assert [w.word for w in result.words] == [w for w, _ in expected]
        want = np.array([s for _, s in expected])
        assert np.abs(want).max() > 0
        np.testing.assert_allclose([w.score for w in result.words], want, atol=1e-5 * np.abs(want).max())
        assert result.cosine == pytest.approx(cos, abs=1e-6)


def test_pairs_in_a_batch_of_mixed_aspect_ratios_equal_them_alone(naflex):
    pictures = images()
    captions = ["a cup of coke", "a red cube", "the dog runs fast", "a white husky", "a street sign"]
    attributor = CLIP4DM(naflex, layers=2, batch_size=len(pictures))
    together = attributor.attribute(pictures, captions, on_error="raise")
    for image, caption, batched in zip(pictures, captions, together, strict=True):
        [alone] = attributor.attribute([image], [caption], on_error="raise")
        want = np.array([w.score for w in batched.words])
        np.testing.assert_allclose(
            [w.score for w in alone.words], want, rtol=0, atol=1e-5 * np.abs(want).max()
        )
        assert alone.cosine == pytest.approx(batched.cosine, abs=1e-6)


def test_token_score_is_finite_difference_of_scaled_attention(naflex, model_dir, monkeypatch):
    model = Siglip2Model.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float64).eval()
    adapter = HFSiglip2Adapter(model, naflex.tokenizer, naflex.image_processor)
    assert_token_scores_are_finite_differences(adapter, modeling_siglip2, scene(7, (70, 30)), monkeypatch)


@pytest.mark.parametrize("size", [*SIZES, (17, 300), (8, 8), (1000, 999)])
def test_heatmap_geometry_is_the_processors_resize(naflex, size):
    """``image_geometry`` is the processor's resize: the model input rebuilt from its patches is the whole
    image resized (bilinear, no crop) to ``resized``, whose sides are the grid times the patch size and
    whose aspect ratio is the image's up to rounding to whole patches; a patch maps back to its share
    of the original."""
    width, height = size
    image = scene(3, size)
    geometry = naflex.image_geometry(width, height)
    patches, shapes, mask = naflex.unpack(naflex.pixel_values([image]))
    rows, cols = shapes[0].tolist()
    assert geometry.resized == (cols * PATCH, rows * PATCH) and geometry.crop == (0, 0, *geometry.resized)
    assert int(mask.sum()) == rows * cols <= MAX_PATCHES
    # one more patch along either side would exceed the budget, or the aspect ratio would drift further
    assert (rows + 1) * (cols + 1) > MAX_PATCHES
    grid = patches[0, : rows * cols].reshape(rows, cols, PATCH, PATCH, 3)
    rebuilt = grid.permute(0, 2, 1, 3, 4).reshape(rows * PATCH, cols * PATCH, 3).numpy()
    expected = np.asarray(image.resize(geometry.resized, Image.Resampling.BILINEAR), dtype=np.float32)
    np.testing.assert_allclose(rebuilt, expected / 127.5 - 1, atol=1e-5)
    # patch (r, c) covers columns c·p..(c+1)·p of the input: that fraction of the original's width
    x0, y0 = geometry.to_original(cols * PATCH / 2, 0)
    assert (x0, y0) == pytest.approx((width / 2, 0))
    x1, y1 = geometry.to_original(*geometry.resized)
    assert (x1, y1) == pytest.approx((width, height))


def test_states_and_head_give_the_embedding_per_grid(naflex):
    """``image_head(image_states(·, L), L)`` is the image embedding for each grid's unpadded patches; the
    reference keeps each image's grid with zero patches; images of two grids are not mixed."""
    pixels = naflex.preprocess(images())
    grids = naflex.patch_grids(pixels)
    with torch.no_grad():
        full = naflex.image_embeddings(pixels)
        for b, (rows, cols) in enumerate(grids):
            for layer in (0, naflex.num_vision_layers - 1):
                states = naflex.image_states(pixels[b : b + 1], layer)
                assert states.shape[1] == rows * cols
                torch.testing.assert_close(naflex.image_head(states, layer)[0], full[b], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one patch grid"):
        naflex.image_states(pixels, 0)
    reference = naflex.reference_pixels(pixels)
    assert naflex.patch_grids(reference) == grids and not reference[..., :-2].any()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> HFSiglip2Adapter:
    """A 2-block, 16-wide NaFlex SigLIP 2 for interactions."""
    out = save_random_siglip2(
        tmp_path_factory.mktemp("small-siglip2"), seed=1, hidden_size=16, layers=2, patch_size=PATCH
    )
    model = load_model(out, device="cpu")
    assert isinstance(model, HFSiglip2Adapter)
    return model


@pytest.mark.parametrize(
    "layer", [pytest.param(0, marks=pytest.mark.slow), 1], ids=["below-the-last-block", "last-block"]
)
def test_interactions_match_per_dimension_backward_oracle(small, layer):
    """Every text position × each of the image's own rows·cols patches, padding excluded."""
    image = scene(2, (40, 90))
    [result] = TokenPatchInteractions(small, text_block=layer, image_block=layer, steps=3).attribute(
        image, "a black dog", on_error="raise"
    )
    rows, cols = small.patch_grid_for(*image.size)
    assert result.grid == (rows, cols) and rows * cols < MAX_PATCHES
    assert result.matrix.shape == (CONTEXT, rows * cols) and result.cls.size == 0
    nodes, weights = quadrature("gauss", 3)
    expected = oracle_matrix(small, image, "a black dog", layer, nodes, weights)
    np.testing.assert_allclose(result.matrix, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_interactions_complete_and_alike_alone_or_in_a_mixed_batch(small):
    """Each pair of a batch of several aspect ratios gets its own grid and reference, and the numbers it
    gets alone; Σ matrix matches the score difference of the four completeness terms."""
    pictures = images()[:3]
    captions = ["a white husky", "a red cube", "a cup of coke"]
    method = TokenPatchInteractions(small, steps=20, batch_size=3)
    together = method.attribute(pictures, captions, on_error="raise")
    for image, caption, batched in zip(pictures, captions, together, strict=True):
        assert batched.grid == small.patch_grid_for(*image.size)
        assert batched.geometry == small.image_geometry(*image.size)
        c = batched.completeness
        assert batched.matrix.sum() == pytest.approx(c.sum, rel=1e-9)
        assert abs(c.residual) <= 1e-3 * abs(c.target)
        [alone] = method.attribute([image], [caption], on_error="raise")
        np.testing.assert_allclose(
            alone.matrix, batched.matrix, rtol=0, atol=1e-6 * np.abs(alone.matrix).max()
        )


def test_fixlip_needs_one_grid_and_refuses_naflex_in_one_line(naflex):
    from clipalign.attribution.fixlip import FIxLIP

    with pytest.raises(ValueError, match="no patch grid") as info:
        FIxLIP(naflex)
    assert "\n" not in str(info.value)


def test_models_lists_naflex_as_supported(capsys, tmp_path):
    assert main(["models", "--json", "--cache-dir", str(tmp_path)]) == 0
    [family] = [f for f in json.loads(capsys.readouterr().out)["families"] if f["model_type"] == "siglip2"]
    assert family["adapter"] == "clipalign.models.hf_siglip2.HFSiglip2Adapter"
    assert "NaFlex" in family["needs"]


@pytest.mark.slow
def test_cli_words_interactions_and_scan(model_dir, tmp_path, capsys):
    path = tmp_path / "dogs.png"
    scene(5, (90, 40)).save(path)
    caption = "A white husky and a black dog running."
    assert main(["words", str(path), caption, "--model", str(model_dir), "--json"]) == 0
    words = json.loads(capsys.readouterr().out)
    assert [w["word"] for w in words["words"]] == [*caption[:-1].split(), "."]
    assert -1 <= words["cosine"] <= 1

    argv = ["interactions", str(path), caption, "--model", str(model_dir), "--json", "--steps", "2"]
    assert main([*argv, "--span", "black dog", "--out", str(tmp_path / "span.png")]) == 0
    data = json.loads(capsys.readouterr().out)
    rows, cols = data["grid"]
    assert (rows, cols) == load_model(model_dir, device="cpu").patch_grid_for(90, 40)
    assert len(data["matrix"]) == CONTEXT and len(data["matrix"][0]) == rows * cols
    assert np.sum(data["matrix"]) == pytest.approx(data["completeness"]["sum"], rel=1e-9)
    assert Image.open(tmp_path / "span.png").format == "PNG"

    folder = tmp_path / "images"
    folder.mkdir()
    scene(5, (90, 40)).save(folder / "dogs.png")
    scene(6, (30, 80)).save(folder / "tall.png")
    captions = {"dogs.png": caption, "tall.png": "a tall red cube"}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    out = tmp_path / "s.parquet"
    scan = ["scan", str(folder), "--captions", str(tmp_path / "captions.json"), "--out", str(out)]
    assert main([*scan, "--model", str(model_dir), "--no-progress", "--batch-size", "2"]) == 0
    import pyarrow.parquet as pq

    rows = {str(row["key"]).rsplit("/", 1)[-1]: row for row in pq.read_table(out).to_pylist()}
    assert rows["dogs.png"]["cosine"] == pytest.approx(words["cosine"], abs=1e-6)
    assert rows["dogs.png"]["word_scores"] == pytest.approx([w["score"] for w in words["words"]], abs=1e-8)
