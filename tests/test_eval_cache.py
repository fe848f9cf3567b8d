"""``clipalign eval``'s per-item cache: the loader options given are part of its key (results under one
COCO split or instances file are never reused under another, older caches keep their key), and an item
whose image file could not be read is tried again on the next run, alone, while deterministic failures
stay cached.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.words import CLIP4DM
from clipalign.cli.main import main
from clipalign.datasets import load_synthetic, load_synthetic_pointing
from clipalign.evaluation.benchmark import loader_key, run_benchmark, word_cache
from clipalign.evaluation.cache import ResultCache, is_retried, settings_key
from clipalign.settings import InteractionSettings, ModelSpec, WordSettings
from clipalign.synthetic import write_dataset
from clipalign.testing import example_image

STEPS = ["--steps", "2"]


def _coco(root: Path, dog_box: list[float]) -> tuple[Path, Path]:
    """COCO-format captions and instances (two images, a dog in each, at ``dog_box`` in the first) and
    Karpathy's split file putting image 1 in val and image 2 in test."""
    images = root / "images"
    images.mkdir(exist_ok=True)
    files = [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2)]
    for entry in files:
        example_image().convert("RGB").resize((80, 60)).save(images / entry["file_name"])
    captions = {
        "images": files,
        "annotations": [{"id": 10 * i, "image_id": i, "caption": "A dog on a lawn."} for i in (1, 2)],
    }
    boxes = {1: dog_box, 2: [5.0, 5.0, 20.0, 20.0]}
    instances = {
        "images": files,
        "categories": [{"id": 18, "name": "dog"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 18, "bbox": boxes[i]} for i in (1, 2)],
    }
    karpathy = {
        "images": [
            {"filepath": "val2014", "filename": f"{i}.jpg", "cocoid": i, "split": s, "sentences": []}
            for i, s in ((1, "val"), (2, "test"))
        ]
    }
    (root / "captions_val2014.json").write_text(json.dumps(captions))
    (root / "instances_val2014.json").write_text(json.dumps(instances))
    (root / "dataset_coco.json").write_text(json.dumps(karpathy))
    return root / "captions_val2014.json", images


def _eval_coco(captions: Path, images: Path, model: Path, out: Path, *extra: str) -> dict:
    argv = ["eval", "pointing-coco", "--annotations", str(captions), "--images", str(images)]
    argv += ["--model", str(model), "--out", str(out), "--no-progress", *STEPS, *extra]
    assert main(argv) == 0
    return json.loads((out / "pointing-coco" / "report.json").read_text())


def test_another_instances_file_is_not_answered_from_the_cache(tiny_model_dir, tmp_path):
    """The same caption ids under other boxes: the second run scores them anew and its metrics equal a
    run of that instances file in a fresh folder."""
    captions, images = _coco(tmp_path, [0.0, 0.0, 40.0, 60.0])
    moved = tmp_path / "moved"
    moved.mkdir()
    _coco(moved, [60.0, 40.0, 20.0, 20.0])
    instances = str(moved / "instances_val2014.json")
    out = tmp_path / "out"
    first = _eval_coco(captions, images, tiny_model_dir, out)
    second = _eval_coco(captions, images, tiny_model_dir, out, "--instances", instances)
    fresh = _eval_coco(captions, images, tiny_model_dir, tmp_path / "fresh", "--instances", instances)
    assert first["metrics"]["uniform_energy"] != fresh["metrics"]["uniform_energy"]
    assert second["newly_scored"] == 2 and second["metrics"] == fresh["metrics"]
    assert _eval_coco(captions, images, tiny_model_dir, out)["newly_scored"] == 0  # the first key again


def test_each_split_has_its_own_cache(tiny_model_dir, tmp_path):
    captions, images = _coco(tmp_path, [0.0, 0.0, 40.0, 60.0])
    karpathy = ["--karpathy", str(tmp_path / "dataset_coco.json")]
    out = tmp_path / "out"
    val = _eval_coco(captions, images, tiny_model_dir, out, *karpathy)
    test = _eval_coco(captions, images, tiny_model_dir, out, *karpathy, "--split", "test")
    assert (val["newly_scored"], test["newly_scored"]) == (1, 1)
    caches = sorted((out / "pointing-coco" / "cache").glob("*.settings.json"))
    loaders = sorted(json.loads(p.read_text())["loader"].get("split", "-") for p in caches)
    assert loaders == ["-", "test"]
    assert (
        _eval_coco(captions, images, tiny_model_dir, out, *karpathy, "--split", "test")["newly_scored"] == 0
    )


