"""The CLIP4DM authors' words and word scores (naver-ai/clip4dm: src/utils.py, src/clip4dm.py),
re-stated plainly below, against the library.

What their code does with one caption, in words:

1. The model reads ``template + caption``; a BPE token's score is the EOT row of the relevance map at
   that token (positions 1 .. EOT−1 of the encoding, i.e. the text's tokens in order).
2. Words (``space_tokenize``): walk the text; a space ends the current word; "." and "," end it too
   and are words of their own; any other character extends the current word.
3. Token → word (``tokenizer2space`` and the loop in ``__call__``): each word is encoded *on its own*
   and takes as many positions of the whole text's encoding as its own encoding has, one word after
   the other. A word left with no position (it encodes to nothing, or the context ran out) raises
   ZeroDivisionError in their mean and is left out. A word's score is the mean of its positions.
4. The first ``len(template.split())`` words (the template's) are dropped.
5. ``threshold`` mode: words that are substrings of ``'.,!"?;:" '`` (or blank) are dropped, the rest
   numbered, those scoring below ε kept, sorted ascending; their sum is the F-CLIPScore term.
   ``most_negative`` mode: the lowest-scoring word of all (punctuation included).

Step 3 goes wrong when one BPE token of the whole text covers several words: ``...`` is one token,
but each "." encodes alone to one, so three positions are consumed for one token and every later word
is scored with its neighbour's tokens. The library maps tokens to words by character offsets instead
(a token belongs to the word it starts in) and so never shifts; these tests show that is the only
difference in the words, and that otherwise the scores, flags and sums are theirs. Their code uses
open_clip's ``SimpleTokenizer``; the real CLIP tokenizer shipped with the package (same vocabulary and
merges, lower-cased) stands in for it here.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from conftest import SHARED
from PIL import Image
from test_text_alignment import encode as encode_ours
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

from clipalign import CLIP4DM
from clipalign.checkpoints import SYNTHETIC_CLIP
from clipalign.models import HFCLIPAdapter
from clipalign.text import DEFAULT_TEMPLATE, find_span, is_punctuation, split_words

ANNOTATIONS = SHARED / "annotations"
THEIR_PUNCTUATION = '.,!"?;:" '
"""Their threshold mode drops a word that is a substring of this string (``word not in ...``)."""

Encode = Callable[[str], list[int]]


def authors_pieces(text: str) -> list[str]:
    """Their ``space_tokenize``: split on spaces, "." and "," each a word of its own."""
    pieces: list[str] = []
    current = ""
    for char in text:
        if char == " " or char in ".,":
            if current:
                pieces.append(current)
            current = ""
            if char != " ":
                pieces.append(char)
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def authors_groups(encode: Encode, text: str, context: int = 75) -> list[tuple[str, list[int]]]:
    """Their token → word walk: each word, encoded alone, takes the next that-many positions of the
    whole text's encoding (which stops at ``context`` positions); a word left with none is dropped;
    then the template's words (``len(template.split())``) are dropped."""
    available = min(len(encode(text)), context)
    groups: list[tuple[str, list[int]]] = []
    cursor = 0
    for piece in authors_pieces(text):
        count = len(encode(piece))
        positions = list(range(cursor, min(cursor + count, available)))
        cursor += count
        if positions:
            groups.append((piece, positions))
    return groups[len(DEFAULT_TEMPLATE.split()) :]


def their_code_shifts(encode: Encode, text: str) -> bool:
    """Whether the words encoded one by one differ from the whole text's encoding (their shift)."""
    return [t for piece in authors_pieces(text) for t in encode(piece)] != encode(text)


def authors_word_scores(token_scores: Sequence[float], groups) -> list[tuple[str, float]]:
    """A word's score: the mean of the scores at its positions."""
    return [(word, sum(token_scores[p] for p in positions) / len(positions)) for word, positions in groups]


