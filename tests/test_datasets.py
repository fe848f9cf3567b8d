"""Benchmark loaders: the real HAT and nocaps-FOIL files from ../shared; other formats synthesised."""

from __future__ import annotations

import csv
import json
import sys
import warnings
from pathlib import Path
from unittest import mock

import pytest
from conftest import SHARED, require
from tfrecord.writer import TFRecordWriter

from clipalign.datasets import (
    BENCHMARKS,
    AnnotationFormatError,
    MisalignmentItem,
    PointingItem,
    load_foil,
    load_hat,
    load_nocaps_foil,
    load_pointing_coco,
    load_pointing_flickr30k,
    load_richhf,
    load_seetrue_feedback,
)
from clipalign.datasets.pointing_flickr30k import parse_sentence
from clipalign.datasets.richhf import (
    _read_examples,
    richhf_token_spans,
    token_labels_to_word_labels,
    token_phrases,
)

HAT = SHARED / "annotations" / "hat-trainval.json"
NOCAPS = SHARED / "annotations" / "nocaps-val-foil.json"


def _write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _assert_word_labels(item: MisalignmentItem) -> None:
    assert item.word_labels is not None
    assert len(item.word_labels) == len(item.caption.split())


# -------------------- registry


def test_registry_names_and_limits(tmp_path: Path) -> None:
    assert set(BENCHMARKS) == {
        "foil",
        "nocaps-foil",
        "hat",
        "seetrue-feedback",
        "richhf",
        "pointing-coco",
        "pointing-flickr30k",
        "synthetic",
        "pointing-synthetic",
        "hnc",
    }
    assert BENCHMARKS["hat"] is load_hat
    for loader in BENCHMARKS.values():
        with pytest.raises(ValueError, match="limit"):
            loader(tmp_path / "x.json", tmp_path, limit=-1)


def test_annotation_format_error_is_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON") as info:
        load_hat(bad, tmp_path)
    assert isinstance(info.value, AnnotationFormatError)
    assert info.value.path == bad


# -------------------- HAT (real)


def test_hat_real_file() -> None:
    items = load_hat(require(HAT), "/data/coco/val2014")
    assert len(items) == 400
    assert len({i.id for i in items}) == 400
    assert sum(i.aligned for i in items) == 265
    assert not any(i.meta["grounding_mismatch"] for i in items)  # grounding == caption.split() for all 400
    for item in items:
        _assert_word_labels(item)
        assert item.aligned == (not any(item.word_labels)) == (not item.misaligned_phrases)
        assert all(p in item.caption for p in item.misaligned_phrases)
        assert item.image.parent == Path("/data/coco/val2014")
    by_id = {i.id: i for i in items}
    item = by_id["253a0e50-bd98-4c41-a360-c762f6a9b266"]
    assert item.caption == "A street sign with a detour pointing in different directions."
    assert item.misaligned_phrases == ("pointing in different directions.",)
    assert item.word_labels == (False,) * 6 + (True,) * 4
    assert item.image == Path("/data/coco/val2014/COCO_val2014_000000016903.jpg")
    assert len(item.references) == 5
    assert item.meta["session_id"] == "642c963ee1c5dce1a646dcb3"


def test_hat_limit_keeps_order_and_ids() -> None:
    full = load_hat(require(HAT), "imgs")
    assert [i.id for i in load_hat(HAT, "imgs", limit=7)] == [i.id for i in full[:7]]
    assert load_hat(HAT, "imgs", limit=0) == []


# -------------------- HAT (synthetic)


def _hat_entry(sample_id: str, caption: str, grounding: list, hallucinated: bool) -> dict:
    return {
        "sample_id": sample_id,
        "caption": caption,
        "grounding": grounding,
        "contains_hallucination": hallucinated,
        "image_path": f"{sample_id}.jpg",
        "references": ["a ref"],
    }


