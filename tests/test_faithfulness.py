"""``clipalign eval faithfulness``: insertion/deletion curves, their areas, the random floor, the cache.

The curves are checked against the procedure restated as plain loops (one masked input at a time,
patches blanked block by block, token ids replaced one by one), the areas against sklearn's ``auc``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import auc

from clipalign import TokenPatchInteractions, load_model
from clipalign.attribution.baselines import get_baseline
from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.cli.main import main
from clipalign.evaluation.benchmark import load_items
from clipalign.evaluation.cache import ResultCache, settings_key
from clipalign.evaluation.faithfulness import (
    FLOOR,
    PairGame,
    area,
    fractions,
    keep_masks,
    method_orders,
    normalized,
    pair_order,
    random_orders,
    run_faithfulness,
    score_method,
)
from clipalign.evaluation.faithfulness_settings import FaithfulnessSettings
from clipalign.images import load_image
from clipalign.images.geometry import box_patch_weights
from clipalign.models.base import TextInputs
from clipalign.settings import ModelSpec
from clipalign.synthetic import write_dataset

STEPS = 4


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    annotations = write_dataset(tmp_path_factory.mktemp("synthetic"), 2, seed=0)
    return annotations, annotations.parent / "images"


@pytest.fixture(scope="module")
def items(synthetic):
    return load_items("pointing-synthetic", *synthetic)


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.double(), dim=-1)


def loop_image_curve(model, item, order, fill_mode, steps, text_embedding):
    """Deletion and insertion restated: for each step, blank the chosen patches' pixel blocks one by
    one with the fill colour, embed that one image, take its cosine with the text."""
    image = load_image(item.image)
    pixels = model.preprocess([image])[0]
    if fill_mode == "baseline":
        fill = torch.zeros_like(pixels)
    elif fill_mode == "mean":
        fill = pixels.mean(dim=(1, 2), keepdim=True).expand_as(pixels).clone()
    else:
        from PIL import Image

        fill = model.preprocess([Image.new("RGB", image.size, (0, 0, 0))])[0]
    rows, cols = model.patch_grid
    height, width = pixels.shape[1] // rows, pixels.shape[2] // cols
    n = rows * cols
    curves = {"deletion": [], "insertion": []}
    for k in range(steps + 1):
        chosen = list(order[: int(k * n / steps + 0.5)])
        for kind in curves:
            masked = pixels.clone()
            for p in range(n):
                blank = (p in chosen) if kind == "deletion" else (p not in chosen)
                if blank:
                    r, c = divmod(p, cols)
                    block = (
                        slice(None),
                        slice(r * height, (r + 1) * height),
                        slice(c * width, (c + 1) * width),
                    )
                    masked[block] = fill[block]
            with torch.no_grad():
                embedding = unit(model.image_embeddings(masked[None]))[0]
            curves[kind].append(float(embedding @ text_embedding))
    return curves


def text_embedding_of(model, ids, pool):
    """One caption's unit embedding from its token ids, nothing padded."""
    tensor = torch.tensor([ids])
    with torch.no_grad():
        return unit(
            model.text_embeddings(TextInputs(tensor, torch.ones_like(tensor), torch.tensor([pool]))).embeds
        )[0]


def caption_embedding(model, text):
    """A text's unit embedding the ordinary way (encode, collate, embed)."""
    with torch.no_grad():
        return unit(model.text_embeddings(model.collate(model.encode_captions([text], ""))).embeds)[0]


def image_embedding(model, item):
    with torch.no_grad():
        return unit(model.image_embeddings(model.preprocess([load_image(item.image)])))[0]


def test_keep_masks_follow_the_order_and_the_rounded_counts():
    order = np.array([3, 0, 4, 1, 2])
    deletion, insertion = keep_masks(order, 2)
    # counts round(k·5/2), halves up: 0, 3 (2.5), 5
    assert deletion.tolist() == [
        [True] * 5,
        [False, True, True, False, False],  # players 3, 0, 4 masked
        [False] * 5,
    ]
    assert (insertion == ~deletion).all()


def test_areas_are_the_trapezoid_rule_over_the_fraction_grid():
    rng = np.random.default_rng(0)
    for steps in (1, 4, 7, 20):
        curve = rng.normal(size=steps + 1)
        x = np.linspace(0, 1, steps + 1)
        by_hand = sum((x[i + 1] - x[i]) * (curve[i] + curve[i + 1]) / 2 for i in range(steps))
        assert area(curve) == pytest.approx(auc(x, curve), abs=1e-12)
        assert area(curve) == pytest.approx(by_hand, abs=1e-12)
    assert fractions(4).tolist() == [0, 0.25, 0.5, 0.75, 1]