def authors_threshold(words: list[tuple[str, float]], epsilon: float):
    """Their threshold mode: (number among unfiltered words, word, score) below ε, ascending; the sum."""
    kept = [(w, s) for w, s in words if w not in THEIR_PUNCTUATION and w.strip()]
    flagged = sorted([(i, w, s) for i, (w, s) in enumerate(kept) if s < epsilon], key=lambda item: item[2])
    return flagged, sum(s for _, _, s in flagged)


def authors_most_negative(words: list[tuple[str, float]]) -> tuple[str, float]:
    """Their most_negative mode: the lowest word of all, punctuation included."""
    return sorted(words, key=lambda item: item[1])[0]


def our_groups(enc) -> list[tuple[str, list[int]]]:
    """The library's words with their token positions in the encoding of template + caption."""
    return [
        (w.text, [int(t) - 1 for t in np.flatnonzero(enc.token_word == i)]) for i, w in enumerate(enc.words)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(SYNTHETIC_CLIP)


@pytest.fixture(scope="module")
def encode(tokenizer) -> Encode:
    return lambda text: tokenizer(text, add_special_tokens=False).input_ids


def crosses_a_word(enc) -> bool:
    """Whether a caption token runs past the end of the word it starts in."""
    return any(
        enc.token_spans[t][1] > enc.words[enc.token_word[t]].end for t in np.flatnonzero(enc.token_word >= 0)
    )


def test_restated_procedure_on_their_kind_of_caption(encode):
    assert authors_pieces("A photo depicts a red skirt, 2.5 m.") == [
        *("A", "photo", "depicts", "a", "red", "skirt", ",", "2", ".", "5", "m", ".")
    ]
    text = DEFAULT_TEMPLATE + "a dog... and a cat"
    # "..." is one token of the whole text but three one-token words: from the 2nd "." on, every word
    # takes a position two words later ("and" gets "cat"), and the last two words find none left
    assert encode(text)[5] == encode("...")[0] and their_code_shifts(encode, text)
    assert authors_groups(encode, text) == [
        *(("a", [3]), ("dog", [4]), (".", [5]), (".", [6]), (".", [7]), ("and", [8]))
    ]
    assert not their_code_shifts(encode, DEFAULT_TEMPLATE + "a red skirt, 2.5 m.")


def real_annotations() -> tuple[list[dict], list[dict]]:
    """HAT and nocaps-FOIL as released (the ALOHa authors' repository, data/), or skip saying so."""
    files = [ANNOTATIONS / "hat-trainval.json", ANNOTATIONS / "nocaps-val-foil.json"]
    if not all(f.exists() for f in files):
        pytest.skip(
            f"HAT / nocaps-FOIL annotations not found in {ANNOTATIONS}: get hat-trainval.json and "
            "nocaps-val-foil.json from the data/ folder of the ALOHa authors' repository (arXiv 2404.02904)"
        )
    hat, nocaps = (json.loads(f.read_text()) for f in files)
    return hat, nocaps


@pytest.fixture(scope="module")
def real_captions() -> list[tuple[str, str]]:
    """Every caption of HAT (trainval) and nocaps-FOIL (baseline and foil), with where it comes from."""
    hat, nocaps = real_annotations()
    return (
        [("hat", item["caption"]) for item in hat]
        + [("nocaps-baseline", item["baseline"]) for item in nocaps]
        + [("nocaps-foil", item["foil"]) for item in nocaps]
    )


def test_words_and_token_groups_equal_theirs_on_every_real_caption(tokenizer, encode, real_captions):
    shifted, rescored = [], []
    for source, caption in real_captions:
        enc = encode_ours(tokenizer, caption)
        assert not enc.truncated_words, caption
        ours, theirs = our_groups(enc), authors_groups(encode, DEFAULT_TEMPLATE + caption)
        # ours: every caption token in exactly one word, in order, whatever the caption
        first = len(encode(DEFAULT_TEMPLATE))
        assert [p for _, g in ours for p in g] == list(range(first, enc.pool_index - 1)), caption
        shift = their_code_shifts(encode, DEFAULT_TEMPLATE + caption)
        # their walk shifts exactly where one BPE token spans two of their words
        assert shift == crosses_a_word(enc), caption
        if shift:
            shifted.append((source, caption))
            # from the shift on their words take later tokens, and their last words find none left
            assert [w for w, _ in ours[: len(theirs)]] == [w for w, _ in theirs] and ours != theirs, caption
            if ours[: len(theirs)] != theirs:  # else only a last word (the "." of '"welcome".') is lost
                rescored.append(caption)
        else:
            assert ours == theirs, caption
    counts = {s: sum(src == s for src, _ in shifted) for s in ("hat", "nocaps-baseline", "nocaps-foil")}
    print(
        f"\ntheir tokenizer2space shift hits {len(shifted)} of {len(real_captions)} captions {counts}; "
        f"in {len(rescored)} a word keeps its text but is scored with other tokens"
    )
    for source, caption in shifted:
        print(f"  {source}: {caption!r}")
    assert ("nocaps-foil", "A large green head of turkey sits beside a head of cauliflower..") in shifted


def test_ground_truth_words_that_change_unit_are_found_in_both():
    """HAT hallucinated words and nocaps-FOIL foil words written with "." or "," attached ("skirt.")
    are two words now; the evaluation finds the same words for them (punctuation left out) in either
    unit."""
    hat, nocaps = real_annotations()
    truth = [(h["caption"], w, "hat") for h in hat for w, wrong in h["grounding"] if wrong]
    truth += [(n["foil"], n["replacement"][1], "nocaps-foil") for n in nocaps]
    changed = {"hat": 0, "nocaps-foil": 0}
    for caption, phrase, source in truth:
        chunks, words = split_words(caption, "whitespace"), split_words(caption)
        runs_ws, runs = find_span(chunks, phrase), find_span(words, phrase)
        text = [caption[words[r[0]].start : words[r[-1]].end] for r in runs]
        assert text == [caption[chunks[r[0]].start : chunks[r[-1]].end].rstrip(".,") for r in runs_ws], phrase
        # as the annotation writes it (HAT's grounding word; the foil's first occurrence in the caption)
        written = phrase if source == "hat" else " ".join(chunks[i].text for i in runs_ws[0])
        changed[source] += len(split_words(written)) > len(split_words(written, "whitespace"))
    print(f"\nground-truth words written with '.' or ',' attached (two words now): {changed}")
    assert changed["hat"] > 0 and changed["nocaps-foil"] > 0


@pytest.fixture(scope="module")
def fp64(tiny_model_dir):
    model = CLIPModel.from_pretrained(tiny_model_dir, attn_implementation="eager", dtype=torch.float64).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return HFCLIPAdapter(model, tokenizer, CLIPImageProcessorPil.from_pretrained(tiny_model_dir))


CAPTIONS = [
    "A boy sitting on stairs, holding a racket.",
    "a dog , on a couch .",
    "A little kid standing on the pavement in a skirt. ",
    "salt & pepper - on a plate!",
    "a street sign with a detour pointing in different directions.",
]


def image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))


