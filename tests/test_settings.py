"""One settings object per concern, one result row, and output written by 0.1.0 still read."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipalign import CLIP4DM, InteractionSettings, ItemError, ModelSpec, TokenPatchInteractions, WordSettings
from clipalign.datasets.base import MisalignmentItem
from clipalign.evaluation.cache import ResultCache, settings_key
from clipalign.evaluation.runner import score_misalignment
from clipalign.results import word_row
from clipalign.runners.local import METADATA_KEY, SCHEMA, PartWriter, result_row
from clipalign.runners.sources import Sample
from clipalign.settings import ScanSettings, comparable


def photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_settings_are_frozen_validated_and_keep_runtime_fields_out_of_to_dict():
    words = WordSettings(layers=2, batch_size=7)
    assert words.to_dict() == {
        "layers": 2,
        "epsilon": -5e-5,
        "template": "A photo depicts ",
        "mode": "threshold",
        "unit": "clip4dm",
    }
    with pytest.raises(FrozenInstanceError):
        words.layers = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="mode must be one of"):
        words.replace(mode="lowest")
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        WordSettings(batch_size=0)
    with pytest.raises(ValueError, match="unit must be one of 'clip4dm', 'whitespace'"):
        WordSettings(unit="bpe")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        WordSettings(3)  # type: ignore[misc]
    assert ModelSpec(name="m", device="cuda:1").to_dict() == {"model": "m", "dtype": "fp32"}
    assert "chunk" not in InteractionSettings(chunk=3).to_dict()
    with pytest.raises(ValueError, match="dtype must be one of"):
        ModelSpec(dtype="fp8")  # type: ignore[arg-type]


def test_verbs_take_settings_or_single_changes(adapter):
    a = CLIP4DM(adapter, layers=2, batch_size=4)
    b = CLIP4DM(adapter, settings=WordSettings(layers=2, batch_size=4))
    assert a.settings == b.settings
    assert CLIP4DM(adapter, settings=WordSettings(layers=2), epsilon=0.0).settings.layers == 2
    with pytest.raises(TypeError):
        CLIP4DM(adapter, 3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        CLIP4DM(adapter, layer=2)
    method = TokenPatchInteractions(adapter, settings=InteractionSettings(steps=3), text_block=1)
    assert (method.settings.steps, method.text_block, method.image_block) == (
        3,
        1,
        adapter.num_vision_layers - 1,
    )


def test_interactions_record_bad_pairs_like_the_word_verb(adapter, tmp_path):
    missing = tmp_path / "missing.png"
    images, captions = [photo(), missing, photo(1)], ["a dog", "a cat", "   "]
    inter = TokenPatchInteractions(adapter, steps=2).attribute(images, captions)
    words = CLIP4DM(adapter).attribute(images, captions)
    assert [type(r).__name__ for r in inter] == ["Interactions", "ItemError", "ItemError"]
    assert [(e.index, e.source) for e in inter if isinstance(e, ItemError)] == [
        (e.index, e.source) for e in words if isinstance(e, ItemError)
    ]
    with pytest.raises(ValueError, match="cannot read image"):
        TokenPatchInteractions(adapter, steps=2).attribute(images, captions, on_error="raise")


def test_one_row_schema_for_scan_evaluation_and_score(adapter, tmp_path):
    path = tmp_path / "x.png"
    photo().save(path)
    [result] = CLIP4DM(adapter, epsilon=1.0).attribute([path], ["a dog on a red couch."], on_error="raise")
    row = word_row(result)
    assert row["words"] == [w.word for w in result.words]
    assert row["word_misaligned"] == [w.misaligned for w in result.words]
    assert row["misaligned_words"] == [w.word for w in result.words if w.misaligned]
    lowest = min((i for i, w in enumerate(result.words) if w.eligible), key=lambda i: result.words[i].score)
    assert row["lowest_word"] == lowest == result.lowest_word
    assert row["f_clipscore_min"] == pytest.approx((1 - max(result.cosine, 0)) * result.words[lowest].score)
    scan_row = result_row(Sample(0, "k", "a dog on a red couch.", None), result)
    assert set(scan_row) >= set(SCHEMA.names) - {"error"} | {"error"}
    assert all(
        scan_row[k] == row[k] for k in ("cosine", "f_clipscore", "words", "word_scores", "misaligned_words")
    )
    [record] = score_misalignment(
        [MisalignmentItem("i", path, "a dog on a red couch.", False, ("dog",))],
        CLIP4DM(adapter, epsilon=1.0),
        ResultCache(tmp_path / "c", {}),
        progress=False,
    )
    assert {k: record[k] for k in row if k != "cosine"} == {
        k: v for k, v in word_row(result).items() if k != "cosine"
    }


def test_eligible_rule_is_shared(adapter):
    [result] = CLIP4DM(adapter, mode="most_negative").attribute(
        [photo()], ["a dog , on a couch ."], on_error="raise"
    )
    assert [w.eligible for w in result.words] == [
        not w.punctuation and w.num_tokens > 0 for w in result.words
    ]
    [flagged] = [i for i, w in enumerate(result.words) if w.misaligned]
    assert flagged == result.lowest_word and result.words[flagged].eligible


def scan_written_with(tmp_path, settings: dict) -> Path:
    """A scan output folder holding one Parquet part whose metadata records ``settings``."""
    out = tmp_path / "scan"
    out.mkdir()
    schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(settings).encode()})
    pq.write_table(
        pa.Table.from_pylist([{"index": 0, "key": "k", "error": "x"}], schema=schema),
        out / "part-000000000000.parquet",
    )
    return out


def test_output_written_before_mode_was_recorded_is_still_read(tmp_path):
    old = {"model": "m", "dtype": "fp32", "layers": 3, "epsilon": -5e-5, "template": "A photo depicts "}
    new = {**old, "mode": "threshold"}
    assert comparable(new) == old and settings_key(new) == settings_key(old)
    assert settings_key({**old, "mode": "most_negative"}) != settings_key(old)
    # an evaluation cache from 0.1.0: same file, records under their old key names, nothing recomputed
    cache = ResultCache(tmp_path / "cache", old)
    cache.append([{"id": "a", "error": None, "scores": [0.1], "misaligned": [False], "words": ["dog"]}])
    assert ResultCache(tmp_path / "cache", new).path == cache.path
    # a Parquet part from 0.1.0 (metadata without "mode") resumes under mode=threshold, not another mode
    out = scan_written_with(tmp_path, old)
    assert PartWriter(out, new, ScanSettings()).completed() == 1
    with pytest.raises(ValueError, match="other settings"):
        PartWriter(out, {**new, "mode": "most_negative"}, ScanSettings()).completed()


def test_output_written_before_the_word_unit_was_recorded_is_read_as_whitespace(tmp_path):
    old = {"model": "m", "dtype": "fp32", "layers": 3, "epsilon": -5e-5, "template": "A photo depicts "}
    whitespace = {**old, **WordSettings(unit="whitespace").to_dict()}
    default = {**old, **WordSettings().to_dict()}
    assert default["unit"] == "clip4dm" and whitespace["unit"] == "whitespace"
    assert comparable(whitespace) == old and settings_key(whitespace) == settings_key(old)
    assert settings_key(default) != settings_key(old)
    out = scan_written_with(tmp_path, old)
    assert PartWriter(out, whitespace, ScanSettings()).completed() == 1
    with pytest.raises(ValueError, match="other settings"):
        PartWriter(out, default, ScanSettings()).completed()


def test_old_cache_records_are_read_under_todays_keys(adapter, tmp_path):
    path = tmp_path / "x.jpg"
    photo().save(path)
    item = MisalignmentItem("a", path, "a dog", True)
    cache = ResultCache(tmp_path / "c", {"k": 1})
    cache.append(
        [{"id": "a", "error": None, "scores": [0.5, -0.2], "misaligned": [False, True], "cosine": 0.3}]
    )
    calls = []
    attributor = CLIP4DM(adapter)
    original = attributor.attribute

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    attributor.attribute = counting  # type: ignore[method-assign]
    [record] = score_misalignment([item], attributor, cache, progress=False)
    assert calls == []
    assert record["word_scores"] == [0.5, -0.2] and record["word_misaligned"] == [False, True]
