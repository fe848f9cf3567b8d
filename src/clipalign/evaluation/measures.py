"""Benchmark metrics of the CLIP4DM and second-order interaction papers, on per-item records.

Each function states its convention; the CLIP4DM authors' own protocol (exact-string LA, HAT's
substring rule on merged spans, their AP orientation) is restated in :mod:`clipalign.evaluation.authors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score

from clipalign.images.geometry import Box
from clipalign.text.alignment import split_words
from clipalign.text.spans import find_span

PositiveClass = Literal["aligned", "misaligned"]


def phrase_word_runs(caption: str, phrases: Sequence[str]) -> list[list[int]]:
    """Whitespace-word runs of ground-truth phrases in a caption (every occurrence; unfound phrases skip)."""
    words = split_words(caption, "whitespace")
    runs: list[list[int]] = []
    for phrase in phrases:
        try:
            runs.extend(find_span(words, phrase))
        except ValueError:
            continue
    return runs


def localisation_hit(predicted_words: Sequence[int], caption: str, phrases: Sequence[str]) -> bool:
    """True when the predicted word(s) all fall inside one occurrence of a ground-truth phrase.

    A single lowest word inside "golf ball" counts, so multi-word foils can be found (the authors'
    exact string comparison of one word with "golf ball" never can).
    """
    if not predicted_words:
        return False
    wanted = set(predicted_words)
    return any(wanted <= set(run) for run in phrase_word_runs(caption, phrases))


def strict_hat_hit(predicted_words: Sequence[int], caption: str, phrases: Sequence[str]) -> bool:
    """The predicted span is exactly one ground-truth hallucinated run (same words, no more, no less)."""
    return bool(predicted_words) and list(predicted_words) in phrase_word_runs(caption, phrases)


def average_precision(aligned: Sequence[bool], scores: Sequence[float], positive: PositiveClass) -> float:
    """AP (scikit-learn) of ``scores`` (higher = better aligned) for detecting the ``positive`` class.

    ``aligned`` positive (FOIL, nocaps-FOIL in the CLIP4DM paper) ranks by the score as is;
    ``misaligned`` positive (HAT, Rich-HF) ranks by its negation.
    """
    y = np.asarray(aligned, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if positive == "aligned":
        return float(average_precision_score(y, s))
    if positive == "misaligned":
        return float(average_precision_score(~y, -s))
    raise ValueError(f"positive must be 'aligned' or 'misaligned', got {positive!r}")


@dataclass(frozen=True)
class PRF:
    """Micro precision, recall and F1 with their counts."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


def micro_prf(truth: Sequence[Sequence[bool]], predicted: Sequence[Sequence[bool]]) -> PRF:
    """Micro P/R/F1 over word positions: each item gives per-word truth and prediction flags."""
    tp = fp = fn = 0
    for t, p in zip(truth, predicted, strict=True):
        if len(t) != len(p):
            raise ValueError(f"truth has {len(t)} word labels but prediction {len(p)}")
        ta, pa = np.asarray(t, dtype=bool), np.asarray(p, dtype=bool)
        tp += int((ta & pa).sum())
        fp += int((~ta & pa).sum())
        fn += int((ta & ~pa).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision, recall, f1, tp, fp, fn)


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (scipy)."""
    return {"pearson": float(pearsonr(x, y).statistic), "spearman": float(spearmanr(x, y).statistic)}


def pointing_game(heatmap: np.ndarray, boxes: Sequence[Box]) -> tuple[bool, float]:
    """(hit, energy) of a heatmap (H, W) in original pixels, NaN where the model saw nothing.

    hit: the maximum lies inside a ground-truth box. A tie (one patch spread over many pixels, or
    several patches) is broken at the middle: the median row among the tied pixels, then the median
    column of the tied pixels in that row, so a patch counts by its centre. A box (x, y, w, h) covers
    the pixels it overlaps, columns ⌊x⌋ … ⌈x + w⌉ − 1 and rows likewise. energy: positive mass inside
    the boxes over all positive mass (0 when there is none).
    """
    inside = np.zeros(heatmap.shape, dtype=bool)
    height, width = heatmap.shape
    for x, y, w, h in boxes:
        x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
        inside[y0:y1, x0:x1] = True
    values = np.nan_to_num(heatmap, nan=-np.inf)
    tied_rows, tied_cols = np.nonzero(values == values.max())
    rows = np.unique(tied_rows)
    row = rows[len(rows) // 2]
    cols = tied_cols[tied_rows == row]
    col = cols[len(cols) // 2]
    hit = bool(inside[row, col])
    positive = np.clip(np.nan_to_num(heatmap, nan=0.0), 0, None)
    total = positive.sum()
    energy = float(positive[inside].sum() / total) if total > 0 else 0.0
    return hit, energy
