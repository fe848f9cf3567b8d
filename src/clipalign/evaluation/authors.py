"""The evaluation protocol of the CLIP4DM authors' ``main.py`` (naver-ai/clip4dm), on our word scores.

Their code numbers the caption's words after dropping punctuation, flags the words scoring below ε
(threshold mode, their default), lower-cases everything and then, per benchmark:

- ``lowest_word`` (FOIL, nocaps-FOIL): the lowest flagged word must equal the ground-truth foil string
  (so a multi-word foil never counts); F-CLIPScore = (1 − cos⁺)·Σ flagged scores; AP with the original
  captions positive, ranked by the score. With no flagged word their run crashes; we count a miss.
- ``lowest_span`` (HAT): flagged words with consecutive numbers are merged into spans, the span with
  the lowest mean score is the prediction; a hit when its text is a substring of the hallucinated
  words joined by spaces; F-CLIPScore = (1 − cos⁺)·mean(lowest span); AP with hallucinated captions
  positive, ranked by −score.
- ``spans`` (SeeTRUE-Feedback): the merged spans joined by ", " are the NLI hypothesis.
- ``tokens`` (Rich-HF): flagged "index_word" strings matched as a multiset against the misaligned
  prompt tokens' "index_token" strings (TP/FP/FN); AP as for HAT, with F-CLIPScore from the sum.

Each item's ground truth is ``item.meta["clip4dm_target"]``: the string their code compares with
(``"orig"`` or empty for a correct caption; Rich-HF's "index_token" strings), set by our loaders
exactly as their datasets build it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from clipalign.datasets.base import MisalignmentItem
from clipalign.evaluation.measures import PositiveClass

Protocol = Literal["lowest_word", "lowest_span", "spans", "tokens"]

AUTHORS_POSITIVE: dict[str, PositiveClass] = {
    "lowest_word": "aligned",
    "spans": "aligned",
    "lowest_span": "misaligned",
    "tokens": "misaligned",
}
"""Their AP's positive class per protocol: ``foil_is_positive`` stays True (originals positive, ranked
by the score) except on HAT and Rich-HF (misaligned positive, ranked by the negated score)."""

PUNCTUATION = '.,!"?;:" '
"""A word whose text is a substring of this string is dropped (and not numbered) by their code."""

ORIG = "orig"
"""Their label of a correct caption (an empty ground truth becomes it too)."""


@dataclass(frozen=True)
class Unit:
    """A word as their code sees it: its number among the kept words, lower-cased text, score."""

    index: int
    text: str
    score: float


@dataclass(frozen=True)
class AuthorsItem:
    """One item under their protocol: the prediction they compare, whether it hits, their F-CLIPScore term.

    ``negative`` is what multiplies (1 − cos⁺) in their F-CLIPScore; ``empty`` is True when no word is
    below ε; ``counts`` are (TP, FP, FN) for the ``tokens`` protocol.
    """

    is_foil: bool
    prediction: str
    hit: bool
    negative: float
    empty: bool
    counts: tuple[int, int, int] = (0, 0, 0)


def _their_text(word: str) -> str:
    """A word as their splitter leaves it ("." and "," are words of their own there), lower-cased."""
    return word.replace(".", "").replace(",", "").strip().lower()


def units(words: Sequence[str], scores: Sequence[float]) -> list[Unit]:
    """The kept words, numbered in order: "." and "," removed from the text (their word splitter makes
    them words of their own), then words that are blank or a substring of :data:`PUNCTUATION` dropped."""
    out: list[Unit] = []
    for word, score in zip(words, scores, strict=True):
        text = _their_text(word)
        if text and text not in PUNCTUATION:
            out.append(Unit(len(out), text, float(score)))
    return out


def flagged(kept: Sequence[Unit], epsilon: float) -> list[Unit]:
    """Words below ε, lowest score first (ties keep caption order)."""
    return sorted((u for u in kept if u.score < epsilon), key=lambda u: u.score)


def merge_spans(below: Sequence[Unit]) -> list[tuple[str, float]]:
    """Flagged words with consecutive numbers merged: (their words joined by spaces, mean score), in
    caption order."""
    spans: list[list[Unit]] = []
    for unit in sorted(below, key=lambda u: u.index):
        if spans and spans[-1][-1].index == unit.index - 1:
            spans[-1].append(unit)
        else:
            spans.append([unit])
    return [(" ".join(u.text for u in run), sum(u.score for u in run) / len(run)) for run in spans]


def target_of(item: MisalignmentItem) -> str:
    """The ground-truth string their code compares with (lower-cased; a correct caption's is "orig" or "")."""
    target = item.meta.get("clip4dm_target")
    if isinstance(target, str):
        return target
    return ORIG if item.aligned else " ".join(item.misaligned_phrases).strip().lower()


def is_foil(target: str) -> bool:
    """Their positive class: a ground truth that is neither empty nor "orig"."""
    return (target.strip() or ORIG) != ORIG


def token_counts(target: str, predicted: Sequence[Unit]) -> tuple[int, int, int]:
    """Rich-HF (TP, FP, FN): the target's "index_token" strings of misaligned prompt tokens against the
    flagged words' "index_word" strings, each prediction used at most once."""
    remaining = [f"{u.index}_{u.text}" for u in predicted]
    tp = fn = 0
    for wanted in target.split():
        if wanted in remaining:
            tp += 1
            remaining.remove(wanted)
        else:
            fn += 1
    return tp, len(remaining), fn


def authors_item(
    item: MisalignmentItem, record: dict[str, Any], epsilon: float, protocol: Protocol
) -> AuthorsItem:
    """``item`` scored by their protocol from its record's words and word scores at ``epsilon``."""
    target = target_of(item)
    kept = units(record["words"], record["word_scores"])
    below = flagged(kept, epsilon)
    total = sum(u.score for u in below)
    foil = is_foil(target)
    if protocol == "lowest_word":
        # their `negative_word.split()[0].split("_")[-1]`: the word after its last underscore
        prediction = below[0].text.split("_")[-1] if below else ""
        return AuthorsItem(foil, prediction, bool(below) and prediction == target, total, not below)
    if protocol == "lowest_span":
        spans = merge_spans(below)
        if not spans:
            return AuthorsItem(foil, "", False, 0.0, True)
        text, mean = min(spans, key=lambda s: s[1])
        return AuthorsItem(foil, text, text in target, mean, False)
    if protocol == "spans":
        hypothesis = ", ".join(text for text, _ in merge_spans(below))
        return AuthorsItem(foil, hypothesis, False, total, not below)
    if protocol == "tokens":
        counts = token_counts(target, below)
        return AuthorsItem(foil, " ".join(u.text for u in below), counts[0] > 0, total, not below, counts)
    raise ValueError(f"unknown protocol {protocol!r}")


def lowest_word_most_negative(record: dict[str, Any]) -> tuple[str, float]:
    """Their ``sorted_by="most_negative"`` variant: the lowest of all words (punctuation included) and
    its score; ("", 0.0) for a caption without words."""
    every = [
        Unit(i, _their_text(w), float(s))
        for i, (w, s) in enumerate(zip(record["words"], record["word_scores"], strict=True))
    ]
    if not every:
        return "", 0.0
    lowest = min(every, key=lambda u: u.score)
    return lowest.text.split("_")[-1], lowest.score
