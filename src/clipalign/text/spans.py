"""Find a phrase of a caption as runs of word indices (for heatmaps of a caption span)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from clipalign.text.alignment import WordSpan, split_words


def _key(word: str) -> str:
    """Case- and punctuation-insensitive form of a word: "Dog," and "dog" match."""
    kept = "".join(ch for ch in word if not unicodedata.category(ch).startswith("P"))
    return (kept or word).casefold()


def find_span(
    words: Sequence[WordSpan], span: str | Sequence[int], occurrence: int | None = None
) -> list[list[int]]:
    """Word-index runs of ``span`` in ``words``: every occurrence, or only the ``occurrence``-th (1-based).

    ``span`` is a phrase ("black dog", matched word by word ignoring case and attached punctuation) or
    explicit word indices. Raises ValueError when it is not in the caption.
    """
    if not isinstance(span, str):
        indices = [int(i) for i in span]
        if not indices or any(not 0 <= i < len(words) for i in indices):
            raise ValueError(f"word indices {indices} out of range: the caption has {len(words)} words")
        return [indices]
    wanted = [_key(w.text) for w in split_words(span)]
    if not wanted:
        raise ValueError("the span is empty")
    keys = [_key(w.text) for w in words]
    n = len(wanted)
    runs = [list(range(i, i + n)) for i in range(len(keys) - n + 1) if keys[i : i + n] == wanted]
    if not runs:
        raise ValueError(f"span {span!r} is not in the caption (words: {' '.join(w.text for w in words)})")
    if occurrence is None:
        return runs
    if not 1 <= occurrence <= len(runs):
        raise ValueError(f"span {span!r} occurs {len(runs)} time(s); occurrence {occurrence} does not exist")
    return [runs[occurrence - 1]]