def token_row(attributor: CLIP4DM, img: Image.Image, caption: str) -> list[float]:
    """The library's per-token scores for template + caption, in encoding order (SOT and EOT left out)."""
    adapter = attributor.model
    [enc] = adapter.encode_captions([caption], DEFAULT_TEMPLATE)
    raw = attributor.attribute_tokens(adapter.preprocess([img]), [enc])
    return raw.token_scores[0, 1 : enc.pool_index].double().tolist()


@pytest.mark.parametrize("k", range(len(CAPTIONS)))
def test_their_aggregation_of_our_token_scores_gives_our_words_flags_and_sums(fp64, encode, k):
    caption, img = CAPTIONS[k], image(k)
    attributor = CLIP4DM(fp64, layers=2)
    theirs = authors_word_scores(
        token_row(attributor, img, caption), authors_groups(encode, DEFAULT_TEMPLATE + caption)
    )
    epsilon = statistics.median(s for _, s in theirs)
    [result] = attributor.attribute([img], [caption], epsilon=epsilon, on_error="raise")
    assert [w.word for w in result.words] == [w for w, _ in theirs]
    np.testing.assert_allclose([w.score for w in result.words], [s for _, s in theirs], rtol=1e-6, atol=0)

    flagged, total = authors_threshold(theirs, epsilon)
    kept = [i for i, (w, _) in enumerate(theirs) if w not in THEIR_PUNCTUATION and w.strip()]
    their_flags = {kept[n] for n, _, _ in flagged}
    ours = {i for i, w in enumerate(result.words) if w.misaligned}
    # ours never flags punctuation: their substring check keeps "&", "-", "!" after a word and so on
    assert ours == {i for i in their_flags if not is_punctuation(theirs[i][0])}
    extra = sum(theirs[i][1] for i in their_flags - ours)
    assert sum(result.words[i].score for i in ours) == pytest.approx(total - extra, rel=1e-6, abs=1e-15)
    assert result.f_clipscore == pytest.approx(
        (1 - max(result.cosine, 0)) * (total - extra), rel=1e-6, abs=1e-15
    )
    if k != 3:
        assert ours == their_flags

    [lowest] = attributor.attribute([img], [caption], mode="most_negative", on_error="raise")
    [ours_lowest] = [i for i, w in enumerate(lowest.words) if w.misaligned]
    word, score = authors_most_negative(theirs)
    content = [(i, s) for i, (w, s) in enumerate(theirs) if not is_punctuation(w)]
    assert ours_lowest == min(content, key=lambda item: item[1])[0]
    if not is_punctuation(word):
        assert (theirs[ours_lowest][0], lowest.words[ours_lowest].score) == pytest.approx((word, score))


