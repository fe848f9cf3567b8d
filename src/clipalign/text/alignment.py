"""Caption → BPE tokens → words, with character offsets into the caption as written.

A *word* is a whitespace-delimited chunk of the caption ("directions." is one word), the unit CLIP4DM
and the HAT annotations use. Token→word assignment comes from the fast tokenizer's offset mapping, so
emoji, accents, repeated spaces and attached punctuation map back to the right characters.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_TEMPLATE = "A photo depicts "
"""Prompt prefix used by CLIPScore (Hessel et al.) and CLIP4DM; its words are never reported."""

_WORD = re.compile(r"\S+")


_TRUNCATION_PREVIEW_WORDS = 5
_TRUNCATION_PREVIEW_CHARS = 80


class CaptionError(ValueError):
    """A caption that cannot be scored (not a string, not valid text, empty or invisible only)."""


class CaptionTruncatedWarning(UserWarning):
    """A caption was longer than the text encoder's context and its last words were dropped."""


def is_punctuation(text: str) -> bool:
    """True when every character is Unicode punctuation ("." "," "—" "..."): never reported as misaligned."""
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)


@dataclass(frozen=True)
class WordSpan:
    """One whitespace-delimited word: its text as written and its [start, end) characters in the caption."""

    text: str
    start: int
    end: int

    @property
    def punctuation(self) -> bool:
        return is_punctuation(self.text)


def split_words(caption: str) -> list[WordSpan]:
    """Split a caption into whitespace-delimited words with their character offsets."""
    return [WordSpan(m.group(), m.start(), m.end()) for m in _WORD.finditer(caption)]


@dataclass
class EncodedCaption:
    """A templated caption tokenized for one model, with the map from token positions to caption words.

    ``token_word[i]`` is the index in ``words`` of the word that token ``i`` of ``input_ids`` belongs to,
    or -1 for special tokens and template tokens.
    """

    caption: str
    template: str
    input_ids: list[int]
    tokens: list[str]
    token_spans: list[tuple[int, int]]
    token_word: np.ndarray
    pool_index: int
    words: list[WordSpan]
    truncated_words: list[WordSpan] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The string the model reads: template + caption."""
        return self.template + self.caption


def validate_caption(caption: object) -> str:
    """Return the caption if it can be scored, else raise :class:`CaptionError` saying why."""
    if not isinstance(caption, str):
        raise CaptionError(f"caption must be a string, got {type(caption).__name__}")
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CaptionError(
            f"caption is not valid Unicode text: lone surrogate {caption[exc.start]!r} at character "
            f"{exc.start} (undecodable bytes?)"
        ) from None
    if all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in caption):
        raise CaptionError(
            "caption is empty (or only whitespace, control or zero-width characters): nothing to score"
        )
    return caption


def _dropped_preview(caption: str, dropped: Sequence[WordSpan]) -> str:
    """The first few dropped words (at most a line of text), then how many more: a short warning."""
    shown = dropped[:_TRUNCATION_PREVIEW_WORDS]
    text = caption[shown[0].start : shown[-1].end]
    if len(text) > _TRUNCATION_PREVIEW_CHARS:
        text = text[:_TRUNCATION_PREVIEW_CHARS] + "…"
    more = len(dropped) - len(shown)
    return f"{text!r}" + (f" … and {more} more words" if more else "")


def encode_caption(
    tokenizer: PreTrainedTokenizerBase,
    caption: str,
    *,
    template: str,
    prefix_ids: Sequence[int],
    suffix_ids: Sequence[int],
    max_length: int,
) -> EncodedCaption:
    """Tokenize ``template + caption`` and wrap it as ``prefix + content + suffix`` within ``max_length``.

    When the content does not fit, whole words are dropped from the end (never half a word), the dropped
    words are listed in ``truncated_words`` and a :class:`CaptionTruncatedWarning` says what was cut.
    ``pool_index`` is the position of the first suffix token (CLIP's EOT, which the text embedding pools).
    """
    validate_caption(caption)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("a fast tokenizer (with offset mapping) is required to align tokens with words")
    text = template + caption
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = list(enc["input_ids"])
    spans = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    words = split_words(caption)
    word_starts = np.array([w.start for w in words], dtype=np.int64)
    tlen = len(template)
    starts = np.array([a for a, _ in spans], dtype=np.int64) - tlen
    token_word = np.where(starts >= 0, np.searchsorted(word_starts, starts, side="right") - 1, -1)
    if not (token_word >= 0).any():
        raise CaptionError("caption has no characters the tokenizer reads: nothing to score")

    capacity = max_length - len(prefix_ids) - len(suffix_ids)
    truncated: list[WordSpan] = []
    if len(ids) > capacity:
        first_cut_word = int(token_word[capacity])
        if first_cut_word < 0:
            raise CaptionError(f"the template {template!r} alone does not fit in {max_length} tokens")
        cut = int(np.argmax(token_word == first_cut_word))
        truncated = words[first_cut_word:]
        words = words[:first_cut_word]
        ids, spans, token_word = ids[:cut], spans[:cut], token_word[:cut]
        warnings.warn(
            f"caption longer than {max_length} tokens: dropped its last {len(truncated)} words: "
            f"{_dropped_preview(caption, truncated)}",
            CaptionTruncatedWarning,
            stacklevel=3,
        )

    n_pre, n_suf = len(prefix_ids), len(suffix_ids)
    input_ids = [*prefix_ids, *ids, *suffix_ids]
    tokens = tokenizer.convert_ids_to_tokens(input_ids)
    assert isinstance(tokens, list)  # a list of ids gives a list of tokens
    return EncodedCaption(
        caption=caption,
        template=template,
        input_ids=input_ids,
        tokens=tokens,
        token_spans=[(0, 0)] * n_pre + [(a - tlen, b - tlen) for a, b in spans] + [(0, 0)] * n_suf,
        token_word=np.concatenate([np.full(n_pre, -1), token_word, np.full(n_suf, -1)]).astype(np.int64),
        pool_index=n_pre + len(ids),
        words=words,
        truncated_words=truncated,
    )
