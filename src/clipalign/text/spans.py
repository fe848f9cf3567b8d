"""Find a phrase of a caption as runs of word indices (for heatmaps of a caption span)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from clipalign.text.alignment import WordSpan, is_punctuation, split_words


def _key(word: str) -> str:
    """Case- and punctuation-insensitive form of a word: "Dog," and "dog" match."""
    kept = "".join(ch for ch in word if not unicodedata.category(ch).startswith("P"))
    return (kept or word).casefold()


def _phrase_runs(words: Sequence[WordSpan], phrase: Sequence[WordSpan]) -> list[list[int]]:
    """Every run of ``words`` whose keys equal the phrase's, punctuation words skipped on both sides
    (unless the phrase is punctuation only)."""
    content = [w for w in phrase if not is_punctuation(w.text)]
    skip = bool(content)
    wanted = [_key(w.text) for w in (content if skip else phrase)]
    candidates = [i for i, w in enumerate(words) if not (skip and is_punctuation(w.text))]
    keys = [_key(words[i].text) for i in candidates]
    n = len(wanted)
    return [candidates[j : j + n] for j in range(len(keys) - n + 1) if keys[j : j + n] == wanted]


def find_span(
    words: Sequence[WordSpan], span: str | Sequence[int], occurrence: int | None = None
) -> list[list[int]]:
    """Word-index runs of ``span`` in ``words``: every occurrence, or only the ``occurrence``-th (1-based).

    ``span`` is a phrase ("black dog", matched word by word ignoring case and punctuation) or explicit
    word indices. Raises ValueError when it is not in the caption. Punctuation words ("." ",") of the
    phrase and of the caption are skipped, and left out of the runs, unless the phrase is punctuation
    only: "red skirt." gives the same run in either word unit, as the words a span of flagged words
    (never punctuation) would hold. The phrase is split into the authors' word unit, or into
    whitespace chunks when that finds nothing ("dog,cat" against a whitespace word "dog,cat").
    """
    if not isinstance(span, str):
        indices = [int(i) for i in span]
        if not indices or any(not 0 <= i < len(words) for i in indices):
            raise ValueError(f"word indices {indices} out of range: the caption has {len(words)} words")
        return [indices]
    if not span.split():
        raise ValueError("the span is empty")
    runs = _phrase_runs(words, split_words(span, "clip4dm")) or _phrase_runs(
        words, split_words(span, "whitespace")
    )
    if not runs:
        raise ValueError(f"span {span!r} is not in the caption (words: {' '.join(w.text for w in words)})")
    if occurrence is None:
        return runs
    if not 1 <= occurrence <= len(runs):
        raise ValueError(f"span {span!r} occurs {len(runs)} time(s); occurrence {occurrence} does not exist")
    return [runs[occurrence - 1]]
