"""The feeding pipeline gives exactly what scoring each pair plainly gives, bit for bit in fp32.

The reference below is written plainly: decode one image, preprocess it alone, encode one caption alone,
score each batch's pairs with ``attribute_tokens`` (one pair at a time for a batch that fails), then build
each row with loops, as the CLIP4DM paper defines the scores. The scan's worker threads, its batched
tokeniser call, its stacked pixels and the vectorised result building must reproduce it exactly.
"""

from __future__ import annotations

import io
import random
import threading
import time
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clipalign import CLIP4DM
from clipalign.attribution.feeding import prepared_ahead
from clipalign.attribution.inputs import reason
from clipalign.cli.common import model_spec, word_settings
from clipalign.cli.main import build_parser
from clipalign.cli.scan import _metadata, _scan_settings
from clipalign.images import load_image
from clipalign.metrics.functional import clip_score, f_clip_score
from clipalign.runners.local import draft_size, scan
from clipalign.runners.sources import Columns, Sample
from clipalign.settings import ScanSettings
from clipalign.text import CaptionError, CaptionTruncatedWarning, encode_caption, validate_caption
from clipalign.text.alignment import encode_captions, is_punctuation

pytestmark = pytest.mark.filterwarnings("ignore::clipalign.text.alignment.CaptionTruncatedWarning")

LONG = " ".join(f"word{i}, and" for i in range(60))
TRICKY = [
    "a red skirt, 2.5 m... long!",
    "  a café   with naïve crème brûlée 🐶🐱 ",
    '(a dog), "quoted" — and—dashes; semi:colons?',
    "A snowboarder plays a xylophone in different directions.",
    LONG,
    "x",
]
EPSILON = 1e-4  # a tiny random CLIP's scores are small: this flags a good share of words
POISON = "a poisoned caption"