def test_after_their_shift_their_scores_are_a_neighbours_and_ours_are_not(fp64, encode):
    caption = "a dog... and a cat"
    attributor = CLIP4DM(fp64, layers=2)
    tokens = token_row(attributor, image(9), caption)
    theirs = authors_word_scores(tokens, authors_groups(encode, DEFAULT_TEMPLATE + caption))
    [result] = attributor.attribute([image(9)], [caption], on_error="raise")
    assert [w.word for w in result.words] == [w for w, _ in theirs] + ["a", "cat"]
    and_word = result.words[5]
    # the library scores "and" by its own token; their walk gives it the token of "cat"
    assert and_word.word == "and" and and_word.score == pytest.approx(tokens[6], rel=1e-12)
    assert theirs[5] == ("and", pytest.approx(tokens[8], rel=1e-12)) and tokens[6] != tokens[8]
    assert result.words[-1].score == pytest.approx(tokens[8], rel=1e-12)
    assert [w.num_tokens for w in result.words] == [1, 1, 1, 0, 0, 1, 1, 1]
    assert not any(w.misaligned for w in result.words if w.num_tokens == 0)


def test_whitespace_unit_is_todays_behaviour(fp64):
    caption = "A boy sitting on stairs, holding a racket."
    img = image(3)
    default = CLIP4DM(fp64, layers=2)
    [new] = default.attribute([img], [caption], on_error="raise")
    [old] = CLIP4DM(fp64, layers=2, unit="whitespace").attribute([img], [caption], on_error="raise")
    assert (new.unit, old.unit) == ("clip4dm", "whitespace")
    assert [w.word for w in old.words] == caption.split()
    tokens = {(t.start, t.end): t.score for t in new.tokens}
    for w in old.words:
        mine = [s for (a, _), s in tokens.items() if w.start <= a < w.end]
        assert w.num_tokens == len(mine) and w.score == pytest.approx(np.mean(mine), rel=1e-9)
    assert [t.score for t in old.tokens] == [t.score for t in new.tokens]


def test_cli_word_unit_option():
    import argparse

    from clipalign.cli.common import add_word_options, word_settings

    parser = argparse.ArgumentParser()
    add_word_options(parser)
    assert word_settings(parser.parse_args([])).unit == "clip4dm"
    assert word_settings(parser.parse_args(["--word-unit", "whitespace"])).unit == "whitespace"
    assert "default clip4dm" in re.sub(r"\s+", " ", parser.format_help())
    with pytest.raises(SystemExit):
        parser.parse_args(["--word-unit", "bpe"])
