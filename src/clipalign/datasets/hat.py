"""HAT (ALOHa, Petryk et al., 2024): ``hat-trainval.json``, COCO captions with word hallucination labels.

A JSON list of ``{"sample_id", "caption", "grounding": [[word, is_hallucinated], ...],
"contains_hallucination", "image_path", "references", "session_id", "is_gold", ...}``; the grounding
words are the whitespace-split words of the caption (true for all 400 entries of the released file).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clipalign.datasets._common import (
    AnnotationFormatError,
    check_limit,
    field,
    load_json_list,
    phrases_from_spans,
    str_list,
    take,
    unique_ids,
    word_spans,
)
from clipalign.datasets.base import MisalignmentItem

_KNOWN = {"sample_id", "caption", "grounding", "contains_hallucination", "image_path", "references"}


def _grounding(value: list[Any], path: Path, where: str) -> list[tuple[str, bool]]:
    out = []
    for j, pair in enumerate(value):
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], bool)
        ):
            raise AnnotationFormatError(
                path, f"{where}: grounding[{j}] must be [word, is_hallucinated], got {pair!r:.60}"
            )
        out.append((pair[0], pair[1]))
    return out


def align_word_labels(words: list[str], grounding: list[tuple[str, bool]]) -> tuple[list[bool], bool]:
    """Labels for ``words`` (the caption's whitespace words) from ``grounding``, and whether they differed.

    Grounding entries are split on whitespace (each piece keeps its label); if the pieces differ from
    ``words``, they are aligned with :class:`difflib.SequenceMatcher`: matched words take their label, a
    replaced block is hallucinated if any grounding word in it is, inserted caption words are not.
    """
    pieces = [(piece, label) for word, label in grounding for piece in word.split()]
    piece_words = [p for p, _ in pieces]
    if piece_words == words:
        return [label for _, label in pieces], False
    labels = [False] * len(words)
    matcher = difflib.SequenceMatcher(a=words, b=piece_words, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            for k in range(a1 - a0):
                labels[a0 + k] = pieces[b0 + k][1]
        elif op == "replace":
            flag = any(label for _, label in pieces[b0:b1])
            for k in range(a0, a1):
                labels[k] = flag
    return labels, True


def load_hat(annotations: str | Path, images: str | Path, limit: int | None = None) -> list[MisalignmentItem]:
    """Load HAT: one item per entry in file order; id = ``sample_id``, aligned = not contains_hallucination.

    ``word_labels`` come from ``grounding`` (aligned on whitespace words when they differ from the
    caption's, then ``meta["grounding_mismatch"]`` is True); ``misaligned_phrases`` are the maximal runs
    of hallucinated words as written in the caption ("pointing in different directions.");
    ``meta["clip4dm_target"]`` is the CLIP4DM authors' ground truth: every hallucinated grounding word
    without "." and ",", joined by spaces, lower-cased (empty for a correct caption).
    """
    check_limit(limit)
    path, images = Path(annotations), Path(images)
    data = load_json_list(path)

    def items() -> Iterator[MisalignmentItem]:
        for i, entry in enumerate(data):
            where = f"entry {i}"
            sample_id = field(entry, "sample_id", str, path, where)
            where = f"entry {i} (sample_id {sample_id!r})"
            caption = field(entry, "caption", str, path, where)
            grounding = _grounding(field(entry, "grounding", list, path, where), path, where)
            hallucinated = field(entry, "contains_hallucination", bool, path, where)
            image_path = field(entry, "image_path", str, path, where)
            references = str_list(field(entry, "references", list, path, where, default=[]), path, where)
            spans = word_spans(caption)
            labels, mismatch = align_word_labels([caption[a:b] for a, b in spans], grounding)
            any_word = any(label for _, label in grounding)
            if any_word != hallucinated:
                raise AnnotationFormatError(
                    path,
                    f"{where}: contains_hallucination is {hallucinated} but "
                    f"{'some' if any_word else 'no'} grounding word is hallucinated",
                )
            meta = {k: v for k, v in entry.items() if k not in _KNOWN}
            meta["grounding_mismatch"] = mismatch
            hallucinated = [w.replace(".", "").replace(",", "") for w, label in grounding if label]
            meta["clip4dm_target"] = " ".join(hallucinated).strip().lower()
            yield MisalignmentItem(
                id=sample_id,
                image=images / image_path,
                caption=caption,
                aligned=not hallucinated,
                misaligned_phrases=phrases_from_spans(caption, spans, labels),
                word_labels=tuple(labels),
                references=references,
                meta=meta,
            )

    return unique_ids(take(items(), limit))
