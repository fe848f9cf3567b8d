"""One bad pair never stops a run: per-item errors with their reason, batch retries, one-line CLI errors."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clipalign import CLIP4DM, CaptionTruncatedWarning, ItemError, TokenPatchInteractions, WordSettings
from clipalign.cli.main import main
from clipalign.runners import local
from clipalign.runners.local import SCHEMA, decode, load_sample, scan, score_batch
from clipalign.runners.sources import Sample
from clipalign.settings import ScanSettings
from clipalign.text import CaptionError, validate_caption

SURROGATE = "a \ud800 cat"
ARGV_BYTES = "a \udcff\udcfe cat"  # what sys.argv holds for the bytes b"a \xff\xfe cat"


def scene(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    scene(0).save(path)
    return str(path)


def assert_same(result, alone) -> None:
    assert result.cosine == pytest.approx(alone.cosine, abs=1e-6)
    scale = max(abs(w.score) for w in alone.words)
    np.testing.assert_allclose(
        [w.score for w in result.words], [w.score for w in alone.words], rtol=0, atol=1e-5 * scale
    )


# --- captions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "needle"),
    [
        ({"text": "a dog"}, "caption must be a string, got dict"),
        (["a", "dog"], "caption must be a string, got list"),
        (SURROGATE, "lone surrogate"),
        (ARGV_BYTES, "not valid Unicode"),
        ("\u200b\u200d", "caption is empty"),
        (" \u200b\ufeff\t", "caption is empty"),
    ],
)
def test_validate_caption_says_what_is_wrong(caption, needle):
    with pytest.raises(CaptionError, match=needle):
        validate_caption(caption)


def test_zero_width_inside_a_caption_is_still_scored(adapter):
    [result] = CLIP4DM(adapter).attribute([scene(0)], ["a \u200b cat"], on_error="raise")
    assert [w.word for w in result.words] == ["a", "\u200b", "cat"]


def test_long_caption_warning_is_short_but_the_result_keeps_every_word(adapter):
    caption = " ".join(f"word{i}" for i in range(5000))
    with pytest.warns(CaptionTruncatedWarning) as caught:
        [result] = CLIP4DM(adapter).attribute([scene(0)], [caption], on_error="raise")
    [message] = [str(w.message) for w in caught if issubclass(w.category, CaptionTruncatedWarning)]
    dropped = len(result.truncated_words)
    assert len(message) < 300 and f"dropped its last {dropped} words" in message
    assert f"… and {dropped - 5} more words" in message
    assert result.truncated_words[-1] == "word4999" and len(result.words) + dropped == 5000


# --- CLIP4DM and TokenPatchInteractions -----------------------------------------------------------


def test_bad_captions_become_item_errors_and_the_rest_equal_scoring_alone(adapter):
    captions = ["a dog", SURROGATE, {"text": "a dog"}, "\u200b\u200d", "a red car"]
    images = [scene(i) for i in range(len(captions))]
    results = CLIP4DM(adapter).attribute(images, captions)  # type: ignore[arg-type]
    assert [type(r).__name__ for r in results] == [
        "WordAlignment",
        "ItemError",
        "ItemError",
        "ItemError",
        "WordAlignment",
    ]
    assert "lone surrogate" in results[1].error and results[1].index == 1
    assert "got dict" in results[2].error and results[2].caption is None
    assert "empty" in results[3].error
    for i in (0, 4):
        [alone] = CLIP4DM(adapter).attribute([images[i]], [captions[i]])
        assert_same(results[i], alone)


def test_any_exception_while_preparing_a_pair_is_that_pairs_error(adapter, monkeypatch):
    encode = adapter.encode_captions

    def flaky(captions, template):  # fails whenever it sees "boom", alone or in a batch
        if "boom" in captions:
            raise TypeError("tokenizer exploded")
        return encode(captions, template)

    monkeypatch.setattr(adapter, "encode_captions", flaky)
    results = CLIP4DM(adapter).attribute([scene(0), scene(1)], ["boom", "a dog"])
    assert isinstance(results[0], ItemError) and results[0].error == "TypeError: tokenizer exploded"
    assert not isinstance(results[1], ItemError)
    with pytest.raises(TypeError, match="exploded"):
        CLIP4DM(adapter).attribute([scene(0)], ["boom"], on_error="raise")


def test_keyboard_interrupt_is_not_swallowed(adapter, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(adapter, "encode_captions", interrupted)
    with pytest.raises(KeyboardInterrupt):
        CLIP4DM(adapter).attribute([scene(0)], ["a dog"])


def test_a_failing_batch_is_retried_pair_by_pair(adapter, monkeypatch):
    [poison] = adapter.encode_captions(["a poisoned caption"], WordSettings().template)
    forward = adapter.text_embeddings
    calls: list[int] = []

    def text_embeddings(inputs, output_attentions=False):
        calls.append(len(inputs.input_ids))
        for row in inputs.input_ids.tolist():
            if row[: len(poison.input_ids)] == poison.input_ids:
                raise RuntimeError("simulated model failure\non two lines")
        return forward(inputs, output_attentions=output_attentions)

    monkeypatch.setattr(adapter, "text_embeddings", text_embeddings)
    captions = ["a dog", "a poisoned caption", "a red car on a road"]
    images = [scene(i) for i in range(3)]
    results = CLIP4DM(adapter).attribute(images, captions)
    assert calls == [3, 1, 1, 1]
    assert isinstance(results[1], ItemError)
    assert results[1].error == "RuntimeError: simulated model failure on two lines"
    monkeypatch.setattr(adapter, "text_embeddings", forward)
    for i in (0, 2):
        [alone] = CLIP4DM(adapter).attribute([images[i]], [captions[i]])
        assert_same(results[i], alone)
    monkeypatch.setattr(adapter, "text_embeddings", text_embeddings)
    with pytest.raises(RuntimeError, match="simulated"):
        CLIP4DM(adapter).attribute(images, captions, on_error="raise")


def test_a_batch_too_large_for_memory_still_scores_every_pair(adapter, monkeypatch):
    forward = adapter.text_embeddings
    captions = ["a dog", "a cat on a mat", "a red car"]
    images = [scene(i) for i in range(3)]
    expected = CLIP4DM(adapter).attribute(images, captions, on_error="raise")

    def out_of_memory(inputs, output_attentions=False):
        if len(inputs.input_ids) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return forward(inputs, output_attentions=output_attentions)

    monkeypatch.setattr(adapter, "text_embeddings", out_of_memory)
    results = CLIP4DM(adapter).attribute(images, captions, on_error="raise")
    for result, alone in zip(results, expected, strict=True):
        assert_same(result, alone)


def test_interactions_record_any_pair_failure_and_compute_the_rest(adapter, monkeypatch):
    method = TokenPatchInteractions(adapter, steps=2)
    images, captions = [scene(0), scene(1), scene(2)], ["a dog", SURROGATE, "a red car"]
    results = method.attribute(images, captions)
    assert [type(r).__name__ for r in results] == ["Interactions", "ItemError", "Interactions"]
    assert "lone surrogate" in results[1].error
    [alone] = method.attribute([images[2]], [captions[2]], on_error="raise")
    # computed in a batch of two images, it rounds differently from alone (1e-6 of the largest: fp32)
    scale = np.abs(alone.matrix).max()
    np.testing.assert_allclose(results[2].matrix, alone.matrix, rtol=0, atol=1e-6 * scale)

    states = adapter.text_states

    def failing(input_ids, layer):
        raise RuntimeError("text states failed")

    monkeypatch.setattr(adapter, "text_states", failing)
    [error] = method.attribute([scene(0)], ["a dog"])
    assert isinstance(error, ItemError) and error.error == "RuntimeError: text states failed"
    monkeypatch.setattr(adapter, "text_states", states)


# --- scan ------------------------------------------------------------------------------------------


def test_score_batch_gives_error_rows_for_bad_captions_and_scores_the_rest(adapter):
    captions = ["a dog", SURROGATE, {"text": "a dog"}, "a red car"]
    samples = [Sample(i, f"k{i}", None, c) for i, c in enumerate(captions)]  # type: ignore[arg-type]
    images = [scene(i) for i in range(len(samples))]
    attributor = CLIP4DM(adapter)
    rows = score_batch(attributor, samples, [adapter.pixel_values([image])[0] for image in images])
    assert [r["error"] is None for r in rows] == [True, False, False, True]
    assert "lone surrogate" in rows[1]["error"] and rows[1]["caption"] == "a \\ud800 cat"
    assert "got dict" in rows[2]["error"] and rows[2]["caption"] is None
    pa.Table.from_pylist(rows, schema=SCHEMA)  # every row can be written to Parquet
    [alone] = attributor.attribute([images[3]], ["a red car"])
    assert rows[3]["cosine"] == pytest.approx(alone.cosine, abs=1e-6)


def test_a_scan_with_a_surrogate_caption_finishes_with_an_error_row(adapter, tmp_path):
    for i in range(4):
        scene(i).save(tmp_path / f"{i}.png")
    captions = ["a dog", SURROGATE, "a cat", "a red car"]
    samples = [Sample(i, f"k{i}", tmp_path / f"{i}.png", c) for i, c in enumerate(captions)]
    options = ScanSettings(part_size=2, progress=False)
    out = tmp_path / "scores.parquet"
    result = scan(samples, CLIP4DM(adapter, batch_size=2), out, {"test": 1}, options=options)
    rows = pq.read_table(result.output).to_pylist()
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["error"] is None for r in rows] == [True, False, True, True]
    assert "lone surrogate" in rows[1]["error"]


def test_score_batch_falls_back_to_one_pair_at_a_time(adapter, monkeypatch):
    attributor = CLIP4DM(adapter)
    attribute_tokens = attributor.attribute_tokens

    def batch_fails(pixel_values, encoded):
        if len(encoded) > 1 or encoded[0].caption == "boom":
            raise RuntimeError("whole batch failed")
        return attribute_tokens(pixel_values, encoded)

    monkeypatch.setattr(attributor, "attribute_tokens", batch_fails)
    samples = [Sample(0, "a", None, "a dog"), Sample(1, "b", None, "boom")]
    rows = score_batch(attributor, samples, [adapter.pixel_values([scene(i)])[0] for i in range(2)])
    assert rows[0]["error"] is None and rows[0]["cosine"] is not None
    assert rows[1]["error"] == "RuntimeError: whole batch failed"


def test_decode_turns_any_exception_into_a_reason(monkeypatch, tmp_path):
    def broken(source, **options):
        raise MemoryError("image too large to decode")

    monkeypatch.setattr(local, "load_image", broken)
    assert decode(Sample(0, "k", tmp_path / "x.png", "a dog")) == "MemoryError: image too large to decode"


def test_load_sample_turns_a_preprocessing_failure_into_that_samples_exception(adapter, monkeypatch):
    def broken(images):
        raise ValueError("processor failed")

    monkeypatch.setattr(adapter, "pixel_values", broken)
    loaded = load_sample(adapter, Sample(0, "k", scene(0), "a dog"))  # type: ignore[arg-type]
    assert isinstance(loaded, ValueError) and str(loaded) == "processor failed"
    [row] = score_batch(CLIP4DM(adapter), [Sample(0, "k", None, "a dog")], [loaded])
    assert row["error"] == "ValueError: processor failed"


# --- command line ------------------------------------------------------------------------------------


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("caption", "needle"),
    [(ARGV_BYTES, "not valid Unicode"), (SURROGATE, "lone surrogate"), ("\u200b\u200d", "caption is empty")],
)
@pytest.mark.parametrize("command", ["words", "score", "interactions"])
def test_bad_caption_on_the_command_line_is_one_line(tiny_model_dir, photo, capsys, command, caption, needle):
    assert main([command, photo, caption, "--model", str(tiny_model_dir), "--device", "cpu"]) == 1
    assert needle in one_line_error(capsys)


def test_a_model_failure_on_the_pair_is_one_line(tiny_model_dir, photo, capsys, monkeypatch):
    from clipalign.models.hf_clip import HFCLIPAdapter

    def failing(self, inputs, output_attentions=False):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(HFCLIPAdapter, "text_embeddings", failing)
    assert main(["words", photo, "a dog", "--model", str(tiny_model_dir), "--device", "cpu"]) == 1
    assert "RuntimeError: CUDA error" in one_line_error(capsys)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_epsilon_is_refused(tiny_model_dir, photo, capsys, value):
    assert main(["words", photo, "a dog", "--model", str(tiny_model_dir), f"--epsilon={value}"]) == 1
    assert "epsilon must be a finite number" in one_line_error(capsys)
    with pytest.raises(ValueError, match="finite"):
        WordSettings(epsilon=math.nan)


@pytest.mark.parametrize(
    ("box", "needle"),
    [("nan,nan,5,5", "finite"), ("0,0,inf,5", "finite"), ("0,0,0,5", "> 0"), ("1,1,5,-2", "> 0")],
)
def test_bad_boxes_are_refused_by_the_parser(photo, capsys, box, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(["interactions", photo, "a dog", "--box", box])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and needle in err.strip().splitlines()[-1]


def test_output_paths_are_checked_before_the_model_loads(photo, tmp_path, capsys):
    nowhere = str(tmp_path / "no-model")  # loading it would fail: the output check must come first
    missing = str(tmp_path / "missing_dir" / "h.png")
    assert main(["interactions", photo, "a dog", "--span", "dog", "--out", missing, "--model", nowhere]) == 1
    assert "its directory does not exist" in one_line_error(capsys)
    assert main(["words", photo, "a dog", "--html", str(tmp_path), "--model", nowhere]) == 1
    assert "it is a directory" in one_line_error(capsys)
    assert main(["words", str(tmp_path / "gone.png"), "a dog", "--model", nowhere]) == 1
    assert "gone.png: cannot read image" in one_line_error(capsys)


def test_read_only_folder_is_refused_before_the_model_loads(photo, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    access = os.access
    # root may write anyway: answer as the file system would for anyone else
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else access(p, mode))
    args = ["words", photo, "a dog", "--png", str(folder / "w.png"), "--model", str(tmp_path / "none")]
    assert main(args) == 1
    assert "its directory is not writable" in one_line_error(capsys)
    folder.chmod(0o700)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failed_write_is_one_line(tiny_model_dir, photo, capsys):
    assert main(["words", photo, "a dog", "--html", "/dev/full", "--model", str(tiny_model_dir)]) == 1
    assert "cannot write /dev/full" in one_line_error(capsys)


def test_a_failed_picture_write_is_one_line(tiny_model_dir, photo, tmp_path, capsys, monkeypatch):
    from clipalign.viz import heatmap

    def no_space(fig, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(heatmap, "save", no_space)
    out = str(tmp_path / "h.png")
    args = ["interactions", photo, "a dog", "--span", "dog", "--out", out, "--steps", "2"]
    assert main([*args, "--model", str(tiny_model_dir)]) == 1
    assert f"cannot write {out}: No space left on device" in one_line_error(capsys)
    args = ["words", photo, "a dog", "--png", out, "--model", str(tiny_model_dir)]
    assert main(args) == 1
    assert f"cannot write {out}: No space left on device" in one_line_error(capsys)


def test_empty_reference_is_one_line(tiny_model_dir, photo, capsys):
    args = ["score", photo, "a dog", "--reference", "  ", "--model", str(tiny_model_dir)]
    assert main(args) == 1
    assert "--reference '  ': caption is empty" in one_line_error(capsys)


def test_long_caption_warning_on_the_command_line_is_short(tiny_model_dir, photo, capsys):
    caption = " ".join(f"word{i}" for i in range(5000))
    with warnings.catch_warnings():
        assert main(["words", photo, caption, "--model", str(tiny_model_dir), "--json"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "more words" in err and len(err) < 400
