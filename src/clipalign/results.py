"""Typed per-pair results: they print readably and convert to plain dicts / JSON (a stable schema)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


class _Serializable:
    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only (lists, dicts, str, float, int, bool, None)."""
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)


@dataclass(frozen=True)
class TokenScore(_Serializable):
    """One BPE token of the caption: its vocabulary string, characters in the caption, score, word index."""

    token: str
    start: int
    end: int
    score: float
    word: int


@dataclass(frozen=True)
class Word(_Serializable):
    """A whitespace-delimited caption word, ``word`` exactly as written, scored by the mean of its tokens.

    ``punctuation`` words (standalone "." or "—") are scored but never misaligned.
    """

    word: str
    start: int
    end: int
    score: float
    misaligned: bool
    punctuation: bool
    num_tokens: int


@dataclass(frozen=True)
class Span(_Serializable):
    """Adjacent misaligned words merged: their text, characters, word indices, mean and sum of scores.

    The mean is what the CLIP4DM authors compare on HAT; the sum is what F-CLIPScore adds up.
    """

    text: str
    start: int
    end: int
    words: list[int]
    mean_score: float
    sum_score: float


@dataclass(frozen=True)
class WordAlignment(_Serializable):
    """Word-level (mis)alignment of one image–caption pair (CLIP4DM) with its scores.

    ``cosine`` is between the image and ``template + caption``; ``clipscore`` = 2.5·max(cos, 0);
    ``f_clipscore`` = (1 − max(cos, 0)) · Σ scores of words below ε (≤ 0, lower = worse).
    ``truncated_words`` lists the caption words cut to fit the text encoder's context (not scored).
    """

    caption: str
    cosine: float
    clipscore: float
    f_clipscore: float
    words: list[Word]
    spans: list[Span]
    truncated_words: list[str]
    mode: str
    epsilon: float
    tokens: list[TokenScore] = field(repr=False)
    source: str | None = None

    @property
    def misaligned_words(self) -> list[Word]:
        return [w for w in self.words if w.misaligned]

    def __str__(self) -> str:
        marked = " ".join(f"[{w.word}]" if w.misaligned else w.word for w in self.words)
        cut = f" (+{len(self.truncated_words)} words cut)" if self.truncated_words else ""
        return (
            f"{marked}{cut}  cos={self.cosine:.4f} CLIPScore={self.clipscore:.4f} "
            f"F-CLIPScore={self.f_clipscore:.3e}"
        )


@dataclass(frozen=True)
class ItemError(_Serializable):
    """A pair that could not be scored (unreadable image, empty caption, ...): which one and why."""

    index: int
    source: str
    caption: str | None
    error: str

    def __str__(self) -> str:
        return f"item {self.index} ({self.source}): {self.error}"