def test_hat_runs_and_grounding_mismatch(tmp_path: Path) -> None:
    entries = [
        _hat_entry(
            "a",
            "A red dog and a blue cat sit.",
            [
                ["A", False],
                ["red", True],
                ["dog", True],
                ["and", False],
                ["a", False],
                ["blue", True],
                ["cat", False],
                ["sit.", False],
            ],
            True,
        ),
        # grounding joins two caption words into one entry, and spells one word differently
        _hat_entry(
            "b",
            "A hot dog on a plate.",
            [["A", False], ["hot dog", True], ["on", False], ["a", False], ["plate", False]],
            True,
        ),
    ]
    items = load_hat(_write_json(tmp_path / "hat.json", entries), tmp_path)
    assert items[0].misaligned_phrases == ("red dog", "blue")
    assert items[0].word_labels == (False, True, True, False, False, True, False, False)
    assert not items[0].meta["grounding_mismatch"]
    assert items[1].meta["grounding_mismatch"]
    assert items[1].word_labels == (False, True, True, False, False, False)
    assert items[1].misaligned_phrases == ("hot dog",)
    # the CLIP4DM authors' ground truth: hallucinated grounding words without "." and ",", joined
    assert [i.meta["clip4dm_target"] for i in items] == ["red dog blue", "hot dog"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.pop("caption"), "has no 'caption'"),
        (lambda e: e.update(grounding=[["A", "yes"]]), r"grounding\[0\]"),
        (lambda e: e.update(contains_hallucination=False), "contains_hallucination is False"),
        (lambda e: e.update(references="one"), "'references' is str"),
    ],
)
def test_hat_malformed(tmp_path: Path, mutate, message: str) -> None:
    entry = _hat_entry("a", "A dog.", [["A", False], ["dog.", True]], True)
    mutate(entry)
    path = _write_json(tmp_path / "hat.json", [entry])
    with pytest.raises(ValueError, match=message) as info:
        load_hat(path, tmp_path)
    assert str(path) in str(info.value)


def test_hat_not_a_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_hat(_write_json(tmp_path / "hat.json", {"a": 1}), tmp_path)


# -------------------- nocaps-FOIL


def test_nocaps_foil_real_file() -> None:
    items = load_nocaps_foil(require(NOCAPS), "/data/openimages")
    assert len(items) == 5000
    assert len({i.id for i in items}) == 5000
    assert sum(i.aligned for i in items) == 2500
    first, second = items[0], items[1]
    assert first.id == "0013ea2087020901-baseline" and first.aligned and first.misaligned_phrases == ()
    assert second.id == "0013ea2087020901-foil" and not second.aligned
    assert second.caption == "A little kid standing on the pavement in a skirt. "
    assert second.misaligned_phrases == ("skirt",)
    assert second.image == Path("/data/openimages/0013ea2087020901.jpg")
    assert len(second.references) == 9
    assert second.meta["domain"] == "in-domain"
    assert second.meta["replacement"] == ("shirt", "skirt")
    assert (first.meta["clip4dm_target"], second.meta["clip4dm_target"]) == ("orig", "skirt")
    foils = [i for i in items if not i.aligned]
    assert all(i.misaligned_phrases[0] in i.caption for i in foils)
    assert all(i.meta["replacement_spans"] for i in items)
    multi = [i for i in foils if " " in i.meta["replacement"][1]]
    assert len(multi) == 285
    assert all(i.misaligned_phrases == (i.meta["replacement"][1],) for i in multi)
    assert {i.meta["domain"] for i in items} == {"in-domain", "near-domain", "out-domain"}
    assert [i.id for i in load_nocaps_foil(NOCAPS, "x", limit=3)] == [i.id for i in items[:3]]


def test_nocaps_foil_phrase_as_written_and_malformed(tmp_path: Path) -> None:
    entry = {
        "image_path": "img1.jpg",
        "references": ["r"],
        "baseline": "A BLACK CAMERA ON A TRIPOD.",
        "foil": "A BLACK Golf  Ball ON A TRIPOD.",
        "replacement": ["camera", "golf ball"],
        "domain": "out-domain",
    }
    items = load_nocaps_foil(_write_json(tmp_path / "n.json", [entry]), tmp_path)
    assert items[1].misaligned_phrases == ("Golf  Ball",)
    assert items[1].meta["replacement_spans"] == [(8, 18)]
    entry["replacement"] = ["camera"]
    with pytest.raises(ValueError, match=r"entry 0: 'replacement' must be \[original, foil\]"):
        load_nocaps_foil(_write_json(tmp_path / "n.json", [entry]), tmp_path)


# -------------------- FOIL


