"""FIxLIP against a brute-force weighted Banzhaf interaction, its masking against HF CLIP, seeds, errors.

The tiny model sees 16×16 images in 8×8 patches: 4 image players, so with a short caption every
coalition can be enumerated and the exact interaction written as the plain sum over subsets.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from clipalign import ImageLoadError, ItemError, load_model
from clipalign.attribution.fixlip import (
    FIxLIP,
    FIxLIPInteractions,
    FIxLIPSettings,
    SampledGame,
    fit_second_order,
    patch_pixel_mask,
    sample_coalitions,
)
from clipalign.results import Interactions
from clipalign.testing import example_image, save_random_siglip, tiny_model

SHORT = "a red ball"  # 3 tokens between SOT and EOT: 4 + 3 = 7 players, 128 coalitions
LONG = "a red ball on the green grass here"  # 8 tokens: 4 + 8 = 12 players, 4,096 coalitions


@pytest.fixture(scope="module")
def model():
    return tiny_model(layers=2, image_size=16, patch_size=8)


def all_coalitions(n: int) -> np.ndarray:
    """Every subset of n players, one boolean row each."""
    return np.array(list(itertools.product([False, True], repeat=n)), dtype=bool)


Game = Callable[[set[int]], float]


def exact_game(method: FIxLIP, image: Image.Image, caption: str) -> tuple[int, int, Game]:
    """(image players, text players, v): v of a set of players (patches 0…3, then the text players) read
    from a table of every coalition's value."""
    [enc] = method.model.encode_captions([caption], "")
    n_image = 4
    n_text = len(method.text_players(enc))
    image_rows, text_rows = all_coalitions(n_image), all_coalitions(n_text)
    table = method.coalition_values(image, enc, image_rows, text_rows)
    index_of_image = {tuple(r): k for k, r in enumerate(image_rows)}
    index_of_text = {tuple(r): k for k, r in enumerate(text_rows)}

    def v(players: set[int]) -> float:
        image_part = tuple(q in players for q in range(n_image))
        text_part = tuple(n_image + q in players for q in range(n_text))
        return float(table[index_of_image[image_part], index_of_text[text_part]])

    return n_image, n_text, v


def exact_interaction(v: Game, n: int, a: int, b: int, p: float) -> float:
    """Σ over S ⊆ N∖{a,b} of p^|S| (1−p)^(n−2−|S|) times v(S∪{a,b}) − v(S∪{a}) − v(S∪{b}) + v(S)."""
    others = [q for q in range(n) if q not in (a, b)]
    total = 0.0
    for size in range(len(others) + 1):
        for subset in itertools.combinations(others, size):
            s = set(subset)
            weight = p**size * (1 - p) ** (n - 2 - size)
            total += weight * (v(s | {a, b}) - v(s | {a}) - v(s | {b}) + v(s))
    return total


def exact_banzhaf(method: FIxLIP, image: Image.Image, caption: str, p: float) -> np.ndarray:
    """(tokens, patches): the weighted Banzhaf interaction of patch i and text player j."""
    n_image, n_text, v = exact_game(method, image, caption)
    out = np.zeros((n_text, n_image))
    for i in range(n_image):
        for j in range(n_text):
            out[j, i] = exact_interaction(v, n_image + n_text, i, n_image + j, p)
    return out


