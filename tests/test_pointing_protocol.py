"""The pointing-game protocol: official splits (Flickr30k Entities test, Karpathy's COCO val), COCO
category synonyms, and ``eval pointing-* --exclip`` running exCLIP's interaction settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.cli.main import main
from clipalign.datasets import AnnotationFormatError, load_pointing_coco, load_pointing_flickr30k
from clipalign.datasets.pointing_coco import COCO_SYNONYMS
from clipalign.evaluation.measures import pointing_game
from clipalign.settings import InteractionSettings, WordSettings
from clipalign.synthetic.writer import write_dataset

EVAL_BATCH = WordSettings().batch_size  # eval's --batch-size default: pairs per call, pointing games too

# -------------------- Flickr30k Entities splits


def _flickr(tmp_path: Path, splits: dict[str, list[str]]) -> Path:
    """A Flickr30k Entities root with images 1..4 (one phrase each) and the given split files."""
    root = tmp_path / "entities"
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for image_id in ("1", "2", "3", "4"):
        (root / "Sentences" / f"{image_id}.txt").write_text(f"[/EN#{image_id}/animals A dog] runs .\n")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><object><name>{image_id}</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
        )
    for split, ids in splits.items():
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_flickr_reads_the_official_split_files_in_their_order(tmp_path):
    root = _flickr(tmp_path, {"train": ["1", "2"], "val": ["4"], "test": ["3", "1"]})

    def images(**kwargs):
        return [i.meta["image_id"] for i in load_pointing_flickr30k(root, tmp_path, **kwargs)]

    assert images() == ["3", "1"]  # test, the paper's split, by default
    assert images(split="train") == ["1", "2"]
    assert images(split="val") == ["4"]
    assert images(split="all") == ["1", "2", "3", "4"]


def test_flickr_split_errors(tmp_path):
    root = _flickr(tmp_path, {"test": ["3", "9"]})
    with pytest.raises(AnnotationFormatError, match=r"test\.txt: line 2: image '9' has no Sentences/9\.txt"):
        load_pointing_flickr30k(root, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"val\.txt: no such split file .*split='all'"):
        load_pointing_flickr30k(root, tmp_path, split="val")
    with pytest.raises(ValueError, match="split must be one of train, val, test or all"):
        load_pointing_flickr30k(root, tmp_path, split="../test")


# -------------------- COCO: Karpathy split and synonyms

CATEGORIES = {1: "person", 2: "bicycle", 4: "motorcycle", 5: "airplane", 63: "tv", 18: "dog", 44: "bottle"}


def _coco(tmp_path: Path, captions: dict[int, list[str]], objects: dict[int, list[int]]) -> Path:
    """captions_val2014.json and instances_val2014.json: image id → captions, image id → category ids."""
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in sorted(captions)]
    anns = [
        {"id": 100 * i + k, "image_id": i, "caption": c}
        for i, texts in captions.items()
        for k, c in enumerate(texts)
    ]
    boxes = [
        {"id": 1000 * i + c, "image_id": i, "category_id": c, "bbox": [c, 1, 2, 3], "iscrowd": 0}
        for i, cats in objects.items()
        for c in cats
    ]
    cats = [{"id": c, "name": n} for c, n in CATEGORIES.items()]
    (tmp_path / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    (tmp_path / "instances_val2014.json").write_text(
        json.dumps({"images": images, "categories": cats, "annotations": boxes})
    )
    return tmp_path / "captions_val2014.json"


def _karpathy(tmp_path: Path, splits: dict[int, str]) -> Path:
    """A dataset_coco.json in Karpathy's layout (images with cocoid, split, filepath, sentences)."""
    images = [
        {
            "filepath": "val2014",
            "filename": f"COCO_val2014_{i:012d}.jpg",
            "cocoid": i,
            "imgid": n,
            "split": split,
            "sentids": [n],
            "sentences": [{"raw": "x", "tokens": ["x"], "imgid": n, "sentid": n}],
        }
        for n, (i, split) in enumerate(splits.items())
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_coco_keeps_the_karpathy_split(tmp_path):
    captions = _coco(
        tmp_path, {1: ["A dog."], 2: ["Two dogs."], 3: ["A dog, a dog."]}, {1: [18], 2: [18], 3: [18]}
    )
    karpathy = _karpathy(tmp_path, {1: "val", 2: "test", 3: "val"})

    def images(**kwargs):
        return [i.meta["image_id"] for i in load_pointing_coco(captions, tmp_path, **kwargs)]

    assert images() == [1, 2, 3]  # without the split file: every captioned image
    assert images(karpathy=karpathy) == [1, 3]  # val, the paper's split, by default
    assert images(karpathy=karpathy, split="test") == [2]
    with pytest.raises(AnnotationFormatError, match="no image has split 'restval'"):
        load_pointing_coco(captions, tmp_path, karpathy=karpathy, split="restval")
    with pytest.raises(ValueError, match="Karpathy split must be one of"):
        load_pointing_coco(captions, tmp_path, karpathy=karpathy, split="minival")
    with pytest.raises(ValueError, match=r"needs Karpathy's dataset_coco\.json"):
        load_pointing_coco(captions, tmp_path, split="val")


def test_coco_karpathy_images_missing_from_the_captions_file_are_an_error(tmp_path):
    captions = _coco(tmp_path, {1: ["A dog."]}, {1: [18]})
    karpathy = _karpathy(tmp_path, {1: "val", 7: "val"})
    with pytest.raises(AnnotationFormatError, match=r"1 of the 2 images .*'val' split .*image 7.*val2014"):
        load_pointing_coco(captions, tmp_path, karpathy=karpathy)


@pytest.mark.parametrize(
    ("caption", "phrase", "category"),
    [
        ("A man rides a horse.", "man", "person"),
        ("Two women talking.", "women", "person"),
        ("The boy and his kite.", "boy", "person"),
        ("A girl eats.", "girl", "person"),
        ("Some people on a street.", "people", "person"),
        ("A child sleeps.", "child", "person"),
        ("Children playing.", "Children", "person"),
        ("A bike on a wall.", "bike", "bicycle"),
        ("Two bikes parked.", "bikes", "bicycle"),
        ("A red motorbike.", "motorbike", "motorcycle"),
        ("A plane in the sky.", "plane", "airplane"),
        ("Planes at the gate.", "Planes", "airplane"),
        ("A TV on the wall.", "TV", "tv"),
        ("An old television set.", "television", "tv"),
        ("Bottles of wine.", "Bottles", "bottle"),
    ],
)
def test_coco_synonyms_map_caption_words_to_categories(tmp_path, caption, phrase, category):
    captions = _coco(tmp_path, {1: [caption]}, {1: list(CATEGORIES)})
    [item] = load_pointing_coco(captions, tmp_path)
    assert (item.phrase, item.meta["category"]) == (phrase, category)
    assert item.caption[item.phrase_start : item.phrase_end] == phrase


def test_coco_synonyms_are_data_and_only_present_categories_count(tmp_path):
    assert set(COCO_SYNONYMS["person"]) >= {"man", "woman", "boy", "girl", "people", "child"}
    assert COCO_SYNONYMS["bicycle"] == ("bike",) and "motorbike" in COCO_SYNONYMS["motorcycle"]
    captions = _coco(tmp_path, {1: ["A man on a motor bike."]}, {1: [4]})  # no person in the image
    [item] = load_pointing_coco(captions, tmp_path)
    assert (item.phrase, item.meta["category"]) == ("motor bike", "motorcycle")
    assert load_pointing_coco(captions, tmp_path, synonyms={}) == []


# -------------------- the CLI passes the protocol's settings


def _synthetic(tmp_path: Path) -> tuple[Path, Path]:
    annotations = write_dataset(tmp_path / "synthetic", 2, seed=0)
    return annotations, annotations.parent / "images"


@pytest.fixture
def captured(monkeypatch):
    """Record the InteractionSettings and items that ``eval`` hands to ``run_benchmark``."""
    import clipalign.evaluation.benchmark as benchmark

    seen: dict = {}
    real = benchmark.run_benchmark

    def spy(benchmark, items, model, out, **kwargs):
        seen.update(benchmark=benchmark, items=items, **kwargs)
        return real(benchmark, items, model, out, **kwargs)

    monkeypatch.setattr(benchmark, "run_benchmark", spy)  # `eval` imports it when it runs
    return seen


def _eval(tmp_path, tiny_model_dir, *extra):
    annotations, images = _synthetic(tmp_path)
    argv = ["eval", "pointing-synthetic", "--annotations", str(annotations), "--images", str(images)]
    argv += ["--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--no-progress", *extra]
    return main(argv)


def test_eval_pointing_exclip_passes_exclips_settings(tmp_path, tiny_model_dir, captured):
    assert _eval(tmp_path, tiny_model_dir, "--exclip", "--limit", "1") == 0
    expected = InteractionSettings(
        rule="riemann", normalize="exclip", steps=10, text_block=-1, image_block=-1, batch_size=EVAL_BATCH
    )
    assert captured["interactions"] == expected
    report = json.loads((tmp_path / "out" / "pointing-synthetic" / "report.json").read_text())
    assert report["settings"]["rule"] == "riemann" and report["settings"]["text_reference"] == "exclip"


def test_eval_pointing_options_override_and_default(tmp_path, tiny_model_dir, captured):
    argv = ["--exclip", "--steps", "3", "--block", "1", "--image-block", "0", "--limit", "1"]
    assert _eval(tmp_path, tiny_model_dir, *argv) == 0
    assert captured["interactions"] == InteractionSettings(
        rule="riemann", normalize="exclip", steps=3, text_block=1, image_block=0, batch_size=EVAL_BATCH
    )
    argv = [
        "--rule",
        "riemann",
        "--normalize",
        "exclip",
        "--steps",
        "2",
        "--limit",
        "1",
        "--out",
        str(tmp_path / "o2"),
    ]
    assert _eval(tmp_path, tiny_model_dir, *argv) == 0
    assert captured["interactions"] == InteractionSettings(
        rule="riemann", normalize="exclip", steps=2, batch_size=EVAL_BATCH
    )
    assert _eval(tmp_path, tiny_model_dir, "--steps", "2", "--limit", "1", "--out", str(tmp_path / "o3")) == 0
    assert captured["interactions"] == InteractionSettings(steps=2, batch_size=EVAL_BATCH)


def test_eval_split_reaches_the_loader_and_is_refused_elsewhere(tmp_path, tiny_model_dir, capsys):
    root = _flickr(tmp_path, {"test": ["3"], "train": ["1"]})
    argv = ["eval", "pointing-flickr30k", "--annotations", str(root), "--images", str(tmp_path)]
    argv += ["--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--no-progress", "--steps", "1"]
    assert main([*argv, "--split", "train"]) == 0
    report = json.loads((tmp_path / "out" / "pointing-flickr30k" / "report.json").read_text())
    assert report["metrics"]["items"] == 1
    assert main([*argv, "--split", "nope"]) == 1
    assert "split must be one of" in capsys.readouterr().err
    annotations, images = _synthetic(tmp_path)
    synthetic = ["eval", "pointing-synthetic", "--annotations", str(annotations), "--images", str(images)]
    assert main([*synthetic, "--model", str(tiny_model_dir), "--split", "test"]) == 1
    assert "--split does not apply to pointing-synthetic" in capsys.readouterr().err


def test_interaction_options_are_refused_outside_pointing_games(tmp_path, capsys):
    annotations, images = _synthetic(tmp_path)
    argv = ["eval", "synthetic", "--annotations", str(annotations), "--images", str(images)]
    for extra in (["--exclip"], ["--rule", "riemann"], ["--block", "3"]):
        assert main([*argv, *extra]) == 1
        assert "apply to pointing-* only" in capsys.readouterr().err


# -------------------- pointing-game rules: ties, box masks, shared matrices


def middle_of_ties(heatmap: np.ndarray) -> tuple[int, int]:
    """The rule written out: among the pixels at the maximum (NaN never), the median row, then the
    median column of that row's tied pixels."""
    best = max(v for v in heatmap.flat if not np.isnan(v))
    tied = [(r, c) for r in range(heatmap.shape[0]) for c in range(heatmap.shape[1]) if heatmap[r, c] == best]
    rows = sorted({r for r, _ in tied})
    row = rows[len(rows) // 2]
    cols = [c for r, c in tied if r == row]
    return row, cols[len(cols) // 2]


def box_pixels(box, shape) -> set[tuple[int, int]]:
    """Pixels (row, col) whose unit square [c, c+1) × [r, r+1) overlaps the box's open interior."""
    x, y, w, h = box
    return {
        (r, c)
        for r in range(shape[0])
        for c in range(shape[1])
        if c < x + w and c + 1 > x and r < y + h and r + 1 > y
    }


def test_a_tied_patch_points_at_its_centre():
    heat = np.zeros((12, 12))
    heat[4:8, 0:4] = 2.0  # one 4×4 patch at the maximum: its centre pixel is (6, 2)
    assert middle_of_ties(heat) == (6, 2)
    assert pointing_game(heat, [(2, 6, 1, 1)])[0]
    assert not pointing_game(heat, [(0, 6, 1, 1)])[0]  # the left edge of the patch's middle row
    assert not pointing_game(heat, [(2, 4, 1, 1)])[0]  # the patch's first row
    heat[0, 0] = np.nan
    assert pointing_game(np.where(np.isnan(heat), np.nan, -1.0), [(5.5, 5.5, 1, 1)])[0]  # all tied: centre


@pytest.mark.parametrize("seed", range(20))
def test_pointing_game_matches_the_rules_written_out(seed):
    rng = np.random.default_rng(seed)
    heat = rng.integers(-2, 3, (9, 11)).astype(float)  # many ties
    heat[rng.random(heat.shape) < 0.2] = np.nan
    boxes = [tuple(rng.uniform(0, 8, 2)) + tuple(rng.uniform(0, 4, 2)) for _ in range(rng.integers(1, 3))]
    inside = set().union(*(box_pixels(b, heat.shape) for b in boxes))
    hit, energy = pointing_game(heat, boxes)
    assert hit == (middle_of_ties(heat) in inside)
    positive = np.where(np.isnan(heat), 0, np.clip(heat, 0, None))
    total = positive.sum()
    assert energy == pytest.approx(sum(positive[p] for p in inside) / total if total else 0.0)


def test_phrases_of_one_caption_share_one_matrix(adapter, tmp_path):
    from clipalign.datasets import PointingItem
    from clipalign.evaluation.cache import ResultCache
    from clipalign.evaluation.runner import score_pointing
    from clipalign.testing import example_image

    image = tmp_path / "ball.png"
    example_image().save(image)
    caption = "a red ball on green grass"

    def item(name, phrase, other_caption=None):
        text = other_caption or caption
        start = text.index(phrase)
        return PointingItem(name, image, text, phrase, start, start + len(phrase), ((0.0, 0.0, 30.0, 30.0),))

    items = [item("a", "red ball"), item("b", "green grass"), item("c", "ball", "a ball"), item("d", "ball")]
    method = TokenPatchInteractions(adapter, steps=2, batch_size=2)
    calls = []
    real = method.attribute

    def counting(images, captions, **kwargs):
        calls.append(list(captions))
        return real(images, captions, **kwargs)

    method.attribute = counting  # type: ignore[method-assign]
    records = score_pointing(items, method, ResultCache(tmp_path / "cache", {"k": 1}), progress=False)
    # a, b together; c; d again (not adjacent to a, b): three matrices, two pairs per call
    assert calls == [[caption, "a ball"], [caption]]
    [alone] = real([image], [caption], on_error="raise")
    expected = pointing_game(alone.span_heatmap([4, 5]), [(0.0, 0.0, 30.0, 30.0)])
    assert (records[1]["hit"], records[1]["energy"]) == pytest.approx(expected)
    assert [r["id"] for r in ResultCache(tmp_path / "cache", {"k": 1}).load().values()] == list("abcd")
    assert score_pointing(items, method, ResultCache(tmp_path / "cache", {"k": 1}), progress=False) == records
    assert len(calls) == 2  # all four cached: nothing computed again