def _foil_file(tmp_path: Path) -> Path:
    data = {
        "info": {},
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 480, "width": 640},
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
        ],
        "annotations": [
            {
                "id": 100,
                "image_id": 42,
                "caption": "A dog plays with a ball.",
                "foil_word": "ORIG",
                "target_word": "ORIG",
                "foil": False,
            },
            {
                "id": 100,
                "image_id": 42,
                "caption": "A Cat plays with a ball.",
                "foil_word": "cat",
                "target_word": "dog",
                "foil": True,
            },
            {
                "id": 100,
                "image_id": 42,
                "caption": "A dog plays with a golf ball.",
                "foil_word": "golf ball",
                "target_word": "ball",
                "foil": True,
            },
            {
                "id": 200,
                "image_id": 7,
                "caption": "Two cars on a road",
                "foil_word": "car",
                "target_word": "bus",
                "foil": True,
            },
            {
                "id": 200,
                "image_id": 7,
                "caption": "Two buses on a road",
                "foil_word": "ORIG",
                "target_word": "ORIG",
                "foil": False,
            },
            {
                "id": 100,
                "image_id": 42,
                "caption": "A Cat plays with a ball!",
                "foil_word": "cat",
                "target_word": "dog",
                "foil": True,
            },
        ],
    }
    return _write_json(tmp_path / "foilv1.0_test_2017.json", data)


def test_foil_items(tmp_path: Path) -> None:
    items = load_foil(_foil_file(tmp_path), tmp_path / "val2014")
    assert [i.id for i in items] == [
        "100-orig",
        "100-foil-cat",
        "100-foil-golf_ball",
        "200-foil-car",
        "200-orig",
        "100-foil-cat#2",
    ]
    orig, cat, golf, car, _, _ = items
    assert orig.aligned and orig.misaligned_phrases == () and orig.word_labels is None
    assert orig.image == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"
    assert not cat.aligned and cat.misaligned_phrases == ("Cat",)  # as written in the caption
    assert cat.meta["target_word"] == "dog" and cat.meta["image_id"] == 42
    assert golf.misaligned_phrases == ("golf ball",)
    assert car.misaligned_phrases == ("car",) and car.meta["phrase_spans"] == [(4, 7)]  # "car" in "cars"
    assert [i.meta["clip4dm_target"] for i in items] == ["orig", "cat", "golf ball", "car", "orig", "cat"]
    assert [i.id for i in load_foil(tmp_path / "foilv1.0_test_2017.json", tmp_path, limit=2)] == [
        "100-orig",
        "100-foil-cat",
    ]


def test_foil_references_from_coco(tmp_path: Path) -> None:
    coco = {
        "images": [],
        "annotations": [
            {"id": 100, "image_id": 42, "caption": "A dog plays with a ball."},
            {"id": 101, "image_id": 42, "caption": "A puppy with a toy."},
            {"id": 300, "image_id": 7, "caption": "Buses in traffic."},
        ],
    }
    items = load_foil(_foil_file(tmp_path), tmp_path, coco_captions=_write_json(tmp_path / "caps.json", coco))
    assert items[0].references == ("A puppy with a toy.",)
    assert items[3].references == ("Buses in traffic.",)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("annotations"), "the file has no 'annotations'"),
        (lambda d: d["annotations"][0].update(image_id=99), "image_id 99 is not in 'images'"),
        (lambda d: d["annotations"][1].update(foil=False), r"annotations\[1\]: 'foil' is False"),
        (lambda d: d["annotations"][2].pop("foil_word"), r"annotations\[2\] has no 'foil_word'"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\] has no 'file_name'"),
    ],
)
def test_foil_malformed(tmp_path: Path, mutate, message: str) -> None:
    path = _foil_file(tmp_path)
    data = json.loads(path.read_text())
    mutate(data)
    _write_json(path, data)
    with pytest.raises(ValueError, match=message):
        load_foil(path, tmp_path)


# -------------------- SeeTRUE-Feedback

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 32


def _seetrue_rows() -> list[dict]:
    return [
        {
            "image": "a.png",
            "image_caption": "A red bus parked next to a tree.",
            "human_feedback": ["The bus is blue, not red."],
            "caption_misalignment": "red bus",
            "visual_misalignment": "blue bus",
            "bbox_GroundingDino": "{'boxes': [[1, 2, 3, 4]], 'labels': ['blue bus(0.5)']}",
            "bbox_PaLI": "10 20 30 40 blue bus",
            "dataset_source": "DrawBench",
            "id_in_source_dataset": 17,
        },
        {
            "image": "b.png",
            "image_caption": "Two Cats on a sofa.",
            "human_feedback": "['There is only one cat.', 'One cat, not two.']",
            "caption_misalignment": '"two cats"',
            "visual_misalignment": "one cat",
            "dataset_source": "DrawBench",
            "id_in_source_dataset": 17,
        },
    ]