def test_pair_order_adds_each_pairs_token_then_patch_once():
    matrix = np.array([[0.1, 0.9, -0.3], [0.5, 0.2, 0.8]])  # 2 tokens × 3 patches
    # entries from the largest: (t0,p1) 0.9, (t1,p2) 0.8, (t1,p0) 0.5, ...; tokens are players 3 and 4
    assert pair_order(matrix).tolist() == [3, 1, 4, 2, 0]


@pytest.mark.parametrize("fill", ["baseline", "mean", "zero"])
def test_image_curves_match_a_plain_loop(adapter, items, fill):
    item = items[0]
    settings = FaithfulnessSettings(steps=STEPS, mask_value=fill, batch_size=3)
    game = PairGame(adapter, item, load_image(item.image), settings)
    order = np.random.default_rng(1).permutation(16)
    curves = game.curves("image", [order])
    expected = loop_image_curve(adapter, item, order, fill, STEPS, caption_embedding(adapter, item.caption))
    for kind in ("deletion", "insertion"):
        np.testing.assert_allclose(curves[kind], expected[kind], atol=1e-5)
    # deletion starts at the intact pair's cosine and ends fully masked; insertion the other way round
    intact = float(image_embedding(adapter, item) @ caption_embedding(adapter, item.caption))
    assert curves["deletion"][0] == pytest.approx(intact, abs=1e-5)
    assert curves["insertion"][-1] == pytest.approx(intact, abs=1e-5)
    assert curves["insertion"][0] == pytest.approx(curves["deletion"][-1], abs=1e-9)
    assert curves["insertion"][0] != pytest.approx(intact, abs=1e-4)


def test_the_phrase_score_uses_the_phrase_embedding(adapter, items):
    item = items[0]
    game = PairGame(adapter, item, load_image(item.image), FaithfulnessSettings(steps=STEPS, score="phrase"))
    order = np.arange(16)
    phrase = caption_embedding(adapter, item.phrase)
    expected = loop_image_curve(adapter, item, order, "baseline", STEPS, phrase)
    np.testing.assert_allclose(game.curves("image", [order])["deletion"], expected["deletion"], atol=1e-5)


def test_text_and_joint_curves_match_a_plain_loop(adapter, items):
    item = items[0]
    settings = FaithfulnessSettings(steps=STEPS, text_mask="pad")
    game = PairGame(adapter, item, load_image(item.image), settings)
    [encoded] = adapter.encode_captions([item.caption], "")
    words = [i for i, w in enumerate(encoded.token_word) if w >= 0]
    filler = adapter.tokenizer.pad_token_id
    image = image_embedding(adapter, item)
    order = np.random.default_rng(2).permutation(len(words))
    n = len(words)
    expected = {"deletion": [], "insertion": []}
    for k in range(STEPS + 1):
        chosen = {words[j] for j in order[: int(k * n / STEPS + 0.5)]}
        for kind in expected:
            ids = list(encoded.input_ids)
            for position in words:
                if (position in chosen) == (kind == "deletion"):
                    ids[position] = filler
            expected[kind].append(float(text_embedding_of(adapter, ids, encoded.pool_index) @ image))
    curves = game.curves("text", [order])
    for kind in expected:
        np.testing.assert_allclose(curves[kind], expected[kind], atol=1e-5)

    # joint: all patches masked and every other token masked = both towers masked at once
    keep = np.ones((1, 16 + n), dtype=bool)
    keep[0, :16] = False
    keep[0, 16::2] = False
    ids = list(encoded.input_ids)
    for j, position in enumerate(words):
        if j % 2 == 0:
            ids[position] = filler
    with torch.no_grad():
        blank = unit(
            adapter.image_embeddings(torch.zeros_like(adapter.preprocess([load_image(item.image)])))
        )[0]
    expected_joint = float(blank @ text_embedding_of(adapter, ids, encoded.pool_index))
    assert game.scores("joint", keep)[0] == pytest.approx(expected_joint, abs=1e-5)


def test_orders_come_from_the_phrase_rows_and_the_box_columns(adapter, items):
    item = items[0]
    [result] = TokenPatchInteractions(adapter, steps=2).attribute(
        [item.image], [item.caption], on_error="raise"
    )
    game = PairGame(adapter, item, load_image(item.image), FaithfulnessSettings(steps=STEPS))
    orders = method_orders(result, item, game)
    words = [i for i, w in enumerate(result.words) if w.start < item.phrase_end and w.end > item.phrase_start]
    rows = [t for i in words for t in result.words[i].tokens]
    phrase_map = result.matrix[rows].sum(axis=0)
    assert orders.image.tolist() == sorted(range(16), key=lambda p: -phrase_map[p])
    weights = sum(box_patch_weights(b, result.geometry, result.grid).ravel() for b in item.boxes)
    per_word_token = (result.matrix @ weights)[game.words]
    assert orders.text.tolist() == sorted(range(len(game.words)), key=lambda j: -per_word_token[j])
    assert sorted(orders.joint.tolist()) == list(range(16 + len(game.words)))

    [patch_map] = get_baseline("centre", adapter).attribute([item.image], [item.caption], [item.phrase])
    first_order = method_orders(patch_map, item, game)
    assert first_order.text is None and first_order.joint is None
    assert first_order.image[0] in (5, 6, 9, 10)  # the centred Gaussian's four central patches


