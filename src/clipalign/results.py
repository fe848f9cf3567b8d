"""Typed per-pair results: they print readably and convert to plain dicts / JSON (a stable schema)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clipalign.images.geometry import Box, ImageGeometry, box_patch_weights, grid_to_image
from clipalign.text.alignment import WordSpan
from clipalign.text.spans import find_span


class _Serializable:
    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only (lists, dicts, str, float, int, bool, None)."""
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)


def eligible(punctuation: np.ndarray | bool, num_tokens: np.ndarray | int) -> np.ndarray:
    """The one rule for which words can be flagged misaligned: not punctuation, and at least one of
    its tokens was scored (not cut off). Elementwise on arrays, so a batch is checked at once."""
    return np.logical_not(punctuation) & (np.asarray(num_tokens) > 0)


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
    """A caption word of the run's unit (see :data:`~clipalign.text.alignment.WordUnit`), ``word``
    exactly as written at characters [start, end), scored by the mean of its tokens.

    ``punctuation`` words ("." "," "—") are scored but never misaligned; a word whose characters all
    belong to a token that started in an earlier word (the 2nd and 3rd "." of "...") has no token
    (``num_tokens`` 0, score 0).
    """

    word: str
    start: int
    end: int
    score: float
    misaligned: bool
    punctuation: bool
    num_tokens: int

    @property
    def eligible(self) -> bool:
        """Whether this word can be flagged (see :func:`eligible`)."""
        return bool(eligible(self.punctuation, self.num_tokens))


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
    ``unit`` is the word unit the caption was split into (``clip4dm`` or ``whitespace``).
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
    unit: str = "clip4dm"

    @property
    def misaligned_words(self) -> list[Word]:
        return [w for w in self.words if w.misaligned]

    @property
    def lowest_word(self) -> int | None:
        """Index of the lowest-scoring eligible word (what ``most_negative`` flags), or None if none."""
        eligible = [i for i, w in enumerate(self.words) if w.eligible]
        return min(eligible, key=lambda i: self.words[i].score) if eligible else None

    def __str__(self) -> str:
        marked = " ".join(f"[{w.word}]" if w.misaligned else w.word for w in self.words)
        cut = f" (+{len(self.truncated_words)} words cut)" if self.truncated_words else ""
        return (
            f"{marked}{cut}  cos={self.cosine:.4f} CLIPScore={self.clipscore:.4f} "
            f"F-CLIPScore={self.f_clipscore:.3e}"
        )


def word_row(result: WordAlignment) -> dict[str, Any]:
    """The one flat form of a word-level result (plain types), shared by every consumer.

    ``scan`` writes its Parquet columns from it, the evaluation cache stores it whole, ``score --json``
    prints a selection. ``f_clipscore_min`` is the CLIP4DM authors' F-CLIPScore in ``most_negative``
    mode (FOIL, nocaps-FOIL): the lowest eligible word's score × (1 − max(cos, 0)), 0 with no such word.
    """
    lowest = result.lowest_word
    return {
        "caption": result.caption,
        "cosine": result.cosine,
        "clipscore": result.clipscore,
        "f_clipscore": result.f_clipscore,
        "f_clipscore_min": (1 - max(result.cosine, 0.0)) * result.words[lowest].score
        if lowest is not None
        else 0.0,
        "words": [w.word for w in result.words],
        "word_scores": [w.score for w in result.words],
        "word_misaligned": [w.misaligned for w in result.words],
        "misaligned_words": [w.word for w in result.words if w.misaligned],
        "lowest_word": lowest,
        "spans": [s.to_dict() for s in result.spans],
        "truncated_words": result.truncated_words,
    }


@dataclass(frozen=True)
class ItemError(_Serializable):
    """A pair that could not be scored (unreadable image, empty caption, ...): which one and why."""

    index: int
    source: str
    caption: str | None
    error: str

    def __str__(self) -> str:
        return f"item {self.index} ({self.source}): {self.error}"


