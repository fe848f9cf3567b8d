"""Caption → BPE tokens → words, with character offsets into the caption as written.

Two word units (:data:`WordUnit`): ``clip4dm`` (the default), the CLIP4DM authors' ``space_tokenize``
unit: the caption split on whitespace with every "." and "," a word of its own ("skirt." is "skirt" and
"."); and ``whitespace``, whitespace-delimited chunks ("skirt." is one word, as HAT's grounding writes
it). Tokens map to words by the fast tokenizer's character offsets (not by re-encoding each word, which
shifts every later word when one BPE token spans several words, as ``...`` does), so emoji, accents,
repeated spaces and attached punctuation map back to the right characters. A token that runs past the
end of the word it starts in (``...`` over three "." words, ``),`` over ")" and ",") belongs to that
word alone; the words it covers beyond it have no token (``num_tokens`` 0, never flagged).
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_TEMPLATE = "A photo depicts "
"""Prompt prefix used by CLIPScore (Hessel et al.) and CLIP4DM; its words are never reported."""

WordUnit = Literal["clip4dm", "whitespace"]
"""How a caption is cut into words: the CLIP4DM authors' unit, or whitespace-delimited chunks."""

_WORD_PATTERNS: dict[str, re.Pattern[str]] = {
    "clip4dm": re.compile(r"[.,]|[^\s.,]+"),
    "whitespace": re.compile(r"\S+"),
}


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
    """One caption word (see :data:`WordUnit`): its text as written and its [start, end) characters."""

    text: str
    start: int
    end: int

    @property
    def punctuation(self) -> bool:
        return is_punctuation(self.text)


def split_words(caption: str, unit: WordUnit = "clip4dm") -> list[WordSpan]:
    """Split a caption into words of ``unit`` with their character offsets.

    Example:
        >>> [w.text for w in split_words("a red skirt, 2.5 m...")]
        ['a', 'red', 'skirt', ',', '2', '.', '5', 'm', '.', '.', '.']
        >>> [(w.text, w.start) for w in split_words("a red skirt.", "whitespace")]
        [('a', 0), ('red', 2), ('skirt.', 6)]
    """
    if unit not in _WORD_PATTERNS:
        raise ValueError(f"word unit must be one of {', '.join(map(repr, _WORD_PATTERNS))}, got {unit!r}")
    return [WordSpan(m.group(), m.start(), m.end()) for m in _WORD_PATTERNS[unit].finditer(caption)]


def _token_words(words: Sequence[WordSpan], token_starts: np.ndarray) -> np.ndarray:
    """Index of the word each token starts in (or the word before the gap it starts in), −1 before
    the first word; ``token_starts`` are caption offsets, negative for template tokens."""
    word_starts = np.array([w.start for w in words], dtype=np.int64)
    return np.where(token_starts >= 0, np.searchsorted(word_starts, token_starts, side="right") - 1, -1)


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
    unit: WordUnit = "clip4dm"

    @property
    def text(self) -> str:
        """The string the model reads: template + caption."""
        return self.template + self.caption

    def with_unit(self, unit: WordUnit) -> EncodedCaption:
        """The same tokens grouped into words of ``unit`` (truncation always falls between whitespace
        chunks, so both units keep and drop the same characters)."""
        if unit == self.unit:
            return self
        cut = self.truncated_words[0].start if self.truncated_words else len(self.caption)
        all_words = split_words(self.caption, unit)
        kept = [w for w in all_words if w.start < cut]
        caption_token = self.token_word >= 0
        starts = np.array([a for a, _ in self.token_spans], dtype=np.int64)
        token_word = np.where(caption_token, _token_words(kept, starts), -1).astype(np.int64)
        return replace(
            self, words=kept, truncated_words=all_words[len(kept) :], token_word=token_word, unit=unit
        )


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
    unit: WordUnit = "clip4dm",
) -> EncodedCaption:
    """Tokenize ``template + caption`` and wrap it as ``prefix + content + suffix`` within ``max_length``.

    Words are of ``unit``. When the content does not fit, whole whitespace chunks are dropped from the
    end (never half a written word, in either unit), the dropped words are listed in ``truncated_words``
    and a :class:`CaptionTruncatedWarning` says what was cut.
    ``pool_index`` is the position of the first suffix token (CLIP's EOT, which the text embedding pools).
    """
    [encoded] = encode_captions(
        tokenizer,
        [caption],
        template=template,
        prefix_ids=prefix_ids,
        suffix_ids=suffix_ids,
        max_length=max_length,
        unit=unit,
    )
    return encoded


def encode_captions(
    tokenizer: PreTrainedTokenizerBase,
    captions: Sequence[str],
    *,
    template: str,
    prefix_ids: Sequence[int],
    suffix_ids: Sequence[int],
    max_length: int,
    unit: WordUnit = "clip4dm",
) -> list[EncodedCaption]:
    """:func:`encode_caption` for a list in one tokenizer call (a fast tokenizer encodes each text of a
    batch exactly as it encodes it alone); the first caption that cannot be encoded raises."""
    for caption in captions:
        validate_caption(caption)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("a fast tokenizer (with offset mapping) is required to align tokens with words")
    if not captions:
        return []
    batch = tokenizer(
        [template + caption for caption in captions],
        add_special_tokens=False,
        return_offsets_mapping=True,
        verbose=False,
    )
    return [
        _wrap(tokenizer, caption, ids, offsets, template, prefix_ids, suffix_ids, max_length, unit)
        for caption, ids, offsets in zip(captions, batch["input_ids"], batch["offset_mapping"], strict=True)
    ]


def _wrap(
    tokenizer: PreTrainedTokenizerBase,
    caption: str,
    token_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    template: str,
    prefix_ids: Sequence[int],
    suffix_ids: Sequence[int],
    max_length: int,
    unit: WordUnit,
) -> EncodedCaption:
    """One tokenized ``template + caption`` mapped to its words, cut to fit and wrapped in special tokens."""
    ids = list(token_ids)
    text = template + caption
    # a token's span starts at its first non-space character: SentencePiece tokens (``▁cup``) carry the
    # space before their word, which lies in the gap after the previous word (CLIP's BPE never does)
    spans = [(int(b) - len(text[a:b].lstrip()), int(b)) for a, b in offsets]
    words = split_words(caption, unit)
    tlen = len(template)
    starts = np.array([a for a, _ in spans], dtype=np.int64) - tlen
    token_word = _token_words(words, starts)
    if not (token_word >= 0).any():
        raise CaptionError("caption has no characters the tokenizer reads: nothing to score")

    capacity = max_length - len(prefix_ids) - len(suffix_ids)
    truncated: list[WordSpan] = []
    if len(ids) > capacity:
        chunks = split_words(caption, "whitespace")
        chunk = int(_token_words(chunks, starts[capacity : capacity + 1])[0])
        if chunk < 0:
            raise CaptionError(f"the template {template!r} alone does not fit in {max_length} tokens")
        cut_at = chunks[chunk].start
        cut = int(np.argmax(starts >= cut_at))
        first_cut_word = next(i for i, w in enumerate(words) if w.start >= cut_at)
        truncated = words[first_cut_word:]
        words = words[:first_cut_word]
        ids, spans, token_word = ids[:cut], spans[:cut], token_word[:cut]
        warnings.warn(
            f"caption longer than {max_length} tokens: dropped its last {len(truncated)} words: "
            f"{_dropped_preview(caption, truncated)}",
            CaptionTruncatedWarning,
            stacklevel=5,
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
        unit=unit,
    )