def test_options_not_given_keep_the_old_key(tmp_path):
    """A cache written before loader options were keyed is still found when none is given."""
    spec, words = ModelSpec(name="m"), WordSettings()
    old = {"benchmark": "richhf", **spec.to_dict(), **words.to_dict()}
    for loader in (None, {}, {"prompts": None, "split": ""}):
        assert (
            word_cache(tmp_path, "richhf", spec, words, loader=loader).path.name
            == f"{settings_key(old)}.jsonl"
        )
    prompts = word_cache(tmp_path, "richhf", spec, words, loader={"prompts": "p.json"})
    assert prompts.settings["loader"] == {"prompts": str(Path("p.json").resolve())}
    assert prompts.path != word_cache(tmp_path, "richhf", spec, words).path
    assert loader_key({"split": "test", "karpathy": None}) == {"split": "test"}
    with pytest.raises(ValueError, match="not a loader option: colour"):
        loader_key({"colour": "red"})


@contextmanager
def attributed(monkeypatch: pytest.MonkeyPatch, method: type) -> Iterator[list[str]]:
    """The image files handed to ``method.attribute`` (every model call goes through it)."""
    seen: list[str] = []
    original = method.attribute

    def spy(self, images, *args, **kwargs):
        seen.extend(Path(i).name for i in images)
        return original(self, images, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(method, "attribute", spy)
        yield seen


@pytest.mark.parametrize("benchmark", ["synthetic", "pointing-synthetic"])
def test_a_missing_image_is_tried_again_once_it_is_there(
    adapter, tiny_model_dir, tmp_path, monkeypatch, benchmark
):
    """One image missing: its items fail; once the file is back, a rerun scores them and only them, and
    the result equals a run that had the file all along."""
    annotations = write_dataset(tmp_path / "world", 2, seed=0)
    images = annotations.parent / "images"
    pointing = benchmark == "pointing-synthetic"
    items = (load_synthetic_pointing if pointing else load_synthetic)(annotations, images)
    missing = items[0].image
    kept = tmp_path / "kept.png"
    missing.rename(kept)
    spec = ModelSpec(name=str(tiny_model_dir), device="cpu")
    method = TokenPatchInteractions if pointing else CLIP4DM
    settings = {"interactions": InteractionSettings(steps=2)} if pointing else {"words": WordSettings()}

    def run(out: Path):
        return run_benchmark(benchmark, items, adapter, out, spec=spec, progress=False, **settings)

    failing = [it.id for it in items if it.image == missing]
    first = run(tmp_path / "out")
    assert first.metrics["failed"] == len(failing) and first.failures_path is not None
    failed = [json.loads(line)["id"] for line in first.failures_path.read_text().splitlines()]
    assert failed == failing
    kept.rename(missing)
    with attributed(monkeypatch, method) as seen:
        second = run(tmp_path / "out")
    assert set(seen) == {missing.name} and second.newly_scored == len(failing)
    assert second.metrics["failed"] == 0 and second.failures_path is None
    fresh = run(tmp_path / "fresh").metrics  # the image scored in other batches: equal to float rounding
    assert second.metrics == (pytest.approx(fresh, rel=1e-6) if pointing else fresh)
    with attributed(monkeypatch, method) as seen:
        assert run(tmp_path / "out").newly_scored == 0
    assert seen == []


def test_a_deterministic_failure_stays_cached(adapter, tiny_model_dir, tmp_path, monkeypatch):
    """A caption the model cannot take fails the same way every time: the rerun does not try it again."""
    annotations = write_dataset(tmp_path / "world", 1, seed=0)
    items = load_synthetic(annotations, annotations.parent / "images")
    items[0] = replace(items[0], caption=" ")  # no word to score
    spec = ModelSpec(name=str(tiny_model_dir), device="cpu")
    first = run_benchmark("synthetic", items, adapter, tmp_path / "out", spec=spec, progress=False)
    assert first.metrics["failed"] == 1
    with attributed(monkeypatch, CLIP4DM) as seen:
        second = run_benchmark("synthetic", items, adapter, tmp_path / "out", spec=spec, progress=False)
    assert seen == [] and second.metrics == first.metrics


def test_image_read_failures_are_neither_written_nor_read(tmp_path):
    cache = ResultCache(tmp_path, {"k": 1})
    unreadable = {"id": "a", "error": "/x/a.jpg: cannot read image: no such file"}
    too_wide = {"id": "b", "error": "/x/b.jpg: image is 900×10 (aspect 90:1), more than 50:1"}
    assert is_retried(unreadable) and not is_retried(too_wide) and not is_retried({"id": "c", "error": None})
    cache.append([unreadable])
    assert not cache.path.exists()
    cache.append([unreadable, too_wide])
    assert list(cache.load()) == ["b"]
    with cache.path.open("a") as f:  # written by an older version
        f.write("\n" + json.dumps(unreadable))
    assert list(cache.load()) == ["b"]