@dataclass(frozen=True)
class TokenGroup(_Serializable):
    """A caption word and the positions of its tokens in an interaction matrix's rows."""

    word: str
    start: int
    end: int
    tokens: list[int]


@dataclass(frozen=True)
class Completeness(_Serializable):
    """Σ A against f(x)·g(y) − f(x)·g(r_y) − f(r_x)·g(y) + f(r_x)·g(r_y); the residual is quadrature error."""

    sum: float
    target: float
    residual: float
    s_xy: float
    s_x_ry: float
    s_rx_y: float
    s_rx_ry: float


@dataclass(frozen=True, eq=False)
class Interactions(_Serializable):
    """Second-order token×patch interactions of one pair.

    ``matrix`` is (tokens × patches): rows are every text position from SOT to EOT (``tokens``),
    columns the image patches in row-major order of ``grid`` (rows, cols); ``cls`` is, per token, the
    interaction with the image's non-patch positions (the adapter's ``image_prefix``: CLIP's class token),
    empty for a model without any (SigLIP). ``matrix.sum() + cls.sum() == completeness.sum``. Positive =
    the token and patch raise the score together (support), negative = they lower it (contradict).
    """

    caption: str
    tokens: list[str]
    words: list[TokenGroup]
    grid: tuple[int, int]
    matrix: np.ndarray = field(repr=False)
    cls: np.ndarray = field(repr=False)
    completeness: Completeness
    geometry: ImageGeometry
    text_block: int
    image_block: int
    steps: int
    rule: str
    normalize: str
    source: str | None = None

    def span_rows(self, span: str | Sequence[int], occurrence: int | None = None) -> list[int]:
        """Token rows of a span: a phrase (every occurrence, or the ``occurrence``-th) or word indices."""
        spans = [WordSpan(w.word, w.start, w.end) for w in self.words]
        return sorted(
            {t for run in find_span(spans, span, occurrence) for i in run for t in self.words[i].tokens}
        )

    def span_grid(self, span: str | Sequence[int], occurrence: int | None = None) -> np.ndarray:
        """Σ of the span's token rows on the patch grid (rows, cols)."""
        return self.matrix[self.span_rows(span, occurrence)].sum(axis=0).reshape(self.grid)

    def span_heatmap(self, span: str | Sequence[int], occurrence: int | None = None) -> np.ndarray:
        """The span's patch values over the original image's pixels (H, W); NaN outside the model's crop."""
        return grid_to_image(self.span_grid(span, occurrence), self.geometry)

    def box_token_scores(self, box: Box) -> np.ndarray:
        """Per-token interaction with an original-image box (x, y, w, h), patches weighted by overlap."""
        weights = box_patch_weights(box, self.geometry, self.grid)
        return self.matrix @ weights.reshape(-1)

    def box_word_scores(self, box: Box) -> list[tuple[str, float]]:
        """Per-word (sum of its tokens) interaction with an original-image box, in caption order."""
        scores = self.box_token_scores(box)
        return [(w.word, float(scores[w.tokens].sum())) for w in self.words]

    def to_dict(self) -> dict[str, Any]:
        return {
            "caption": self.caption,
            "tokens": self.tokens,
            "words": [w.to_dict() for w in self.words],
            "grid": list(self.grid),
            "matrix": self.matrix.tolist(),
            "cls": self.cls.tolist(),
            "completeness": self.completeness.to_dict(),
            "geometry": asdict(self.geometry),
            "text_block": self.text_block,
            "image_block": self.image_block,
            # the 0.1 names of the same two values, kept for scripts that read them
            "text_layer": self.text_block,
            "image_layer": self.image_block,
            "steps": self.steps,
            "rule": self.rule,
            "normalize": self.normalize,
            "source": self.source,
        }

    def __str__(self) -> str:
        c = self.completeness
        return (
            f"Interactions({self.caption!r}: {len(self.tokens)} tokens × "
            f"{self.grid[0]}×{self.grid[1]} patches, "
            f"Σ={c.sum:.4f} target={c.target:.4f} residual={c.residual:.2e})"
        )