def test_seetrue_json_and_jsonl(tmp_path: Path) -> None:
    rows = _seetrue_rows()
    json_path = _write_json(tmp_path / "seetrue.json", rows)
    jsonl_path = tmp_path / "seetrue.jsonl"
    jsonl_path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    for path in (json_path, jsonl_path):
        items = load_seetrue_feedback(path, tmp_path / "imgs")
        assert [i.id for i in items] == ["DrawBench/17", "DrawBench/17#2"]
        first, second = items
        assert not first.aligned and not second.aligned
        assert first.image == tmp_path / "imgs" / "a.png"
        assert first.misaligned_phrases == ("red bus",)
        assert first.feedback == "The bus is blue, not red."
        assert first.meta["visual_misalignment"] == "blue bus"
        assert first.meta["bbox_PaLI"] == "10 20 30 40 blue bus"
        assert second.misaligned_phrases == ("Two Cats",)  # quotes dropped, as written in the caption
        assert second.feedback == "There is only one cat."
        assert second.meta["feedbacks"] == ("There is only one cat.", "One cat, not two.")
        assert second.meta["clip4dm_target"] == '"two cats"'  # the authors' NLI premise, lower-cased
    assert len(load_seetrue_feedback(json_path, tmp_path, limit=1)) == 1


def test_seetrue_csv_imagefolder_metadata(tmp_path: Path) -> None:
    path = tmp_path / "metadata.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["file_name", "image_caption", "human_feedback", "caption_misalignment"])
        writer.writeheader()
        writer.writerow(
            {
                "file_name": "x.png",
                "image_caption": "a cat",
                "human_feedback": "no cat",
                "caption_misalignment": "",
            }
        )
    (item,) = load_seetrue_feedback(path, tmp_path)
    assert item.id == "row-0" and item.image == tmp_path / "x.png"
    assert item.misaligned_phrases == () and item.feedback == "no cat"


def test_seetrue_parquet_with_embedded_bytes(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = _seetrue_rows()
    rows[0]["image"] = {"bytes": PNG, "path": "orig_a.png"}
    rows[1]["image"] = {"bytes": JPEG, "path": None}
    rows[1]["human_feedback"] = ["There is only one cat."]
    for row in rows:
        row.pop("bbox_GroundingDino", None)
        row.pop("bbox_PaLI", None)
    table = pa.Table.from_pylist(rows)
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(table, path)
    images = tmp_path / "materialised"
    items = load_seetrue_feedback(path, images)
    assert items[0].image.parent == images and items[0].image.suffix == ".png"
    assert items[1].image.suffix == ".jpg"
    assert items[0].image.read_bytes() == PNG and items[1].image.read_bytes() == JPEG
    assert items[0].meta["image_name"] == "orig_a.png"
    assert "image_bytes" not in items[0].meta
    # idempotent: same names, nothing new written
    again = load_seetrue_feedback(path, images)
    assert [i.image for i in again] == [i.image for i in items]
    assert sorted(p.name for p in images.iterdir()) == sorted(i.image.name for i in items)


def test_seetrue_hub_id_needs_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="needs the `datasets` package"):
        load_seetrue_feedback("mismatch-quest/SeeTRUE-Feedback", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_seetrue_feedback(tmp_path / "missing.json", tmp_path)
    with pytest.raises(FileNotFoundError):  # looks like owner/name but is a missing local export
        load_seetrue_feedback("exports/seetrue.parquet", tmp_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("image_caption"), "row 0 has no 'image_caption'"),
        (lambda r: r.update(image=3), "row 0: 'image' must be"),
        (lambda r: r.update(human_feedback={"a": 1}), "'human_feedback' must be"),
    ],
)
def test_seetrue_malformed(tmp_path: Path, mutate, message: str) -> None:
    rows = _seetrue_rows()
    mutate(rows[0])
    with pytest.raises(ValueError, match=message):
        load_seetrue_feedback(_write_json(tmp_path / "s.json", rows), tmp_path)
    with pytest.raises(ValueError, match=r"expected a \.parquet"):
        load_seetrue_feedback(_write_json(tmp_path / "s.txt", rows), tmp_path)


# -------------------- Rich-HF


def _write_tfrecord(path: Path, *records: dict | bytes) -> Path:
    """Write records with ``tfrecord``: feature dicts ``{name: (value, "byte"|"float"|"int")}``, or
    raw bytes framed as they are (for payloads that are not a ``tf.train.Example``)."""
    writer = TFRecordWriter(str(path))
    try:
        for record in records:
            if isinstance(record, bytes):
                with mock.patch.object(TFRecordWriter, "serialize_tf_example", return_value=record):
                    writer.write({})
            else:
                writer.write(record)
    finally:
        writer.close()
    return path


