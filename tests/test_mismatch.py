"""``clipalign eval mismatch``: own- and cross-object attributions over captions naming two objects.

The reference restates the definition with loops: for a caption naming objects A and B, the
attribution of A's phrase to B's box is the sum, over the tokens of the caption words the phrase
overlaps and over every patch, of the token×patch interaction times the share of the patch's area
inside the box (the patch traced back to original pixels). Own = A→A and B→B, cross = A→B and B→A.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipalign import load_model
from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.cli.main import main
from clipalign.datasets import load_synthetic_pointing
from clipalign.datasets.base import PointingItem
from clipalign.evaluation.cache import settings_key
from clipalign.evaluation.mismatch import mismatch_metrics, mismatch_pairs, region_patch_weights, run_mismatch
from clipalign.images.geometry import ImageGeometry, box_patch_weights
from clipalign.settings import InteractionSettings
from clipalign.synthetic import write_dataset

STEPS = ["--steps", "2"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    annotations = write_dataset(tmp_path_factory.mktemp("synthetic"), 14, seed=0)
    return annotations, annotations.parent / "images"


def _eval(synthetic, model_dir, out, *extra):
    annotations, images = synthetic
    argv = ["eval", "mismatch", "--on", "pointing-synthetic", "--annotations", str(annotations)]
    argv += ["--images", str(images), "--model", str(model_dir), "--out", str(out), "--no-progress"]
    return main([*argv, *STEPS, *extra])


def covered_share(box, geometry: ImageGeometry, grid: tuple[int, int]) -> np.ndarray:
    """Per patch, the share of its area inside ``box``: each patch traced back to original pixels."""
    rows, cols = grid
    _, _, crop_w, crop_h = geometry.crop
    pw, ph = crop_w / cols, crop_h / rows
    x, y, w, h = box
    share = np.zeros(grid)
    for r in range(rows):
        for c in range(cols):
            (x0, x1), (y0, y1) = geometry.to_original(
                np.array([c * pw, (c + 1) * pw]), np.array([r * ph, (r + 1) * ph])
            )
            dx = max(0.0, min(x1, x + w) - max(x0, x))
            dy = max(0.0, min(y1, y + h) - max(y0, y))
            share[r, c] = dx * dy / ((x1 - x0) * (y1 - y0))
    return share


def attribution(result, phrase: PointingItem, region: PointingItem) -> float:
    """The definition, with loops (the synthetic objects have one box each)."""
    tokens = [
        t
        for word in result.words
        if word.start < phrase.phrase_end and word.end > phrase.phrase_start
        for t in word.tokens
    ]
    [box] = region.boxes
    share = covered_share(box, result.geometry, result.grid)
    rows, cols = result.grid
    total = 0.0
    for t in tokens:
        for r in range(rows):
            for c in range(cols):
                total += float(result.matrix[t, r * cols + c]) * share[r, c]
    return total


def test_records_equal_the_definition_and_the_shares_count_them(synthetic, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert _eval(synthetic, tiny_model_dir, out) == 0
    report = json.loads((out / "mismatch" / "pointing-synthetic" / "report.json").read_text())
    [cache] = (out / "mismatch" / "pointing-synthetic" / "cache").glob("*.jsonl")
    records = {r["id"]: r for r in map(json.loads, cache.read_text().splitlines())}

    # the pairs: every scene with exactly two objects whose phrases differ
    annotations, images = synthetic
    scenes = json.loads(annotations.read_text())["scenes"]
    two = [
        s for s in scenes if len(s["objects"]) == 2 and s["objects"][0]["phrase"] != s["objects"][1]["phrase"]
    ]
    assert len(two) >= 3 and sorted(records) == sorted(f"{s['id']}-obj0+{s['id']}-obj1" for s in two)

    items = {it.id: it for it in load_synthetic_pointing(annotations, images)}
    method = TokenPatchInteractions(
        load_model(tiny_model_dir, device="cpu"), settings=InteractionSettings(steps=2, batch_size=1)
    )
    own, cross = [], []
    for pair_id, record in records.items():
        a, b = (items[i] for i in pair_id.split("+"))
        [result] = method.attribute([a.image], [a.caption], on_error="raise")
        expected = {
            "own_first": attribution(result, a, a),
            "own_second": attribution(result, b, b),
            "first_on_second": attribution(result, a, b),
            "second_on_first": attribution(result, b, a),
        }
        for key, value in expected.items():
            assert record[key] == pytest.approx(value, rel=1e-4, abs=1e-9), (pair_id, key)
        own += [expected["own_first"], expected["own_second"]]
        cross += [expected["first_on_second"], expected["second_on_first"]]

    metrics = report["metrics"]
    assert metrics["own_positive"]["count"] == 2 * len(two)
    assert metrics["own_positive"]["matching"] == sum(v > 0 for v in own)
    assert metrics["cross_negative"]["matching"] == sum(v < 0 for v in cross)
    assert metrics["cross_negative"]["share"] == pytest.approx(np.mean([v < 0 for v in cross]))
    assert metrics["own_positive"]["mean"] == pytest.approx(np.mean(own), rel=1e-4, abs=1e-9)
    assert metrics["cross_negative"]["mean"] == pytest.approx(np.mean(cross), rel=1e-4, abs=1e-9)
    assert metrics["selection"]["two_objects"] == len(two)
    md = (out / "mismatch" / "pointing-synthetic" / "report.md").read_text()
    assert "| own object: positive |" in md and "0.941" in md


def test_a_rerun_resumes_from_the_cache(synthetic, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert _eval(synthetic, tiny_model_dir, out, "--limit", "2") == 0
    first = json.loads((out / "mismatch" / "pointing-synthetic" / "report.json").read_text())
    assert (first["metrics"]["pairs"], first["newly_scored"]) == (2, 2)
    assert _eval(synthetic, tiny_model_dir, out) == 0
    full = json.loads((out / "mismatch" / "pointing-synthetic" / "report.json").read_text())
    assert full["newly_scored"] == full["metrics"]["pairs"] - 2
    assert _eval(synthetic, tiny_model_dir, out) == 0
    again = json.loads((out / "mismatch" / "pointing-synthetic" / "report.json").read_text())
    assert again["newly_scored"] == 0 and again["metrics"] == full["metrics"]
    assert _eval(synthetic, tiny_model_dir, out, "--steps", "3") == 0  # another setting: a new cache
    other = json.loads((out / "mismatch" / "pointing-synthetic" / "report.json").read_text())
    assert other["newly_scored"] == other["metrics"]["pairs"]


def _item(id_: str, phrase: str, start: int, caption: str, box: float | None = None) -> PointingItem:
    """A pointing item whose box depends on ``box`` (default: the phrase's start)."""
    x = float(start if box is None else box)
    end = start + len(phrase)
    return PointingItem(id_, __file__, caption, phrase, start, end, ((x, 0.0, 1.0, 1.0),))


def test_only_captions_naming_exactly_two_different_objects_are_paired():
    three = [_item(i, p, s, "a cat and a dog and a cow") for i, p, s in (("c", "cat", 2), ("d", "dog", 12),
                                                                        ("w", "cow", 22))]  # fmt: skip
    two = [_item(i, p, s, "a dog and a cat") for i, p, s in (("y", "cat", 12), ("x", "dog", 2))]
    same = [_item(i, "cat", s, "a cat and a cat") for i, s in (("s", 2), ("t", 12))]
    pronoun = [_item("m", "A man", 0, "A man and his dog", 0), _item("h", "his", 10, "A man and his dog", 0)]
    one = [_item("o", "cat", 2, "a cat")]
    again = [_item("a", "dog", 2, "a dog and a cat")]  # the same caption text later: another caption
    selection = mismatch_pairs([*three, *two, *same, *pronoun, *one, *again])
    [pair] = selection.pairs
    assert (pair.id, pair.first.phrase, pair.second.phrase) == ("x+y", "dog", "cat")  # caption order
    counts = (selection.captions, selection.one_object, selection.more_objects, selection.same_object)
    assert counts == (6, 2, 1, 2)


def test_shares_and_means_from_records():
    records = [
        {"id": "a", "error": None, "own_first": 1.0, "own_second": -2.0, "first_on_second": -1.0,
         "second_on_first": 0.5},
        {"id": "b", "error": None, "own_first": 3.0, "own_second": 2.0, "first_on_second": -0.5,
         "second_on_first": -4.0},
        {"id": "c", "error": "unreadable image"},
    ]  # fmt: skip
    metrics = mismatch_metrics(records)
    assert (metrics["pairs"], metrics["failed"]) == (3, 1)
    assert metrics["own_positive"] == {"count": 4, "matching": 3, "share": 0.75, "mean": 1.0, "median": 1.5}
    assert metrics["cross_negative"]["matching"] == 3 and metrics["cross_negative"]["mean"] == -1.25
    assert metrics["first_on_second_negative"]["share"] == 1.0
    assert metrics["second_on_first_negative"]["share"] == 0.5
    assert metrics["own_above_cross"] == 0.75  # 1 > −1, −2 < 0.5, 3 > −0.5, 2 > −4


def test_region_weights_are_the_covered_share_of_the_union_of_boxes():
    geometry = ImageGeometry(original=(100, 80), resized=(40, 32), crop=(4, 0, 32, 32))
    grid = (4, 4)
    box = (13.0, 7.5, 30.2, 41.0)
    assert np.allclose(region_patch_weights([box], geometry, grid), box_patch_weights(box, geometry, grid))
    assert np.allclose(region_patch_weights([box], geometry, grid), covered_share(box, geometry, grid))
    apart = [(12.0, 0.0, 20.0, 20.0), (60.0, 40.0, 20.0, 30.0)]
    assert np.allclose(
        region_patch_weights(apart, geometry, grid), sum(covered_share(b, geometry, grid) for b in apart)
    )
    # overlapping boxes count their common area once: inclusion–exclusion with the intersection
    a, b = (20.0, 10.0, 40.0, 40.0), (40.0, 30.0, 40.0, 40.0)
    both = (40.0, 30.0, 20.0, 20.0)
    expected = covered_share(a, geometry, grid) + covered_share(b, geometry, grid)
    expected -= covered_share(both, geometry, grid)
    assert np.allclose(region_patch_weights([a, b], geometry, grid), expected)
    with pytest.raises(ValueError, match="cover none"):
        region_patch_weights([(0.0, 0.0, 5.0, 5.0)], geometry, grid)  # left of the centre crop


def test_coco_inputs_pair_the_categories_of_a_caption(tiny_model_dir, tmp_path):
    """COCO-format files as pointing-coco reads them: a caption naming a dog and two people."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 60), (30, 120, 200)).save(images / "a.jpg")
    people = [[0, 0, 20, 30], [10, 20, 30, 30]]
    instances = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [
            *({"id": i, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(people)),
            {"id": 9, "image_id": 1, "category_id": 18, "bbox": [50, 30, 25, 25]},
        ],
    }
    captions = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [
            {"id": 5, "image_id": 1, "caption": "Two people walk a dog."},
            {"id": 6, "image_id": 1, "caption": "A dog on a lawn."},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    out = tmp_path / "out"
    argv = ["eval", "mismatch", "--annotations", str(tmp_path / "captions.json"), "--images", str(images)]
    argv += [
        "--instances",
        str(tmp_path / "instances.json"),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
    ]
    assert main([*argv, *STEPS, "--no-progress"]) == 0
    report = json.loads((out / "mismatch" / "pointing-coco" / "report.json").read_text())
    assert report["metrics"]["selection"] == {
        "captions": 2, "two_objects": 1, "one_object": 1, "three_or_more": 0, "same_object": 0
    }  # fmt: skip
    [cache] = (out / "mismatch" / "pointing-coco" / "cache").glob("*.jsonl")
    [record] = map(json.loads, cache.read_text().splitlines())
    assert record["id"] == "5-1+5-18"

    # the people's region is the union of both boxes
    method = TokenPatchInteractions(
        load_model(tiny_model_dir, device="cpu"), settings=InteractionSettings(steps=2)
    )
    [result] = method.attribute([images / "a.jpg"], ["Two people walk a dog."], on_error="raise")
    rows = [t for w in result.words if w.word == "people" for t in w.tokens]
    grid = result.matrix[rows].sum(axis=0).reshape(result.grid)
    union = region_patch_weights([tuple(map(float, b)) for b in people], result.geometry, result.grid)
    assert record["own_first"] == pytest.approx(float((grid * union).sum()), rel=1e-4, abs=1e-9)


def test_options_that_do_not_apply_are_refused(synthetic, tiny_model_dir, tmp_path, capsys):
    assert _eval(synthetic, tiny_model_dir, tmp_path / "out", "--limit", "-1") == 1
    assert "limit must be None or a non-negative int" in capsys.readouterr().err
    assert _eval(synthetic, tmp_path / "no-model", tmp_path / "out", "--method", "maskclip") == 1
    assert "--method and --per-class do not apply" in capsys.readouterr().err
    annotations, images = synthetic
    argv = ["eval", "pointing-synthetic", "--annotations", str(annotations), "--images", str(images)]
    assert main([*argv, "--on", "pointing-coco"]) == 1
    assert "--on applies to mismatch and faithfulness only" in capsys.readouterr().err


def test_loader_options_enter_the_cache_key(synthetic, adapter, tmp_path):
    """Items loaded under other options (a split, Karpathy's file, the instances) may be other items: the
    options given key the cache as ``clipalign eval`` keys its; none given keeps the key it had."""
    items = load_synthetic_pointing(*synthetic)
    method = TokenPatchInteractions(adapter, steps=2)
    model_settings = {"model": "tiny"}

    def run(loader=None):
        return run_mismatch(
            "pointing-synthetic",
            items,
            method,
            tmp_path,
            model_settings=model_settings,
            progress=False,
            limit=1,
            loader=loader,
        )

    cache = tmp_path / "mismatch" / "pointing-synthetic" / "cache"
    assert run().newly_scored == 1
    before = {"analysis": "mismatch", "benchmark": "pointing-synthetic", **model_settings}
    before.update(method.settings.to_dict())
    assert [p.name for p in cache.glob("*.jsonl")] == [f"{settings_key(before)}.jsonl"]
    assert run({"split": None, "karpathy": ""}).newly_scored == 0  # options not given
    assert run({"split": "val"}).newly_scored == 1
    [keyed] = [p for p in cache.glob("*.settings.json") if "loader" in p.read_text()]
    assert json.loads(keyed.read_text())["loader"] == {"split": "val"}
    assert run({"split": "val"}).newly_scored == 0
