"""HNC (Hard Negative Captions) in its original format: the loader against a plain reading of the file.

The file is written here in HNC's layout (image id → ``captions`` → caption id → caption with
``label``, ``type``, ``bboxes`` of ``{"bbox": {x, y, w, h}, "name"}``; one image without the
``captions`` level, which exCLIP's reader also accepts). The reference restates exCLIP's reading
(``exclip/datasets/hnc.py``: every caption of every image, the image file ``<id>.jpg`` unless the id
holds ``jpg``) and keeps the correct captions; the phrases are then checked by hand.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from clipalign.cli.main import main
from clipalign.datasets import BENCHMARKS, AnnotationFormatError, load_hnc


def caption(text: str, label: int, type_: str, objects: dict, **changes) -> dict:
    """One caption entry with every key HNC's generator writes (``build_caption_dict``)."""
    entry = {"caption": text, "label": label, "type": type_, "textual_label": None, "ambiguity": False}
    entry |= {"noisy": None, "replaced": None, "cpt_p_id": None}
    bboxes = {
        i: {"bbox": dict(zip("xywh", box, strict=True)), "name": name} for i, (name, box) in objects.items()
    }
    return entry | {"bboxes": bboxes} | changes


CUP_TABLE = {"101": ("cup", (4, 6, 10, 12)), "102": ("table", (0, 30, 60, 20))}
HNC = {
    "2354786": {
        "captions": {
            "10": caption("The cup is on the table.", 1, "relation", CUP_TABLE),
            "11": caption(
                "The cup is under the table.",
                0,
                "relation",
                CUP_TABLE,
                textual_label="on",
                replaced=["on", "under"],
                cpt_p_id=10,
            ),
            "12": caption(
                "There are two Chairs.",
                1,
                "quantity",
                {"103": ("chair", (40, 2, 8, 9.5)), "104": ("chair", (50, 2, 8, 9))},
            ),
        }
    },
    "n12345.jpg": {  # no "captions" level, as exCLIP also reads
        "20": caption(
            "A T-shirt is white.",
            1,
            "attribute",
            {"201": ("t-shirt", (1, 2, 3, 4)), "202": ("sleeve", (5, 2, 3, 4))},
        ),
    },
}


def exclip_reading(data: dict, images: str) -> list[dict]:
    """exCLIP's HNCDataset: each caption with its image path; here only the correct ones."""
    rows = []
    for img_id in data:
        cpts = data[img_id].get("captions", data[img_id])
        for cpt_id in cpts:
            cpt = cpts[cpt_id]
            path = f"{images}/{img_id}"
            path = path if "jpg" in path else path + ".jpg"
            if int(cpt["label"]) == 1:
                rows.append({"image": path, "caption": cpt["caption"], "id": cpt_id, "bboxes": cpt["bboxes"]})
    return rows


@pytest.fixture
def hnc_file(tmp_path):
    path = tmp_path / "hnc_clean_strict_test.json"
    path.write_text(json.dumps(HNC))
    return path


def test_items_are_the_correct_captions_named_objects_and_their_boxes(hnc_file, tmp_path):
    items = load_hnc(hnc_file, tmp_path / "images")
    assert BENCHMARKS["hnc"] is load_hnc
    reference = exclip_reading(HNC, str(tmp_path / "images"))
    # each correct caption once per object name it writes ("sleeve" is not written), in file order,
    # with exCLIP's image path
    written = [{o["name"] for o in r["bboxes"].values()} - {"sleeve"} for r in reference]
    assert [(str(it.image), it.caption) for it in items] == [
        (r["image"], r["caption"]) for r, names in zip(reference, written, strict=True) for _ in names
    ]
    cup, table, chairs, shirt = items
    assert shirt.image == tmp_path / "images" / "n12345.jpg"  # an id holding "jpg" is the file name
    assert shirt.phrase == "T-shirt"
    assert (cup.phrase, cup.boxes, cup.meta["category"]) == ("cup", ((4.0, 6.0, 10.0, 12.0),), "cup")
    assert table.caption[table.phrase_start : table.phrase_end] == "table"
    assert table.boxes == ((0.0, 30.0, 60.0, 20.0),)
    # two objects of one name: one phrase (plural, any case), both boxes
    assert chairs.phrase == "Chairs"
    assert chairs.boxes == ((40.0, 2.0, 8.0, 9.5), (50.0, 2.0, 8.0, 9.0))
    assert chairs.meta["object_ids"] == ("103", "104")
    assert [it.id for it in items] == [
        "2354786-10-101",
        "2354786-10-102",
        "2354786-12-103",
        "n12345.jpg-20-201",
    ]
    assert chairs.meta["type"] == "quantity"
    assert load_hnc(hnc_file, tmp_path / "images", limit=2) == items[:2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["2354786"]["captions"]["10"].pop("label"), "has no 'label'"),
        (lambda d: d["2354786"]["captions"]["10"].update(label="yes"), "is not 0 or 1"),
        (lambda d: d["2354786"]["captions"]["10"]["bboxes"]["101"].update(bbox=[1, 2, 3]), "expected dict"),
        (lambda d: d["2354786"]["captions"]["10"]["bboxes"]["101"]["bbox"].pop("w"), "x, y, w, h"),
        (lambda d: d["2354786"]["captions"]["12"]["bboxes"]["103"].pop("name"), "has no 'name'"),
    ],
)
def test_malformed_files_name_the_file_and_the_place(tmp_path, change, message):
    data = json.loads(json.dumps(HNC))
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationFormatError, match=message) as error:
        load_hnc(path, tmp_path)
    assert str(path) in str(error.value)


def test_eval_hnc_runs_the_pointing_game_per_object_name(hnc_file, tmp_path, tiny_model_dir):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 56), (120, 90, 60)).save(images / "2354786.jpg")
    out = tmp_path / "out"
    argv = ["eval", "hnc", "--annotations", str(hnc_file), "--images", str(images), "--per-class"]
    assert (
        main([*argv, "--model", str(tiny_model_dir), "--out", str(out), "--steps", "2", "--no-progress"]) == 0
    )
    report = json.loads((out / "hnc" / "report.json").read_text())
    assert (report["metrics"]["items"], report["metrics"]["failed"]) == (4, 1)  # n12345.jpg is missing
    rows = report["metrics"]["per_class"]["rows"]
    assert list(rows)[-1] == "t-shirt"  # its only item failed: last
    assert sorted(rows) == ["chair", "cup", "t-shirt", "table"]
    energies = [row["energy"] for row in list(rows.values())[:-1]]
    assert energies == sorted(energies, reverse=True)
    assert (out / "hnc" / "per_class.png").stat().st_size > 0


def test_mismatch_reads_hnc(hnc_file, tmp_path, tiny_model_dir):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 56), (120, 90, 60)).save(images / "2354786.jpg")
    out = tmp_path / "out"
    argv = ["eval", "mismatch", "--on", "hnc", "--annotations", str(hnc_file), "--images", str(images)]
    assert (
        main([*argv, "--model", str(tiny_model_dir), "--out", str(out), "--steps", "2", "--no-progress"]) == 0
    )
    report = json.loads((out / "mismatch" / "hnc" / "report.json").read_text())
    # "The cup is on the table." names two objects; the chairs and the T-shirt captions one each
    assert report["metrics"]["selection"]["two_objects"] == 1
    assert report["metrics"]["selection"]["one_object"] == 2
    assert (report["metrics"]["pairs"], report["metrics"]["failed"]) == (1, 0)