def test_random_floor_is_reproducible_from_the_seed(adapter, items, tmp_path):
    item = items[0]
    game = PairGame(adapter, item, load_image(item.image), FaithfulnessSettings(steps=STEPS))
    a = random_orders(item, game, FaithfulnessSettings(orderings=3, seed=5))
    b = random_orders(item, game, FaithfulnessSettings(orderings=3, seed=5))
    c = random_orders(item, game, FaithfulnessSettings(orderings=3, seed=6))
    assert all(np.array_equal(x, y) for side in a for x, y in zip(a[side], b[side], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a["image"], c["image"], strict=True))
    assert len(a["image"]) == 3 and sorted(a["joint"][0].tolist()) == list(range(game.players("joint")))

    settings = FaithfulnessSettings(steps=STEPS, orderings=3, seed=5)
    runs = [
        score_method(items, None, adapter, ResultCache(tmp_path / name, {"k": 1}), settings, progress=False)
        for name in ("one", "two")
    ]
    assert runs[0] == runs[1]
    # the floor is the mean of its orders' curves
    expected = np.mean([game.curves("image", [o])["deletion"] for o in a["image"]], axis=0)
    assert runs[0][0]["image"]["deletion"] == pytest.approx(expected.tolist(), abs=1e-9)


def test_normalisation_and_degenerate_items():
    curves = {"deletion": [0.5, 0.2, -0.1], "insertion": [-0.1, 0.4, 0.5]}
    by_unmasked = normalized(curves, "unmasked")
    np.testing.assert_allclose(by_unmasked["deletion"], [1, 0.4, -0.2])
    by_range = normalized(curves, "range")
    np.testing.assert_allclose(by_range["deletion"], [1, 0.5, 0])
    np.testing.assert_allclose(by_range["insertion"], [0, 5 / 6, 1])
    by_difference = normalized(curves, "difference")
    np.testing.assert_allclose(by_difference["deletion"], [0, -0.3, -0.6])
    np.testing.assert_allclose(by_difference["insertion"], [-0.6, -0.1, 0])
    assert normalized({"deletion": [-0.2, 0.1], "insertion": [0.1, -0.2]}, "unmasked") is None
    assert normalized({"deletion": [0.3, 0.3], "insertion": [0.3, 0.3]}, "range") is None


def test_a_rerun_computes_nothing(adapter, items, tmp_path, monkeypatch):
    settings = FaithfulnessSettings(steps=STEPS, orderings=2)
    spec = ModelSpec(name="tiny")

    def run():
        return run_faithfulness(
            "pointing-synthetic",
            items,
            adapter,
            tmp_path,
            spec=spec,
            methods=("interactions", "maskclip"),
            built={"interactions": TokenPatchInteractions(adapter, steps=2)},
            settings=settings,
            progress=False,
        )

    first = run()
    assert first.newly_scored == 3 * len(items)
    metrics = first.metrics
    assert set(metrics["image"]) == {"interactions", "maskclip", FLOOR}
    assert set(metrics["text"]) == set(metrics["joint"]) == {"interactions", FLOOR}
    row = metrics["image"]["maskclip"]
    assert row["difference"] == pytest.approx(row["insertion_auc"] - row["deletion_auc"])

    def refuse(*args, **kwargs):
        raise AssertionError("a rerun must not call the model")

    for name in ("image_embeddings", "text_embeddings", "preprocess"):
        monkeypatch.setattr(adapter, name, refuse)
    second = run()
    assert second.newly_scored == 0
    assert second.metrics == metrics
    # another normalisation reads the same raw curves
    settings = settings.replace(normalize="difference")
    third = run()
    assert third.newly_scored == 0
    row = third.metrics["image"]["maskclip"]
    assert row["curves"]["deletion"][0] == 0 and row["curves"]["insertion"][-1] == 0