def _richhf_record(filename: str, labels: str, score: float) -> dict:
    return {
        "filename": (filename.encode(), "byte"),
        "aesthetics_score": (0.25, "float"),
        "artifact_score": (0.5, "float"),
        "misalignment_score": (score, "float"),
        "overall_score": (0.75, "float"),
        "artifact_map": (PNG, "byte"),
        "misalignment_map": (PNG + b"m", "byte"),
        "prompt_misalignment_label": (labels.encode(), "byte"),
    }


PROMPTS = {
    "u1": 'A dog, a "red" cat; and a hat.',  # tokens: A dog a red cat and a hat
    "u2": "a photo of an astronaut riding a horse",
}


def _richhf_file(tmp_path: Path) -> Path:
    return _write_tfrecord(
        tmp_path / "test.tfrecord",
        _richhf_record("images/u1.png", "1 0 1 0 0 1 1 1", 0.5),
        _richhf_record("images/u2.png", "1 1 1 1 1 1 1 1", 1.0),
    )


def test_richhf_feature_values(tmp_path: Path) -> None:
    record = {
        "b": ([b"x", b""], "byte"),
        "one": (PNG, "byte"),  # a lone bytes value keeps its trailing NULs
        "none": ([], "byte"),
        "f": ([1.5, -2.0], "float"),
        "i": ([3, -4, 2**40], "int"),
    }
    path = _write_tfrecord(tmp_path / "x.tfrecord", record, {"f": (0.1, "float")})
    assert list(_read_examples(path)) == [
        {"b": [b"x", b""], "one": [PNG], "none": [], "f": [1.5, -2.0], "i": [3, -4, 2**40]},
        {"f": [pytest.approx(0.1)]},
    ]
    assert list(_read_examples(_write_tfrecord(tmp_path / "empty.tfrecord"))) == []


def test_richhf_token_spans_match_reference_split() -> None:
    import re

    prompt = 'RichHF-18K: a dataset for "rich" human feedback, on generative images.'
    reference = [t for t in re.split("|".join(map(re.escape, ',.?!":; ')), prompt) if t]
    assert [prompt[a:b] for a, b in richhf_token_spans(prompt)] == reference


def test_richhf_token_phrases() -> None:
    prompt = 'a "red" cat, dog red cat'
    spans = richhf_token_spans(prompt)
    assert token_phrases(prompt, spans, [False, True, True, True, True, True]) == (
        "red",
        "cat",
        "dog red cat",
    )
    assert token_labels_to_word_labels(prompt, spans, [False, True, False, False, False, True]) == [
        False,
        True,
        False,
        False,
        False,
        True,
    ]


def test_richhf_items(tmp_path: Path) -> None:
    path = _richhf_file(tmp_path)
    items = load_richhf(path, tmp_path / "images", prompts=PROMPTS)
    assert [i.id for i in items] == ["u1", "u2"]
    first, second = items
    assert first.caption == PROMPTS["u1"]
    assert first.image == tmp_path / "images" / "u1.png"
    assert not first.aligned and second.aligned
    assert first.meta["tokens"] == ("A", "dog", "a", "red", "cat", "and", "a", "hat")
    assert first.meta["token_labels"] == (1, 0, 1, 0, 0, 1, 1, 1)
    assert first.meta["clip4dm_target"] == "1_dog 3_red 4_cat" and second.meta["clip4dm_target"] == ""
    # whitespace words: A | dog, | a | "red" | cat; | and | a | hat.
    assert first.word_labels == (False, True, False, True, True, False, False, False)
    _assert_word_labels(first)
    assert first.misaligned_phrases == ("dog", "red", "cat")  # runs split at punctuation
    assert first.misalignment_score == 0.5
    assert first.meta["aesthetics_score"] == 0.25 and first.meta["overall_score"] == 0.75
    assert first.meta["artifact_map"] == PNG and first.meta["misalignment_map"] == PNG + b"m"
    assert second.misaligned_phrases == () and second.word_labels == (False,) * 8
    assert second.misalignment_score == 1.0
    assert [i.id for i in load_richhf(path, tmp_path, prompts=PROMPTS, limit=1)] == ["u1"]