def exact_within(method: FIxLIP, image: Image.Image, caption: str, p: float) -> tuple[np.ndarray, np.ndarray]:
    """(text players², patches²): the weighted Banzhaf interaction of every pair within a modality."""
    n_image, n_text, v = exact_game(method, image, caption)
    n = n_image + n_text
    tokens, patches = np.zeros((n_text, n_text)), np.zeros((n_image, n_image))
    for a, b in itertools.combinations(range(n_text), 2):
        tokens[a, b] = tokens[b, a] = exact_interaction(v, n, n_image + a, n_image + b, p)
    for a, b in itertools.combinations(range(n_image), 2):
        patches[a, b] = patches[b, a] = exact_interaction(v, n, a, b, p)
    return tokens, patches


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_full_budget_equals_brute_force(model, p):
    image = example_image()
    method = FIxLIP(model, budget=128, text_budget=8, p=p)
    [result] = method.attribute([image], [SHORT], on_error="raise")
    assert (result.image_coalitions, result.text_coalitions, result.steps) == (16, 8, 128)
    exact = exact_banzhaf(method, image, SHORT, p)
    np.testing.assert_allclose(result.matrix[1:-1], exact, atol=1e-6, rtol=0)
    assert np.abs(exact).max() > 1e-3  # the game is not trivial
    assert not result.matrix[[0, -1]].any() and not result.cls.any()  # SOT, EOT, CLS are not players


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_within_modality_at_full_budget_equals_brute_force(model, p):
    """With ``within``, the token×token and patch×patch matrices are each pair's weighted Banzhaf
    interaction, and the cross-modal matrix is still the exact one (the joint fit's top-order terms)."""
    image = example_image()
    method = FIxLIP(model, budget=128, text_budget=8, p=p, within=True)
    [result] = method.attribute([image], [SHORT], on_error="raise")
    tokens, patches = exact_within(method, image, SHORT, p)
    assert result.within is not None
    np.testing.assert_allclose(result.within.tokens[1:-1, 1:-1], tokens, atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.within.patches, patches, atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.matrix[1:-1], exact_banzhaf(method, image, SHORT, p), atol=1e-6, rtol=0)
    assert min(np.abs(tokens).max(), np.abs(patches).max()) > 1e-3  # neither game is trivial
    assert not result.within.tokens[[0, -1]].any() and not result.within.tokens[:, [0, -1]].any()
    [cross_only] = FIxLIP(model, budget=128, text_budget=8, p=p).attribute([image], [SHORT], on_error="raise")
    assert cross_only.within is None
    assert not np.allclose(cross_only.token_values, result.token_values)  # the fits' first orders differ


def authors_joint_fit(image_rows, image_weights, text_rows, text_weights, values):
    """The authors' regression restated: one design row per (image coalition, text coalition), one column
    per term of order ≤ 2 over all players (patches first, then text players), weighted least squares
    with the product of the two coalitions' weights; returns {term (sorted player tuple): coefficient}."""
    n_image, n_text = image_rows.shape[1], text_rows.shape[1]
    n = n_image + n_text
    terms = [(), *[(q,) for q in range(n)], *itertools.combinations(range(n), 2)]
    rows, weights, targets = [], [], []
    for a, image_row in enumerate(image_rows):
        for b, text_row in enumerate(text_rows):
            players = np.concatenate([image_row, text_row])
            rows.append([float(all(players[q] for q in term)) for term in terms])
            weights.append(image_weights[a] * text_weights[b])
            targets.append(values[a, b])
    root = np.sqrt(np.array(weights))
    beta = np.linalg.lstsq(np.array(rows) * root[:, None], np.array(targets) * root, rcond=None)[0]
    return dict(zip(terms, beta, strict=True))


def test_within_modality_fit_is_the_authors_joint_regression_when_sampled(model):
    """64 of 256 text coalitions: the Kronecker-structured normal equations give the coefficients of the
    plain regression over all 1,024 coalition pairs and all 79 terms."""
    image = example_image()
    method = FIxLIP(model, budget=16 * 64, text_budget=64, within=True, seed=2)
    [enc] = model.encode_captions([LONG], "")
    players = method.text_players(enc)
    text_rows, text_weights = sample_coalitions(len(players), 64, 0.5, 2)
    image_rows, image_weights = sample_coalitions(4, 16, 0.5, 2)
    values = method.coalition_values(image, enc, image_rows, text_rows)
    reference = authors_joint_fit(image_rows, image_weights, text_rows, text_weights, values)
    fit = fit_second_order(SampledGame(image_rows, image_weights, text_rows, text_weights, values))
    n_text = len(players)
    for (a, b), beta in ((t, c) for t, c in reference.items() if len(t) == 2):
        if b < 4:
            assert fit.image[a, b] == pytest.approx(beta, abs=1e-6)
        elif a >= 4:
            assert fit.text[a - 4, b - 4] == pytest.approx(beta, abs=1e-6)
        else:
            assert fit.cross[a, b - 4] == pytest.approx(beta, abs=1e-6)
    assert fit.intercept == pytest.approx(reference[()], abs=1e-6)
    np.testing.assert_allclose(fit.image_first, [reference[(q,)] for q in range(4)], atol=1e-6)
    np.testing.assert_allclose(fit.text_first, [reference[(4 + q,)] for q in range(n_text)], atol=1e-6)
    # end to end: the method draws the same coalitions and reports these coefficients by position
    [result] = method.attribute([image], [LONG], on_error="raise")
    np.testing.assert_allclose(result.matrix[players], fit.cross.T, atol=1e-9)
    np.testing.assert_allclose(result.within.tokens[np.ix_(players, players)], fit.text, atol=1e-9)
    np.testing.assert_allclose(result.within.patches, fit.image, atol=1e-9)
    assert result.baseline == pytest.approx(fit.intercept)
    # the within-modality terms never move the cross-modal ones, sampled or not: centred in each
    # modality, sᵢtⱼ is orthogonal to every single-modality term under the product weights
    [cross_only] = FIxLIP(model, budget=16 * 64, text_budget=64, seed=2).attribute(
        [image], [LONG], on_error="raise"
    )
    np.testing.assert_allclose(result.matrix, cross_only.matrix, atol=1e-9)
    assert not np.allclose(result.patch_values, cross_only.patch_values)