def test_loader_options_enter_the_cache_key(adapter, items, tmp_path):
    """Items loaded under other options (a split, Karpathy's file, the instances) may be other items: the
    options given key every method's cache as ``clipalign eval`` keys its; none given keeps the key."""
    settings = FaithfulnessSettings(steps=2, orderings=1)
    spec = ModelSpec(name="tiny")

    def run(loader=None):
        return run_faithfulness(
            "pointing-synthetic",
            items[:1],
            adapter,
            tmp_path,
            spec=spec,
            methods=("maskclip",),
            settings=settings,
            progress=False,
            loader=loader,
        )

    cache = tmp_path / "faithfulness" / "pointing-synthetic" / "cache"
    assert run().newly_scored == 2
    common = {"analysis": "faithfulness", "benchmark": "pointing-synthetic", **spec.to_dict()}
    common["faithfulness"] = settings.curve_dict()
    method = get_baseline("maskclip", adapter)
    before = [{**common, "method": "maskclip", "method_settings": method.settings.to_dict()}]
    before.append({**common, "method": FLOOR})
    assert {p.name for p in cache.glob("*.jsonl")} == {f"{settings_key(key)}.jsonl" for key in before}
    assert run({"instances": None, "split": ""}).newly_scored == 0  # options not given
    assert run({"split": "val"}).newly_scored == 2
    keyed = [json.loads(p.read_text()) for p in cache.glob("*.settings.json") if "loader" in p.read_text()]
    assert [k["loader"] for k in keyed] == [{"split": "val"}] * 2
    assert run({"split": "val"}).newly_scored == 0


def test_cli_end_to_end_on_the_synthetic_world(synthetic, tmp_path, capsys):
    annotations, images = synthetic
    out = tmp_path / "out"
    argv = ["eval", "faithfulness", "--on", "pointing-synthetic", "--annotations", str(annotations)]
    argv += ["--images", str(images), "--model", str(SYNTHETIC_CLIP), "--out", str(out), "--no-progress"]
    argv += ["--method", "interactions,gradeclip,random", "--steps", "2", "--curve-steps", "4"]
    argv += ["--orderings", "2", "--mask-value", "mean", "--limit", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    directory = out / "faithfulness" / "pointing-synthetic"
    report = json.loads((directory / "report.json").read_text())
    assert report["settings"]["faithfulness"]["mask_value"] == "mean"
    assert report["settings"]["faithfulness"]["steps"] == 4
    assert report["settings"]["methods"]["interactions"]["steps"] == 2  # quadrature, not the curve
    assert list(report["metrics"]["image"]) == ["interactions", "gradeclip", "random", FLOOR]
    assert len(report["metrics"]["image"]["gradeclip"]["curves"]["deletion"]) == 5
    assert (directory / "curves.png").stat().st_size > 0
    md = (directory / "report.md").read_text()
    assert "insertion − deletion" in md and "image's own mean colour" in md
    assert "gradeclip" in printed

    # the same numbers as the library on the same items
    items = load_items("pointing-synthetic", annotations, images, limit=1)
    model = load_model(SYNTHETIC_CLIP, device="cpu")
    direct = run_faithfulness(
        "pointing-synthetic",
        items,
        model,
        tmp_path / "direct",
        spec=ModelSpec(name=str(SYNTHETIC_CLIP)),
        methods=("gradeclip",),
        settings=FaithfulnessSettings(steps=4, orderings=2, mask_value="mean"),
        progress=False,
    )
    ours, theirs = direct.metrics["image"]["gradeclip"], report["metrics"]["image"]["gradeclip"]
    for key in ("deletion_auc", "insertion_auc", "difference"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--curve-steps", "0"], "steps must be ≥ 1"), (["--method", "interactions,bogus"], "--method takes")],
)
def test_cli_refuses_bad_settings_in_one_line(synthetic, tmp_path, capsys, extra, message):
    annotations, images = synthetic
    argv = ["eval", "faithfulness", "--on", "pointing-synthetic", "--annotations", str(annotations)]
    argv += ["--images", str(images), "--model", str(SYNTHETIC_CLIP), "--out", str(tmp_path), *extra]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_all_steps_of_an_item_go_through_the_model_in_one_batch(adapter, items, monkeypatch):
    item = items[0]
    game = PairGame(adapter, item, load_image(item.image), FaithfulnessSettings(steps=STEPS))
    sizes = []
    embed = adapter.image_embeddings

    def counted(pixels):
        sizes.append(len(pixels))
        return embed(pixels)

    monkeypatch.setattr(adapter, "image_embeddings", counted)
    orders = [np.random.default_rng(s).permutation(16) for s in range(3)]
    game.curves("image", orders)
    # 3 orders × 2 curves × 5 steps, the shared endpoints (intact, fully masked) computed once
    assert sizes == [3 * 2 * (STEPS - 1) + 2]
