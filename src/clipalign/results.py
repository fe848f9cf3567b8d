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
    columns the image patches in row-major order of ``grid`` (rows, cols); ``cls`` is the image CLS
    column. ``matrix.sum() + cls.sum() == completeness.sum``. Positive = the token and patch raise the
    score together (support), negative = they lower it (contradict).
    """

    caption: str
    tokens: list[str]
    words: list[TokenGroup]
    grid: tuple[int, int]
    matrix: np.ndarray = field(repr=False)
    cls: np.ndarray = field(repr=False)
    completeness: Completeness
    geometry: ImageGeometry
    text_layer: int
    image_layer: int
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
            "text_layer": self.text_layer,
            "image_layer": self.image_layer,
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