def test_within_modality_refuses_too_many_terms_and_serialises(model):
    image_rows, text_rows, weights = np.zeros((2, 128), bool), np.zeros((2, 3), bool), np.ones(2)
    with pytest.raises(ValueError, match=r"128 patches and 3 tokens need \d+ coefficients"):
        fit_second_order(SampledGame(image_rows, weights, text_rows, weights, np.zeros((2, 2))))
    [result] = FIxLIP(model, budget=128, text_budget=8, within=True).attribute(
        [example_image()], [SHORT], on_error="raise"
    )
    d = result.to_dict()
    assert np.array(d["within"]["tokens"]).shape == (5, 5)
    assert np.array(d["within"]["patches"]).shape == (4, 4)
    first, second = result.within.strongest("patches", 2)
    assert abs(first[2]) >= abs(second[2]) and first[0] < first[1]
    assert first[2] == result.within.patches[first[0], first[1]]
    assert FIxLIPSettings(within=True).to_dict()["within"] is True
    assert "within" not in FIxLIPSettings().to_dict()  # keys of results cached before the option stay


def test_sampled_budget_is_close_to_brute_force(model):
    """64 of 256 text coalitions × all 16 image coalitions (a quarter of the game): the estimate stays
    within 25% of the exact matrix (relative Frobenius error: 0.12 at seed 0, 0.15–0.16 at seeds 1, 2),
    much closer than with 16 text coalitions (0.5–0.7), and all 256 give the exact matrix."""
    image = example_image()
    exact = exact_banzhaf(FIxLIP(model), image, LONG, 0.5)
    [result] = FIxLIP(model, budget=16 * 64, text_budget=64).attribute([image], [LONG], on_error="raise")
    assert result.text_coalitions == 64
    error = np.linalg.norm(result.matrix[1:-1] - exact) / np.linalg.norm(exact)
    assert error < 0.25, error
    [coarse] = FIxLIP(model, budget=16 * 16, text_budget=16).attribute([image], [LONG], on_error="raise")
    assert np.linalg.norm(coarse.matrix[1:-1] - exact) / np.linalg.norm(exact) > 2 * error
    [full] = FIxLIP(model, budget=16 * 256, text_budget=256).attribute([image], [LONG], on_error="raise")
    np.testing.assert_allclose(full.matrix[1:-1], exact, atol=1e-6, rtol=0)


def authors_logit(model, image, caption, image_keep, text_keep, text_mask="attention", fill=0.0):
    """The authors' game through HF's CLIPModel: absent tokens out of the attention mask (or replaced by
    id 0), absent patches' normalised pixels set to ``fill``."""
    [enc] = model.encode_captions([caption], "")
    ids = torch.tensor([enc.input_ids])
    mask = torch.ones_like(ids)
    if text_mask == "attention":
        mask[0, 1:-1] = torch.tensor(text_keep, dtype=torch.long)
    else:
        ids[0, 1:-1] = torch.where(torch.tensor(text_keep), ids[0, 1:-1], 0)
    pixels = model.preprocess([image])
    keep = torch.tensor(image_keep, dtype=torch.float32).reshape(2, 2)
    keep = keep.repeat_interleave(8, 0).repeat_interleave(8, 1)
    pixels = pixels * keep + fill * (1 - keep)
    with torch.no_grad():
        return float(model.model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits_per_image)


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    """A tiny SigLIP seeing 16×16 images in 8×8 patches (4 image players, as the CLIP above)."""
    out = save_random_siglip(tmp_path_factory.mktemp("siglip"), "siglip", seed=0, image_size=16, patch_size=8)
    return load_model(out, device="cpu")


