"""``clipalign eval pointing-* --per-class [KEY]``: the pointing game per class of the items.

Each class's figures must equal the pointing-game metrics computed on that class's items alone, the
rows come sorted by energy, and a bar chart is written beside the report.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from clipalign.cli.main import main
from clipalign.datasets import load_pointing_flickr30k, load_synthetic_pointing
from clipalign.evaluation.runner import per_class_metrics, pointing_metrics
from clipalign.synthetic import write_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    annotations = write_dataset(tmp_path_factory.mktemp("synthetic"), 8, seed=1)
    return annotations, annotations.parent / "images"


def _eval(synthetic, model_dir, out, *extra):
    annotations, images = synthetic
    argv = ["eval", "pointing-synthetic", "--annotations", str(annotations), "--images", str(images)]
    argv += ["--model", str(model_dir), "--out", str(out), "--no-progress", "--steps", "2", *extra]
    return main(argv)


@pytest.mark.parametrize("key", [None, "color"])
def test_each_class_equals_the_pointing_game_on_its_items(synthetic, tiny_model_dir, tmp_path, key, capsys):
    out = tmp_path / "out"
    assert _eval(synthetic, tiny_model_dir, out, "--per-class", *([key] if key else [])) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "pointing-synthetic" / "report.json").read_text())
    per_class = report["metrics"]["per_class"]
    assert per_class["by"] == (key or "category")

    annotations, images = synthetic
    items = load_synthetic_pointing(annotations, images)
    [cache] = (out / "pointing-synthetic" / "cache").glob("*.jsonl")
    records = {r["id"]: r for r in map(json.loads, cache.read_text().splitlines())}
    attribute = key or "shape"  # the synthetic category is the object's shape
    classes = {it.meta[attribute] for it in items}
    assert set(per_class["rows"]) == classes
    for name in classes:
        subset = [records[it.id] for it in items if it.meta[attribute] == name]
        assert per_class["rows"][name] == pointing_metrics(subset)
        assert name in printed
    energies = [row["energy"] for row in per_class["rows"].values()]
    assert energies == sorted(energies, reverse=True)

    md = (out / "pointing-synthetic" / "report.md").read_text()
    table = md[md.index(f"## Per {per_class['by']}") :]
    assert [line.split("|")[1].strip() for line in table.splitlines()[4 : 4 + len(classes)]] == list(
        per_class["rows"]
    )
    with Image.open(out / "pointing-synthetic" / "per_class.png") as chart:
        assert chart.format == "PNG" and chart.height > 100


def test_rows_are_sorted_and_a_class_whose_items_all_failed_comes_last():
    from clipalign.datasets.base import PointingItem

    def item(i: int, category: str) -> PointingItem:
        return PointingItem(f"i{i}", __file__, "a b", "a", 0, 1, ((0, 0, 1, 1),), {"category": category})

    def ok(i: int, hit: bool, energy: float) -> dict:
        return {"id": f"i{i}", "error": None, "hit": hit, "energy": energy, "random_hit": False,
                "centre_hit": True, "box_fraction": 0.1}  # fmt: skip

    items = [item(0, "cat"), item(1, "dog"), item(2, "cat"), item(3, "bus"), item(4, "ant")]
    records = [ok(0, True, 0.2), ok(1, False, 0.5), ok(2, False, 0.4), {"id": "i3", "error": "x"}]
    records.append(ok(4, True, 0.3))
    per_class = per_class_metrics(items, records)
    assert list(per_class["rows"]) == ["dog", "cat", "ant", "bus"]  # cat ties ant on energy: accuracy 0.5 < 1
    assert per_class["rows"]["cat"]["accuracy"] == 0.5
    assert per_class["rows"]["cat"]["energy"] == pytest.approx(0.3)
    assert per_class["rows"]["bus"] == {"items": 1, "failed": 1}


def test_flickr30k_phrase_type_is_the_category(tmp_path):
    root = tmp_path / "flickr"
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "test.txt").write_text("1\n")
    (root / "Sentences" / "1.txt").write_text("[/EN#1/people/other A man] holds [/EN#2/animals a dog] .\n")
    box = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
    objects = "".join(f"<object><name>{n}</name>{box}</object>" for n in (1, 2))
    (root / "Annotations" / "1.xml").write_text(
        f"<annotation><filename>1.jpg</filename>{objects}</annotation>"
    )
    items = load_pointing_flickr30k(root, tmp_path)
    assert [it.meta["category"] for it in items] == ["people/other", "animals"]


def test_unknown_keys_and_other_benchmarks_are_refused(synthetic, tiny_model_dir, tmp_path, capsys):
    assert _eval(synthetic, tiny_model_dir, tmp_path / "out", "--per-class", "nope") == 1
    err = capsys.readouterr().err
    assert "--per-class nope" in err and "color" in err and "\n" not in err.strip()
    annotations, images = synthetic
    argv = ["eval", "synthetic", "--annotations", str(annotations), "--images", str(images), "--per-class"]
    assert main([*argv, "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "--per-class applies to the pointing games only" in capsys.readouterr().err