def test_richhf_prompt_sources(tmp_path: Path) -> None:
    path = _richhf_file(tmp_path)
    expected = [i.caption for i in load_richhf(path, tmp_path, prompts=PROMPTS)]
    by_filename = {"images/u1.png": PROMPTS["u1"], "u2.png": PROMPTS["u2"]}
    assert [i.caption for i in load_richhf(path, tmp_path, prompts=by_filename)] == expected
    json_path = _write_json(tmp_path / "prompts.json", PROMPTS)
    assert [i.caption for i in load_richhf(path, tmp_path, prompts=json_path)] == expected
    records = _write_json(tmp_path / "records.json", [{"uid": k, "caption": v} for k, v in PROMPTS.items()])
    assert [i.caption for i in load_richhf(path, tmp_path, prompts=records)] == expected
    # CLIP4DM layout: <uid>.txt beside <uid>.png in the images folder
    images = tmp_path / "images"
    images.mkdir()
    for uid, prompt in PROMPTS.items():
        (images / f"{uid}.txt").write_text(prompt + "\n", encoding="utf-8")
        (images / f"{uid}.jpg").write_bytes(JPEG)
    items = load_richhf(path, images)
    assert [i.caption for i in items] == expected
    assert items[0].image == images / "u1.jpg"  # no u1.png there, the same uid's .jpg is used