def test_siglip_players_and_game_are_the_authors(siglip):
    """On SigLIP the text players are the caption's tokens before ``</s>`` (its ``input_ids != 1``), an
    absent one leaves HF's attention mask, and the value is HF's ``logits_per_image`` (bias included);
    at full budget the matrix is the brute-force interaction."""
    image = example_image()
    method = FIxLIP(siglip, budget=4096, text_budget=1024)
    [enc] = siglip.encode_captions([SHORT], "")
    players = method.text_players(enc)
    eos = siglip.tokenizer.eos_token_id
    assert players == list(range(enc.input_ids.index(eos))) and len(players) >= 2
    image_rows = np.array([[1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
    text_rows = np.array([[True] * len(players), [False] * len(players), [i % 2 == 0 for i in players]])
    table = method.coalition_values(image, enc, image_rows, text_rows)
    pixels = siglip.preprocess([image])
    for a, b in itertools.product(range(3), range(3)):
        mask = torch.ones(1, len(enc.input_ids), dtype=torch.long)
        mask[0, players] = torch.tensor(text_rows[b], dtype=torch.long)
        keep = torch.tensor(image_rows[a], dtype=torch.float32).reshape(2, 2)
        keep = keep.repeat_interleave(8, 0).repeat_interleave(8, 1)
        with torch.no_grad():
            out = siglip.model(
                input_ids=torch.tensor([enc.input_ids]), attention_mask=mask, pixel_values=pixels * keep
            )
        assert table[a, b] == pytest.approx(float(out.logits_per_image), abs=1e-4)
    [result] = method.attribute([image], [SHORT], on_error="raise")
    np.testing.assert_allclose(result.matrix[players], exact_banzhaf(method, image, SHORT, 0.5), atol=1e-6)
    assert not np.delete(result.matrix, players, axis=0).any()  # </s> and padding are not players


@pytest.mark.parametrize("text_mask, fill", [("attention", 0.0), ("token", 0.0), ("attention", -1.5)])
def test_masking_matches_hf_clip(model, text_mask, fill):
    image = example_image()
    method = FIxLIP(model, text_mask=text_mask, image_fill=fill)
    [enc] = model.encode_captions([SHORT], "")
    image_rows = np.array([[1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=bool)
    text_rows = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=bool)
    table = method.coalition_values(image, enc, image_rows, text_rows)
    for a, b in itertools.product(range(4), range(4)):
        expected = authors_logit(model, image, SHORT, image_rows[a], text_rows[b], text_mask, fill)
        assert table[a, b] == pytest.approx(expected, abs=1e-5)
    values = {authors_logit(model, image, SHORT, [1] * 4, t, text_mask, fill) for t in text_rows.tolist()}
    assert len(values) == 4  # masking tokens changes the value


def test_patch_pixel_mask_covers_exact_patches():
    mask = patch_pixel_mask(torch.tensor([[True, False, False, True]]), (2, 2), (17, 16))
    assert mask.shape == (1, 1, 17, 16)
    expected = np.ones((17, 16))
    expected[:8, 8:] = 0  # patch 1: top right
    expected[8:16, :8] = 0  # patch 2: bottom left; row 16 lies past the last whole patch
    np.testing.assert_array_equal(mask[0, 0].numpy(), expected)


def test_corners_and_cosine_value(model):
    image = example_image()
    [logit] = FIxLIP(model, budget=128, text_budget=8).attribute([image], [SHORT], on_error="raise")
    [cosine] = FIxLIP(model, budget=128, text_budget=8, value="cosine").attribute(
        [image], [SHORT], on_error="raise"
    )
    c = logit.completeness
    assert c.s_xy == pytest.approx(authors_logit(model, image, SHORT, [1] * 4, [1] * 3), abs=1e-5)
    assert c.s_rx_ry == pytest.approx(authors_logit(model, image, SHORT, [0] * 4, [0] * 3), abs=1e-5)
    assert c.target == pytest.approx(c.s_xy - c.s_x_ry - c.s_rx_y + c.s_rx_ry)
    assert c.sum == pytest.approx(logit.matrix.sum()) and c.residual == pytest.approx(c.sum - c.target)
    scale = float(model.model.logit_scale.exp())
    np.testing.assert_allclose(logit.matrix, scale * cosine.matrix, atol=1e-9)
    assert (logit.normalize, cosine.normalize, logit.rule) == ("logit", "cosine", "banzhaf")


def test_seed_reproducible_and_batch_size_free(model):
    image = example_image()
    settings = FIxLIPSettings(budget=16 * 32, text_budget=32, seed=3)
    [a] = FIxLIP(model, settings=settings).attribute([image], [LONG], on_error="raise")
    [b] = FIxLIP(model, settings=settings, batch_size=5).attribute([image], [LONG], on_error="raise")
    [c] = FIxLIP(model, settings=settings, seed=4).attribute([image], [LONG], on_error="raise")
    np.testing.assert_allclose(a.matrix, b.matrix, atol=1e-6, rtol=0)
    assert np.abs(a.matrix - c.matrix).max() > 1e-4  # another seed draws other text coalitions
    assert a.to_dict()["seed"] == 3 and c.seed == 4


def test_result_works_with_spans_and_boxes(model):
    image = example_image(64, 48)
    [result] = FIxLIP(model, budget=128, text_budget=8).attribute([image], [SHORT], on_error="raise")
    assert isinstance(result, Interactions) and isinstance(result, FIxLIPInteractions)
    assert result.span_rows("red ball") == [2, 3]
    heat = result.span_heatmap("red ball")
    assert heat.shape == (48, 64) and np.isfinite(heat).any()
    np.testing.assert_allclose(result.span_grid("red").reshape(-1), result.matrix[2])
    words = result.box_word_scores((0, 0, 64, 48))
    assert [w for w, _ in words] == ["a", "red", "ball"]
    d = result.to_dict()
    assert d["method"] == "fixlip" and len(d["matrix"]) == 5 and d["image_coalitions"] == 16


def test_bad_inputs_become_item_errors(model, tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"not a png")
    method = FIxLIP(model, budget=128, text_budget=8)
    good, err, empty = method.attribute([example_image(), str(bad), example_image()], [SHORT, SHORT, " "])
    assert isinstance(good, FIxLIPInteractions)
    assert isinstance(err, ItemError) and err.index == 1 and "not_an_image.png" in err.source
    assert isinstance(empty, ItemError) and empty.index == 2
    with pytest.raises(ImageLoadError):
        method.attribute([str(bad)], [SHORT], on_error="raise")


def test_settings_are_checked():
    with pytest.raises(ValueError, match="p must be"):
        FIxLIPSettings(p=1.0)
    with pytest.raises(ValueError, match="value"):
        FIxLIPSettings(value="prob")  # type: ignore[arg-type]
    assert "batch_size" not in FIxLIPSettings().to_dict()
    assert FIxLIPSettings().to_dict()["budget"] == 2**20


@pytest.mark.slow
def test_shapiq_loads_only_when_coalitions_are_sampled():
    code = (
        "import sys, clipalign.attribution.fixlip as f; assert 'shapiq' not in sys.modules; "
        "f.sample_coalitions(3, 8, 0.5, 0); assert 'shapiq' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_interactions_method_fixlip(tiny_model_dir, tmp_path, capsys):
    """``clipalign interactions --method fixlip`` gives FIxLIP's result in the interactions JSON."""
    import json

    from clipalign.cli.main import main

    photo = tmp_path / "photo.png"
    example_image().save(photo)
    argv = ["interactions", str(photo), "a red ball", "--model", str(tiny_model_dir), "--json"]
    assert main([*argv, "--method", "fixlip", "--budget", "1024", "--span", "ball"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "fixlip" and "text_reference" not in report
    assert len(report["span"]["grid_values"]) == report["grid"][0]
    assert main([*argv, "--budget", "1024"]) == 1
    assert "--budget applies to --method fixlip only" in capsys.readouterr().err
    assert main([*argv, "--method", "fixlip", "--budget", "256", "--within"]) == 0
    within = json.loads(capsys.readouterr().out)["within"]
    assert len(within["tokens"]) == 5 and len(within["patches"]) == report["grid"][0] * report["grid"][1]
    assert main([*argv[:-1], "--method", "fixlip", "--budget", "256", "--within"]) == 0
    assert "strongest token×token: " in capsys.readouterr().out
    assert main([*argv, "--within"]) == 1
    assert "--within applies to --method fixlip only" in capsys.readouterr().err