def photo(seed: int, size=(96, 72)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, 1, 3))
    noise = rng.normal(0, 40, (size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def encoded_fields(enc):
    return (
        enc.caption,
        enc.template,
        enc.input_ids,
        enc.tokens,
        enc.token_spans,
        enc.token_word.tolist(),
        enc.pool_index,
        enc.words,
        enc.truncated_words,
        enc.unit,
    )


# --- the parts: pixel values, batched tokenisation, the thread pipeline ------------------------------


def test_pixel_values_of_a_batch_are_its_images_processed_alone_and_stacked(adapter):
    images = [photo(0), photo(1, (40, 90)), photo(2, (300, 200)).convert("L").convert("RGB")]
    batch = adapter.pixel_values(images)
    assert batch.dtype == torch.float32 and batch.device.type == "cpu"
    alone = torch.stack([adapter.pixel_values([image])[0] for image in images])
    assert torch.equal(batch, alone)
    direct = adapter.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(batch, direct)
    assert torch.equal(adapter.preprocess(images), batch)  # fp32 CPU model: preprocess moves nothing


def test_pixel_values_are_the_same_from_many_threads(adapter):
    images = [photo(i, (64 + 8 * i, 48)) for i in range(8)]
    expected = [adapter.pixel_values([image]) for image in images]
    got: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        for _ in range(5):
            got[i] = adapter.pixel_values([images[i]])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(got[i], expected[i]) for i in range(len(images)))


@pytest.mark.parametrize("template", ["A photo depicts ", ""])
@pytest.mark.parametrize("unit", ["clip4dm", "whitespace"])
def test_one_tokenizer_call_encodes_each_caption_as_alone(adapter, template, unit):
    tok = adapter.tokenizer
    options = {
        "template": template,
        "prefix_ids": [tok.bos_token_id],
        "suffix_ids": [tok.eos_token_id],
        "max_length": 77,
        "unit": unit,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = encode_captions(tok, TRICKY, **options)
    assert sum(issubclass(w.category, CaptionTruncatedWarning) for w in caught) == 1
    with pytest.warns(CaptionTruncatedWarning):
        alone = [encode_caption(tok, caption, **options) for caption in TRICKY]
    assert [encoded_fields(e) for e in batch] == [encoded_fields(e) for e in alone]
    long = batch[TRICKY.index(LONG)]
    assert long.truncated_words and len(long.input_ids) <= 77
    assert long.truncated_words[-1].end == len(LONG)
    assert LONG[: long.truncated_words[0].start].endswith(" ")  # cut between whitespace chunks
    assert encode_captions(tok, [], **options) == []


def test_the_adapter_encodes_a_list_in_one_tokenizer_call(adapter, monkeypatch):
    calls: list[int] = []
    tokenizer = adapter.tokenizer
    original = type(tokenizer).__call__

    def counting(self, text, *args, **kwargs):
        calls.append(len(text) if isinstance(text, list) else 1)
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    encoded = adapter.encode_captions(TRICKY[:4], "A photo depicts ")
    assert calls == [4] and len(encoded) == 4


def test_a_bad_caption_is_that_pairs_error_and_the_rest_are_prepared(adapter):
    attributor = CLIP4DM(adapter)
    captions = ["a dog", "", "\u200b", "a \ud800 cat", "a cat"]
    images = [adapter.pixel_values([photo(i)])[0] for i in range(len(captions))]
    images[4] = ValueError("broken image")
    batch = attributor.prepare([f"img{i}" for i in range(5)], captions, images)
    assert batch.ready == [0]
    assert sorted(batch.failures) == [1, 2, 3, 4]
    assert all(isinstance(batch.failures[i], CaptionError) for i in (1, 2, 3))
    assert str(batch.failures[4]) == "broken image"
    both = attributor.prepare(["a"], [""], [ValueError("broken image")])
    assert isinstance(both.failures[0], CaptionError)  # the caption's failure comes first, as before
    results = attributor.score_prepared(batch, first_index=10)
    assert [getattr(r, "index", None) for r in results] == [None, 11, 12, 13, 14]
    assert results[1].error == reason(batch.failures[1]) and results[4].source == "img4"


def test_prepared_ahead_never_loses_or_reorders_items():
    rng = random.Random(0)
    delays = {i: rng.random() * 0.004 for i in range(200)}

    def load(item: int) -> int:
        time.sleep(delays[item])
        return item * 10

    def collate(items, loaded):
        time.sleep(delays[items[0]])
        return list(items), loaded

    batches = [list(range(lo, min(lo + 7, 200))) for lo in range(0, 200, 7)]
    out = list(prepared_ahead(batches, load, collate, workers=5, depth=3))
    assert [items for items, _ in out] == batches
    assert all(loaded == [i * 10 for i in items] for items, loaded in out)


def test_prepared_ahead_reads_ahead_by_depth_only_and_stops_cleanly():
    read: list[int] = []

    def source():
        for i in range(100):
            read.append(i)
            yield [i]

    stream = prepared_ahead(source(), lambda x: x, lambda items, loaded: loaded[0], workers=2, depth=2)
    assert next(stream) == 0
    assert len(read) == 3  # the batch handed out and two prepared ahead
    stream.close()
    assert len(read) == 3

    def failing(items, loaded):
        raise RuntimeError(f"collate failed at {items[0]}")

    with pytest.raises(RuntimeError, match="at 0"):
        list(prepared_ahead([[0], [1]], lambda x: x, failing, workers=1))


# --- the plain reference ------------------------------------------------------------------------------


def plain_row(index, key, caption, enc, cosine, token_scores, epsilon):
    """One scan row from one pair's cosine and token scores, with loops (CLIP4DM, threshold mode)."""
    words, scores, flags = [], [], []
    for j, word in enumerate(enc.words):
        values = [float(token_scores[t]) for t in range(len(enc.token_word)) if enc.token_word[t] == j]
        total = 0.0
        for v in values:
            total += v
        score = total / max(len(values), 1)
        words.append(word.text)
        scores.append(score)
        flags.append(not is_punctuation(word.text) and len(values) > 0 and score < epsilon)
    f_score = f_clip_score(
        torch.tensor([cosine], dtype=torch.float64),
        torch.tensor([scores], dtype=torch.float64),
        torch.tensor([flags]),
    )
    spans, run = [], []
    eligible = [
        j for j, w in enumerate(enc.words) if not is_punctuation(w.text) and enc.token_word.tolist().count(j)
    ]
    for j in [*eligible, None]:
        if j is not None and flags[j]:
            run.append(j)
            continue
        if run:
            start, end = enc.words[run[0]].start, enc.words[run[-1]].end
            chosen = [scores[k] for k in run]
            spans.append(
                {
                    "text": caption[start:end],
                    "start": start,
                    "end": end,
                    "mean_score": float(np.mean(chosen)),
                    "sum_score": float(sum(chosen)),
                }
            )
            run = []
    return {
        "index": index,
        "key": key,
        "caption": caption,
        "cosine": cosine,
        "clipscore": float(clip_score(torch.tensor([cosine], dtype=torch.float64))[0]),
        "f_clipscore": float(f_score[0]),
        "misaligned_words": [w for w, f in zip(words, flags, strict=True) if f],
        "spans": spans,
        "words": words,
        "word_scores": scores,
        "truncated_words": [w.text for w in enc.truncated_words],
        "error": None,
    }


def plain_scan(adapter, samples, batch_size, epsilon, draft=None):
    """Rows in sample order: batches of consecutive samples, each pair prepared alone, the batch's
    prepared pairs scored at once (one by one when the batch contains the poisoned caption)."""
    attributor = CLIP4DM(adapter, epsilon=epsilon)
    rows = []
    for lo in range(0, len(samples), batch_size):
        ready = []
        for sample in samples[lo : lo + batch_size]:
            error = sample.error
            if error is None:
                try:
                    image = load_image(sample.image, draft=draft)
                except Exception as exc:
                    error = reason(exc)
            if error is None and sample.caption is None:
                error = "no caption"
            if error is None:
                try:
                    validate_caption(sample.caption)
                    [enc] = adapter.encode_captions([sample.caption], attributor.settings.template)
                    pixels = adapter.pixel_values([image])
                except Exception as exc:
                    error = reason(exc)
            if error is not None:
                rows.append(
                    {"index": sample.index, "key": sample.key, "caption": sample.caption, "error": error}
                )
                continue
            rows.append(None)
            ready.append((len(rows) - 1, sample, enc, pixels))
        poisoned = any(sample.caption == POISON for _, sample, _, _ in ready)
        groups = [[item] for item in ready] if poisoned else [ready] if ready else []
        for group in groups:
            slot, sample, enc, _ = group[0]
            if sample.caption == POISON:
                rows[slot] = {
                    "index": sample.index,
                    "key": sample.key,
                    "caption": POISON,
                    "error": "RuntimeError: poisoned",
                }
                continue
            encoded = [e for _, _, e, _ in group]
            raw = attributor.attribute_tokens(torch.cat([p for *_, p in group]), encoded)
            for b, (slot, sample, enc, _) in enumerate(group):
                rows[slot] = plain_row(
                    sample.index,
                    sample.key,
                    sample.caption,
                    enc,
                    float(raw.cosine.double()[b]),
                    raw.token_scores.double()[b].tolist(),
                    epsilon,
                )
    return rows


def jpeg_bytes(seed: int, size=(96, 72)) -> bytes:
    buf = io.BytesIO()
    photo(seed, size).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def samples(tmp_path):
    """Fourteen samples: JPEG and PNG files and bytes, a corrupt and a missing file, no caption, an
    empty and an over-long caption, a source error, and a caption whose batch fails in the model."""
    out = []
    captions = [
        "a red bus next to a tall building",
        "two dogs run across a snowy field.",
        None,
        "a bowl of fruit, on a wooden table",
        POISON,
        "",
        LONG,
        "a man rides a bicycle",
        "a café with naïve crème 🐶",
        "a cat",
        "a green apple and a blue cup",
        "a \ud800 surrogate",
        "the sky is blue",
        "a small boat on a lake",
    ]
    for i, caption in enumerate(captions):
        path = tmp_path / f"{i}.jpg"
        if i % 3 == 2:
            path = tmp_path / f"{i}.png"
            photo(i, (50 + i, 40)).save(path)
        else:
            path.write_bytes(jpeg_bytes(i, (120 + 7 * i, 90)))
        out.append(Sample(i, f"k{i}", path, caption))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    out[3] = Sample(3, "k3", tmp_path / "bad.jpg", out[3].caption)
    out[9] = Sample(9, "k9", tmp_path / "missing.jpg", out[9].caption)
    out[10] = Sample(10, "k10", jpeg_bytes(10), out[10].caption)
    out[12] = Sample(12, "k12", None, out[12].caption, error="unreadable row")
    return out


def poison(attributor, monkeypatch):
    """Make every model call that contains the poisoned caption fail, as a bad batch would."""
    original = attributor.attribute_tokens

    def attribute_tokens(pixel_values, encoded):
        if any(e.caption == POISON for e in encoded):
            raise RuntimeError("poisoned")
        return original(pixel_values, encoded)

    monkeypatch.setattr(attributor, "attribute_tokens", attribute_tokens)


def read_rows(path):
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        if row["error"] is not None:
            for key in [k for k in row if k not in ("index", "key", "caption", "error")]:
                assert row.pop(key) is None
    return rows


@pytest.mark.parametrize("workers", [1, 3])
def test_scan_rows_are_bit_for_bit_the_plain_per_pair_rows(adapter, samples, tmp_path, monkeypatch, workers):
    with pytest.warns(CaptionTruncatedWarning):
        expected = plain_scan(adapter, samples, 4, EPSILON)
    assert sum(bool(r.get("spans")) for r in expected) >= 3  # the flags and spans are exercised
    assert [r["error"] for r in expected if r["error"]] == [
        "no caption",
        f"{tmp_path / 'bad.jpg'}: cannot read image: not an image file, or a format PIL cannot read",
        "RuntimeError: poisoned",
        "caption is empty (or only whitespace, control or zero-width characters): nothing to score",
        f"{tmp_path / 'missing.jpg'}: cannot read image: no such file",
        "caption is not valid Unicode text: lone surrogate '\\ud800' at character 2 (undecodable bytes?)",
        "unreadable row",
    ]
    attributor = CLIP4DM(adapter, epsilon=EPSILON, batch_size=4)
    poison(attributor, monkeypatch)
    options = ScanSettings(part_size=5, workers=workers, progress=False)
    result = scan(samples, attributor, tmp_path / "out.parquet", {"t": 1}, options=options)
    got = read_rows(result.output)
    surrogate = next(r for r in expected if r["index"] == 11)
    surrogate["caption"] = "a \\ud800 surrogate"  # Parquet stores it escaped
    assert got == expected


def test_a_killed_scan_resumes_to_the_same_rows(adapter, samples, tmp_path, monkeypatch):
    attributor = CLIP4DM(adapter, epsilon=EPSILON, batch_size=4)
    poison(attributor, monkeypatch)
    options = ScanSettings(part_size=4, workers=2, progress=False)
    out = tmp_path / "parts"

    def stop(path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(samples, attributor, out, {"t": 1}, options=options, on_part=stop)
    resumed = scan(samples, attributor, out, {"t": 1}, options=options)
    assert resumed.resumed_from == 4 and resumed.scored_now == 10
    whole = scan(samples, attributor, tmp_path / "whole.parquet", {"t": 1}, options=options)
    assert read_rows(out) == read_rows(whole.output)


def test_attribute_over_several_batches_is_bit_for_bit_the_plain_path(adapter, monkeypatch):
    images = [photo(i, (60 + 5 * i, 48)) for i in range(11)]
    captions = [TRICKY[i % 4] if i != 6 else POISON for i in range(11)]
    captions[3] = ""
    images[8] = b"not an image"
    attributor = CLIP4DM(adapter, epsilon=EPSILON, batch_size=4)
    samples = [
        Sample(i, str(i), image, caption)
        for i, (image, caption) in enumerate(zip(images, captions, strict=True))
    ]
    expected = plain_scan(adapter, samples, 4, EPSILON)
    poison(attributor, monkeypatch)
    results = attributor.attribute(images, captions)
    assert len(results) == 11
    for result, row in zip(results, expected, strict=True):
        if row["error"] is not None:
            assert result.error == row["error"] and result.index == row["index"]
            continue
        assert result.cosine == row["cosine"] and result.f_clipscore == row["f_clipscore"]
        assert result.clipscore == row["clipscore"]
        assert [w.word for w in result.words] == row["words"]
        assert [w.score for w in result.words] == row["word_scores"]
        assert [w.word for w in result.words if w.misaligned] == row["misaligned_words"]
        spans = [
            {k: s.to_dict()[k] for k in ("text", "start", "end", "mean_score", "sum_score")}
            for s in result.spans
        ]
        assert spans == row["spans"]


def test_each_token_score_is_the_models(adapter):
    attributor = CLIP4DM(adapter, batch_size=2)
    images, captions = [photo(i) for i in range(3)], TRICKY[:3]
    results = attributor.attribute(images, captions, on_error="raise")
    encoded = [
        e.with_unit("clip4dm") for e in adapter.encode_captions(captions, attributor.settings.template)
    ]
    for lo in (0, 2):
        raw = attributor.attribute_tokens(adapter.preprocess(images[lo : lo + 2]), encoded[lo : lo + 2])
        for b, result in enumerate(results[lo : lo + 2]):
            enc = encoded[lo + b]
            positions = [t for t in range(len(enc.token_word)) if enc.token_word[t] >= 0]
            assert [t.score for t in result.tokens] == [
                float(raw.token_scores[b, t].double()) for t in positions
            ]
            assert [t.token for t in result.tokens] == [enc.tokens[t] for t in positions]


# --- JPEG draft mode ---------------------------------------------------------------------------------


def test_jpeg_draft_is_off_by_default_and_on_with_its_flag(tmp_path):
    assert ScanSettings().jpeg_draft is False
    parser = build_parser()
    plain = parser.parse_args(["scan", "in.jsonl", "--out", "o"])
    draft = parser.parse_args(["scan", "in.jsonl", "--out", "o", "--jpeg-draft"])
    assert plain.jpeg_draft is False and draft.jpeg_draft is True
    assert _scan_settings(plain).jpeg_draft is False and _scan_settings(draft).jpeg_draft is True
    # recorded only when on, so that a draft run never resumes or extends a plain one (or the reverse)
    metadata = [_metadata(a, Columns(), model_spec(a), word_settings(a)) for a in (plain, draft)]
    assert "jpeg_draft" not in metadata[0] and metadata[1] == {**metadata[0], "jpeg_draft": True}


def test_draft_decodes_a_jpeg_smaller_but_never_below_the_size_asked(tmp_path, adapter):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(0, (640, 480)))
    assert load_image(path).size == (640, 480)
    assert load_image(path, draft=(100, 100)).size == (160, 120)  # 1/4: 1/8 would be 80×60
    assert load_image(path, draft=(300, 200)).size == (320, 240)
    assert load_image(path, draft=(400, 100)).size == (640, 480)  # 1/2 would be 320 wide
    png = tmp_path / "big.png"
    Image.open(path).save(png)
    assert load_image(png, draft=(100, 100)).size == (640, 480)  # not a JPEG: unchanged
    assert draft_size(adapter) == (64, 64)  # twice the tiny model's 32×32 input


def test_a_draft_scan_scores_the_drafted_pixels(adapter, samples, tmp_path, monkeypatch):
    for sample in samples:
        if isinstance(sample.image, type(tmp_path)) and sample.image.name == f"{sample.index}.jpg":
            sample.image.write_bytes(jpeg_bytes(sample.index, (300 + sample.index, 280)))  # 1/4 scale
    with pytest.warns(CaptionTruncatedWarning):
        expected = plain_scan(adapter, samples, 4, EPSILON, draft=(64, 64))
        plain = plain_scan(adapter, samples, 4, EPSILON)
    attributor = CLIP4DM(adapter, epsilon=EPSILON, batch_size=4)
    poison(attributor, monkeypatch)
    options = ScanSettings(workers=2, progress=False, jpeg_draft=True)
    got = read_rows(scan(samples, attributor, tmp_path / "d.parquet", {"t": 1}, options=options).output)
    for row in (*expected, *plain):
        if row["index"] == 11:
            row["caption"] = "a \\ud800 surrogate"
    assert got == expected and got != plain