def test_richhf_pickapic_parquet_prompts(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    shards = tmp_path / "pickapic"
    shards.mkdir()
    table = pa.table(
        {
            "caption": [PROMPTS["u1"], PROMPTS["u2"]],
            "image_0_uid": ["u1", "zz"],
            "image_1_uid": ["yy", "u2"],
            "jpg_0": [JPEG, JPEG],
        }
    )
    pq.write_table(table, shards / "test-0.parquet")
    path = _richhf_file(tmp_path)
    assert [i.caption for i in load_richhf(path, tmp_path, prompts=shards)] == list(PROMPTS.values())
    pq.write_table(pa.table({"uid": ["u1", "u2"], "prompt": list(PROMPTS.values())}), tmp_path / "p.parquet")
    assert len(load_richhf(path, tmp_path, prompts=tmp_path / "p.parquet")) == 2
    pq.write_table(pa.table({"name": ["u1"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="prompt table needs a key column"):
        load_richhf(path, tmp_path, prompts=tmp_path / "bad.parquet")


def test_richhf_unmatched_prompts(tmp_path: Path) -> None:
    path = _richhf_file(tmp_path)
    short = {"u1": "A dog", "u2": PROMPTS["u2"]}
    mismatched, fine = load_richhf(path, tmp_path, prompts=short)  # a failure row, not an abort
    assert mismatched.problem == "record 0 (images/u1.png): 8 labels but 2 prompt tokens in 'A dog'"
    assert mismatched.caption == "A dog" and not mismatched.aligned and mismatched.word_labels is None
    assert fine.problem is None and fine.id == "u2"
    with pytest.raises(ValueError, match="no prompt for uid 'u2'"):
        load_richhf(path, tmp_path, prompts={"u1": PROMPTS["u1"]})
    with pytest.warns(UserWarning, match=r"skipped 1 record"):
        items = load_richhf(path, tmp_path, prompts=short, skip_unmatched=True)
    assert [i.id for i in items] == ["u2"]


def flip_label(data: bytes) -> bytes:
    """The file with the last ``prompt_misalignment_label`` digit (a "1" in the second record) made "0"."""
    at = data.rindex(b"1 1 1 1 1 1 1 1") + 14
    return data[:at] + b"0" + data[at + 1 :]


def test_richhf_corrupt_files(tmp_path: Path) -> None:
    good = _richhf_file(tmp_path).read_bytes()
    one = _write_tfrecord(tmp_path / "one.tfrecord", _richhf_record("u1.png", "1", 0.1)).read_bytes()
    cases = {
        "trunc.tfrecord": (good[:-10], "record 1: truncated"),
        "header.tfrecord": (good + b"\x01\x02", "record 2: truncated"),
        "length.tfrecord": (good + b"\xff" * 16, r"record 2: length CRC mismatch \(corrupt record length"),
        "json.tfrecord": (b'{"not": "a tfrecord"}', "record 0: length CRC mismatch"),
        "proto.tfrecord": (one[:12] + b"\x07" + one[13:], "record 0: data CRC mismatch"),
        # one flipped bit in the second record's label: tfrecord alone would read "0" as "1"
        "flip.tfrecord": (flip_label(good), "record 1: data CRC mismatch"),
    }
    records = {
        "labels.tfrecord": (_richhf_record("u1.png", "1 x 1", 0.1), "is not 0/1s"),
        "nofile.tfrecord": ({"x": (b"1", "byte")}, "record 0 has no 'filename'"),
        "emptyname.tfrecord": ({"filename": ([], "byte")}, "has no 'filename'"),
        "intname.tfrecord": ({"filename": (7, "int")}, "'filename' is not a bytes feature"),
        "rawproto.tfrecord": (b"\x0a\x05\x0a", "record 0 is not a tf.train.Example"),
        "nokind.tfrecord": (b"\x0a\x07\x0a\x05\x0a\x01x\x12\x00", "record 0: a feature holds no value"),
    }
    for name, (record, message) in records.items():
        cases[name] = (_write_tfrecord(tmp_path / name, record).read_bytes(), message)
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message) as info:
            load_richhf(path, tmp_path, prompts=PROMPTS)
        assert isinstance(info.value, AnnotationFormatError)
        assert str(path) in str(info.value)


# -------------------- COCO pointing


def _coco_files(tmp_path: Path) -> tuple[Path, Path]:
    images = [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"}, {"id": 2, "file_name": "two.jpg"}]
    captions = {
        "images": images,
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "Two Dogs eat a hot dog near the buses."},
            {"id": 11, "image_id": 1, "caption": "A man with a dogsled and a cat."},
            {"id": 12, "image_id": 2, "caption": "A dog on a traffic  lights pole."},
            {"id": 13, "image_id": 3, "caption": "A dog with no image annotations."},
        ],
    }
    instances = {
        "images": images,
        "categories": [
            {"id": 18, "name": "dog", "supercategory": "animal"},
            {"id": 58, "name": "hot dog", "supercategory": "food"},
            {"id": 6, "name": "bus", "supercategory": "vehicle"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 10, "name": "traffic light", "supercategory": "outdoor"},
            {"id": 17, "name": "cat", "supercategory": "animal"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 18, "bbox": [5.5, 6, 7, 8], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 58, "bbox": [10, 10, 5, 5], "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 6, "bbox": [0, 0, 50, 20], "iscrowd": 0},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [30, 30, 10, 20], "iscrowd": 0},
            {"id": 6, "image_id": 2, "category_id": 10, "bbox": [3, 3, 2, 6], "iscrowd": 0},
        ],
    }
    return (
        _write_json(tmp_path / "captions_val2014.json", captions),
        _write_json(tmp_path / "instances_val2014.json", instances),
    )


def test_pointing_coco(tmp_path: Path) -> None:
    captions, _ = _coco_files(tmp_path)
    items = load_pointing_coco(captions, tmp_path / "val2014")  # instances file derived from the name
    assert all(isinstance(i, PointingItem) for i in items)
    got = [(i.id, i.phrase, i.caption[i.phrase_start : i.phrase_end]) for i in items]
    assert got == [
        ("10-18", "Dogs", "Dogs"),
        ("10-58", "hot dog", "hot dog"),
        ("10-6", "buses", "buses"),
        ("11-1", "man", "man"),  # through the built-in synonym table
        ("12-10", "traffic  lights", "traffic  lights"),
    ]
    dogs = items[0]
    assert dogs.boxes == ((1.0, 2.0, 3.0, 4.0), (5.5, 6.0, 7.0, 8.0))
    assert dogs.meta["iscrowd"] == (False, True) and dogs.meta["category"] == "dog"
    assert dogs.image == tmp_path / "val2014" / "COCO_val2014_000000000001.jpg"
    assert items[1].boxes == ((10.0, 10.0, 5.0, 5.0),)
    names_only = load_pointing_coco(captions, tmp_path, synonyms={})
    assert "11-1" not in [i.id for i in names_only] and len(names_only) == 4
    assert [i.id for i in load_pointing_coco(captions, tmp_path, limit=2)] == ["10-18", "10-58"]


def test_pointing_coco_malformed(tmp_path: Path) -> None:
    captions, instances = _coco_files(tmp_path)
    data = json.loads(instances.read_text())
    data["annotations"][0]["bbox"] = [1, 2, -3, 4]
    _write_json(instances, data)
    with pytest.raises(ValueError, match=r"instances_val2014\.json: annotations\[0\]: 'bbox' must be"):
        load_pointing_coco(captions, tmp_path)
    with pytest.raises(ValueError, match="pass instances="):
        load_pointing_coco(_write_json(tmp_path / "caps.json", {}), tmp_path)


# -------------------- Flickr30k Entities


def _flickr_root(tmp_path: Path) -> Path:
    root = tmp_path / "flickr30k_entities"
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Sentences" / "1000.txt").write_text(
        "[/EN#18/people A man] with [/EN#19/bodyparts pierced ears] is wearing [/EN#20/clothing glasses] "
        "and [/EN#21/clothing an orange hat] .\n"
        "[/EN#18/people/other A guy] stands in [/EN#22/scene the street] near [/EN#0/notvisual nothing] .\n",
        encoding="utf-8",
    )
    (root / "Annotations" / "1000.xml").write_text(
        """<annotation><filename>1000.jpg</filename>
        <size><width>500</width><height>333</height><depth>3</depth></size>
        <object><name>18</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>111</xmax><ymax>221</ymax></bndbox>
        </object>
        <object><name>18</name><name>20</name>
          <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>9</ymax></bndbox></object>
        <object><name>19</name><nobndbox>1</nobndbox><scene>0</scene></object>
        <object><name>22</name><nobndbox>0</nobndbox><scene>1</scene></object>
        <object><name>21</name><bndbox><xmin>50</xmin><ymin>60</ymin><xmax>70</xmax><ymax>80</ymax></bndbox>
        </object></annotation>""",
        encoding="utf-8",
    )
    (root / "Sentences" / "999.txt").write_text("[/EN#1/animals A dog] runs .\n", encoding="utf-8")
    (root / "Annotations" / "999.xml").write_text(
        "<annotation><object><name>1</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>4</xmax><ymax>5</ymax>"
        "</bndbox></object></annotation>",
        encoding="utf-8",
    )
    (root / "test.txt").write_text("1000\n", encoding="utf-8")
    return root


def test_parse_sentence() -> None:
    caption, phrases = parse_sentence("[/EN#5/people/other Two men] play [/EN#6/other  chess ] .")
    assert caption == "Two men play chess ."
    assert [(e, t, caption[s:end]) for e, t, s, end in phrases] == [
        ("5", ("people", "other"), "Two men"),
        ("6", ("other",), "chess"),
    ]
    with pytest.raises(ValueError, match="malformed phrase markup"):
        parse_sentence("[/EN#5/people Two men play .")


def test_pointing_flickr30k(tmp_path: Path) -> None:
    root = _flickr_root(tmp_path)
    items = load_pointing_flickr30k(root, tmp_path / "flickr30k-images", split="all")
    assert [i.id for i in items] == ["999-0-0", "1000-0-0", "1000-0-2", "1000-0-3", "1000-1-0"]
    assert items[0].image == tmp_path / "flickr30k-images" / "999.jpg"
    assert items[0].boxes == ((1.0, 2.0, 2.0, 2.0),)
    man = items[1]
    assert man.caption == "A man with pierced ears is wearing glasses and an orange hat ."
    assert (man.phrase, man.caption[man.phrase_start : man.phrase_end]) == ("A man", "A man")
    assert man.boxes == ((10.0, 20.0, 100.0, 200.0), (0.0, 0.0, 4.0, 8.0))
    assert man.meta["types"] == ("people",) and man.meta["entity_id"] == "18"
    glasses, hat, guy = items[2:]
    assert glasses.phrase == "glasses" and glasses.boxes == ((0.0, 0.0, 4.0, 8.0),)
    assert hat.phrase == "an orange hat" and hat.caption[hat.phrase_start : hat.phrase_end] == "an orange hat"
    assert guy.caption == "A guy stands in the street near nothing ." and guy.phrase == "A guy"
    test_split = load_pointing_flickr30k(root, tmp_path)  # the official test split by default
    assert [i.id for i in test_split] == ["1000-0-0", "1000-0-2", "1000-0-3", "1000-1-0"]
    assert len(load_pointing_flickr30k(root, tmp_path, limit=2, split="all")) == 2


def test_pointing_flickr30k_malformed(tmp_path: Path) -> None:
    root = _flickr_root(tmp_path)
    (root / "Sentences" / "999.txt").write_text("[/EN#1/animals A dog runs .\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"999\.txt: sentence 0: malformed phrase markup"):
        load_pointing_flickr30k(root, tmp_path, split="all")
    (root / "Sentences" / "999.txt").write_text("[/EN#1/animals A dog] runs .\n", encoding="utf-8")
    (root / "Annotations" / "999.xml").write_text("<annotation><object>", encoding="utf-8")
    with pytest.raises(ValueError, match=r"999\.xml: not valid XML"):
        load_pointing_flickr30k(root, tmp_path, split="all")
    (root / "Annotations" / "999.xml").write_text(
        "<annotation><object><name>1</name><bndbox><xmin>a</xmin></bndbox></object></annotation>",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="bndbox needs numeric"):
        load_pointing_flickr30k(root, tmp_path, split="all")
    with pytest.raises(FileNotFoundError):
        load_pointing_flickr30k(root, tmp_path, split="val")


def test_no_warnings_on_clean_loads(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_richhf(_richhf_file(tmp_path), tmp_path, prompts=PROMPTS)
        load_foil(_foil_file(tmp_path), tmp_path)
