"""BPE tokens ↔ caption words on the real CLIP vocabulary: offsets, odd captions, truncation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from transformers import AutoTokenizer

from clipalign.text import (
    DEFAULT_TEMPLATE,
    CaptionError,
    CaptionTruncatedWarning,
    encode_caption,
    is_punctuation,
    split_words,
)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def encode(tokenizer, caption, max_length=77, unit="clip4dm"):
    return encode_caption(
        tokenizer,
        caption,
        template=DEFAULT_TEMPLATE,
        prefix_ids=[tokenizer.bos_token_id],
        suffix_ids=[tokenizer.eos_token_id],
        max_length=max_length,
        unit=unit,
    )


def tokens_of_word(enc, index):
    return [enc.tokens[t] for t in np.flatnonzero(enc.token_word == index)]


def test_multi_bpe_words_and_attached_punctuation(tokenizer):
    caption = "A snowboarder plays a xylophone in different directions."
    enc = encode(tokenizer, caption)
    words = [w.text for w in enc.words]
    assert words == ["A", "snowboarder", "plays", "a", "xylophone", "in", "different", "directions", "."]
    assert tokens_of_word(enc, 1) == ["snow", "boarder</w>"]
    assert tokens_of_word(enc, 4) == ["xy", "lo", "phone</w>"]
    assert tokens_of_word(enc, 7) == ["directions</w>"]
    assert tokens_of_word(enc, 8) == [".</w>"] and enc.words[8].punctuation
    old = encode(tokenizer, caption, unit="whitespace")
    assert [w.text for w in old.words] == caption.split() and old.unit == "whitespace"
    assert tokens_of_word(old, 7) == ["directions</w>", ".</w>"]
    assert old.input_ids == enc.input_ids
    regrouped = enc.with_unit("whitespace")
    assert regrouped.words == old.words and list(regrouped.token_word) == list(old.token_word)
    assert regrouped.with_unit("clip4dm").words == enc.words
    assert enc.input_ids[0] == tokenizer.bos_token_id
    assert enc.input_ids[enc.pool_index] == tokenizer.eos_token_id
    assert enc.pool_index == len(enc.input_ids) - 1
    # template tokens and specials belong to no word
    assert list(enc.token_word[:4]) == [-1, -1, -1, -1]


def test_offsets_map_back_to_original_text(tokenizer):
    caption = "  a   café 🏂 snowboarder,  dog!   naïve résumé —  ok "
    enc = encode(tokenizer, caption)
    assert [caption[w.start : w.end] for w in enc.words] == [
        *("a", "café", "🏂", "snowboarder", ",", "dog!", "naïve", "résumé", "—", "ok")
    ]
    for t in np.flatnonzero(enc.token_word >= 0):
        a, b = enc.token_spans[t]
        word = enc.words[enc.token_word[t]]
        assert word.start <= a < b <= word.end
    # every word got at least one token and every caption token is assigned
    counts = np.bincount(enc.token_word[enc.token_word >= 0], minlength=len(enc.words))
    assert (counts > 0).all()
    assert enc.words[2].text == "🏂" and counts[2] == 2  # byte-level BPE: emoji spans two tokens


def test_a_token_spanning_words_belongs_to_the_word_it_starts_in(tokenizer):
    enc = encode(tokenizer, 'a dog... "a (cat)," she said.')
    words = [w.text for w in enc.words]
    assert words == ["a", "dog", ".", ".", ".", '"a', "(cat)", ",", '"', "she", "said", "."]
    assert tokens_of_word(enc, 2) == ["...</w>"]
    assert tokens_of_word(enc, 3) == tokens_of_word(enc, 4) == []
    assert tokens_of_word(enc, 6) == ["(</w>", "cat</w>", ")"]
    assert tokens_of_word(enc, 7) == [',"</w>'] and tokens_of_word(enc, 8) == []
    assert tokens_of_word(enc, 9) == ["she</w>"]  # later words keep their own tokens: nothing shifts


def test_word_units():
    caption = "a red skirt, 2.5m...\tok"
    assert [w.text for w in split_words(caption)] == [
        *("a", "red", "skirt", ",", "2", ".", "5m", ".", ".", ".", "ok")
    ]
    assert [w.text for w in split_words(caption, "whitespace")] == caption.split()
    assert all(caption[w.start : w.end] == w.text for w in split_words(caption))
    with pytest.raises(ValueError, match="word unit"):
        split_words(caption, "bpe")


def test_punctuation_words():
    assert is_punctuation(".") and is_punctuation("—") and is_punctuation("...")
    assert not is_punctuation("dog!") and not is_punctuation("🏂") and not is_punctuation("")
    assert [w.punctuation for w in split_words("a dog , running .")] == [False, False, True, False, True]


@pytest.mark.parametrize("caption", ["", "   ", "\n\t"])
def test_empty_caption_is_a_clear_error(tokenizer, caption):
    with pytest.raises(CaptionError, match="empty"):
        encode(tokenizer, caption)


def test_non_string_caption_is_a_clear_error(tokenizer):
    with pytest.raises(CaptionError, match="string"):
        encode(tokenizer, None)


def test_long_caption_truncates_whole_words_and_says_so(tokenizer):
    caption = " ".join(["snowboarder"] * 30 + ["xylophone"] * 10)
    with pytest.warns(CaptionTruncatedWarning, match="dropped its last"):
        enc = encode(tokenizer, caption)
    assert len(enc.input_ids) <= 77
    assert enc.input_ids[-1] == tokenizer.eos_token_id and enc.pool_index == len(enc.input_ids) - 1
    kept, cut = len(enc.words), len(enc.truncated_words)
    assert kept + cut == 40 and cut > 0
    # no half word: every kept word has all its tokens
    full = tokenizer(DEFAULT_TEMPLATE + caption, add_special_tokens=False).input_ids
    assert enc.input_ids[1:-1] == full[: len(enc.input_ids) - 2]
    assert sum(len(tokens_of_word(enc, i)) for i in range(kept)) == len(enc.input_ids) - 2 - 3
    assert enc.truncated_words[0].start == enc.words[-1].end + 1


def test_truncation_never_cuts_a_written_word_in_two(tokenizer):
    # 3 template + 70 "dog" + "cat" fill 74 of 75 places: "." of "cat." fits, but "cat." goes whole
    caption = " ".join(["dog"] * 70) + " cat. bird"
    with pytest.warns(CaptionTruncatedWarning, match="'cat. bird'"):
        enc = encode(tokenizer, caption, max_length=75)
    assert [w.text for w in enc.truncated_words] == ["cat", ".", "bird"]
    assert len(enc.words) == 70 and enc.input_ids[-2] == enc.input_ids[-3]
    old = enc.with_unit("whitespace")
    assert [w.text for w in old.truncated_words] == ["cat.", "bird"] and len(old.words) == 70


def test_caption_that_fits_exactly_is_not_truncated(tokenizer):
    caption = " ".join(["dog"] * 72)  # 3 template + 72 + SOT + EOT = 77
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = encode(tokenizer, caption)
    assert len(enc.input_ids) == 77 and not enc.truncated_words
