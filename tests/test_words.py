"""CLIP4DM behaviour: batch invariance, modes, spans, punctuation, per-item errors, result schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipalign import CLIP4DM, CaptionTruncatedWarning, ItemError, Word, WordAlignment
from clipalign.attribution.words import merge_spans


def scene(seed: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


CAPTIONS = [
    "a dog",
    "A white husky and a black dog running in a snow covered forest.",
    "xylophone",
    "two snowboarders , one red ; the other blue !",
]


def test_scores_do_not_depend_on_the_batch(adapter):
    attributor = CLIP4DM(adapter)
    images = [scene(i) for i in range(len(CAPTIONS))]
    batched = attributor.attribute(images, CAPTIONS)
    for image, caption, in_batch in zip(images, CAPTIONS, batched, strict=True):
        [alone] = attributor.attribute([image], [caption])
        scale = max(abs(w.score) for w in alone.words)
        np.testing.assert_allclose(
            [w.score for w in in_batch.words], [w.score for w in alone.words], rtol=0, atol=1e-5 * scale
        )
        assert in_batch.cosine == pytest.approx(alone.cosine, abs=1e-6)
        assert [w.misaligned for w in in_batch.words] == [w.misaligned for w in alone.words]


def test_internal_batch_size_gives_the_same_results(adapter):
    images = [scene(i) for i in range(len(CAPTIONS))]
    whole = CLIP4DM(adapter, batch_size=32).attribute(images, CAPTIONS)
    pieces = CLIP4DM(adapter, batch_size=3).attribute(images, CAPTIONS)
    for a, b in zip(whole, pieces, strict=True):
        assert a.cosine == pytest.approx(b.cosine, abs=1e-6)
        np.testing.assert_allclose([w.score for w in a.words], [w.score for w in b.words], atol=1e-9)


def test_one_forward_and_one_backward_per_batch(adapter, monkeypatch):
    calls = {"text": 0, "image": 0, "grad": 0}
    text_fn, image_fn, grad_fn = adapter.text_embeddings, adapter.image_embeddings, torch.autograd.grad

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(adapter, "text_embeddings", count("text", text_fn))
    monkeypatch.setattr(adapter, "image_embeddings", count("image", image_fn))
    monkeypatch.setattr(torch.autograd, "grad", count("grad", grad_fn))
    CLIP4DM(adapter, batch_size=8).attribute([scene(i) for i in range(8)], ["a red ball on grass"] * 8)
    assert calls == {"text": 1, "image": 1, "grad": 1}


def test_threshold_mode_marks_words_below_epsilon_and_merges_spans(adapter):
    [base] = CLIP4DM(adapter).attribute([scene(1)], [CAPTIONS[1]])
    eps = float(np.median([w.score for w in base.words]))
    [result] = CLIP4DM(adapter, epsilon=eps).attribute([scene(1)], [CAPTIONS[1]])
    for w in result.words:
        assert w.misaligned == (w.score < eps and not w.punctuation)
    marked = [i for i, w in enumerate(result.words) if w.misaligned]
    assert sorted(i for s in result.spans for i in s.words) == marked
    for span in result.spans:
        assert span.text == result.caption[span.start : span.end]
        scores = [result.words[i].score for i in span.words]
        assert span.sum_score == pytest.approx(sum(scores))
        assert span.mean_score == pytest.approx(np.mean(scores))
        assert span.words == list(range(span.words[0], span.words[-1] + 1))
    expected_f = (1 - max(result.cosine, 0)) * sum(result.words[i].score for i in marked)
    assert result.f_clipscore == pytest.approx(expected_f, rel=1e-9, abs=1e-15)
    assert result.clipscore == pytest.approx(2.5 * max(result.cosine, 0))


def test_f_clipscore_is_zero_without_misaligned_words(adapter):
    [result] = CLIP4DM(adapter, epsilon=-1e9).attribute([scene(2)], ["a dog on a couch"])
    assert not any(w.misaligned for w in result.words) and result.spans == []
    assert result.f_clipscore == 0.0


@pytest.mark.slow
def test_most_negative_never_reports_punctuation(adapter):
    caption = "dog . . . ! ; , —"
    for seed in range(5):
        [result] = CLIP4DM(adapter).attribute([scene(seed)], [caption], mode="most_negative")
        [flagged] = [w for w in result.words if w.misaligned]
        assert flagged.word == "dog"
    [result] = CLIP4DM(adapter, epsilon=1.0).attribute([scene(0)], [caption])
    assert [w.word for w in result.words if w.misaligned] == ["dog"]


def test_most_negative_marks_the_lowest_word(adapter):
    [result] = CLIP4DM(adapter).attribute([scene(3)], [CAPTIONS[1]], mode="most_negative")
    [flagged] = [w for w in result.words if w.misaligned]
    assert flagged.score == min(w.score for w in result.words if not w.punctuation)
    assert len(result.spans) == 1 and result.spans[0].text == flagged.word


def test_spans_merge_across_adjacent_words_only():
    words = [
        Word("a", 0, 1, -1.0, True, False, 1),
        Word("golf", 2, 6, -2.0, True, False, 1),
        Word("ball", 7, 11, -3.0, True, False, 1),
        Word(",", 12, 13, 0.0, False, True, 1),
        Word("red", 14, 17, -1.0, True, False, 1),
        Word("hat", 18, 21, 1.0, False, False, 1),
        Word("x", 22, 23, -1.0, True, False, 1),
    ]
    spans = merge_spans("a golf ball , red hat x", words)
    assert [(s.text, s.words, s.sum_score) for s in spans] == [
        ("a golf ball , red", [0, 1, 2, 4], -7.0),
        ("x", [6], -1.0),
    ]


def test_bad_items_are_recorded_and_the_rest_scored(adapter, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    images = [scene(0), str(broken), str(tmp_path / "missing.png"), scene(1), scene(2)]
    captions = ["a dog", "a cat", "a bird", "   ", "a red car"]
    results = CLIP4DM(adapter).attribute(images, captions)
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["WordAlignment", "ItemError", "ItemError", "ItemError", "WordAlignment"]
    assert "broken.jpg" in results[1].error and "missing.png" in results[2].error
    assert "empty" in results[3].error and results[3].index == 3
    [alone] = CLIP4DM(adapter).attribute([scene(2)], ["a red car"])
    assert results[4].cosine == pytest.approx(alone.cosine, abs=1e-6)


def test_on_error_raise(adapter):
    with pytest.raises(ValueError, match="empty"):
        CLIP4DM(adapter).attribute([scene(0)], [""], on_error="raise")


def test_truncated_caption_is_reported_in_result_and_warning(adapter):
    caption = " ".join(f"word{i}" for i in range(80))
    with pytest.warns(CaptionTruncatedWarning):
        [result] = CLIP4DM(adapter).attribute([scene(0)], [caption])
    assert result.truncated_words and result.truncated_words[-1] == "word79"
    assert len(result.words) + len(result.truncated_words) == 80


def test_result_converts_to_json_with_stable_keys(adapter):
    [result] = CLIP4DM(adapter).attribute([scene(0)], ["a cup of coke"])
    assert isinstance(result, WordAlignment)
    data = json.loads(result.to_json())
    for key in ("caption", "cosine", "clipscore", "f_clipscore", "words", "spans", "truncated_words"):
        assert key in data
    assert [w["word"] for w in data["words"]] == ["a", "cup", "of", "coke"]
    assert set(data["words"][0]) >= {"word", "score", "misaligned"}
    assert "cos=" in str(result)
    assert isinstance(ItemError(0, "x", None, "bad").to_dict(), dict)


def test_invalid_arguments(adapter):
    with pytest.raises(ValueError, match="layers"):
        CLIP4DM(adapter, layers=0)
    with pytest.raises(ValueError, match="layers"):
        CLIP4DM(adapter, layers=adapter.num_text_layers + 1)
    with pytest.raises(ValueError, match="mode"):
        CLIP4DM(adapter).attribute([scene(0)], ["a"], mode="lowest")
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        CLIP4DM(adapter).attribute([scene(0), scene(1)], ["a"])


def test_single_pair_inputs_are_accepted(adapter):
    [result] = CLIP4DM(adapter).attribute(scene(0), "a dog")
    assert result.caption == "a dog"
