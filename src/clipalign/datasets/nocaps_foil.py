"""nocaps-FOIL (ALOHa, Petryk et al., 2024): ``nocaps-val-foil.json``.

A JSON list of ``{"image_path", "references", "baseline", "foil", "replacement": [original, foil],
"domain"}``: ``foil`` is ``baseline`` with ``original`` replaced by ``foil`` (every occurrence).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from clipalign.datasets._common import (
    AnnotationFormatError,
    check_limit,
    field,
    find_phrase_spans,
    load_json_list,
    phrase_in_text,
    str_list,
    take,
    unique_ids,
)
from clipalign.datasets.base import MisalignmentItem


def load_nocaps_foil(
    annotations: str | Path, images: str | Path, limit: int | None = None
) -> list[MisalignmentItem]:
    """Load nocaps-FOIL: two items per entry, the baseline caption (aligned) then the foil (misaligned).

    The foil's phrase is ``replacement[1]`` as written in the foil caption (case-insensitive, whole
    words first; multi-word replacements stay whole). Ids: ``<image stem>-baseline`` / ``-foil``.
    ``meta``: ``domain``, ``replacement``, ``index`` (entry), ``replacement_spans`` (every occurrence of
    this caption's side of the replacement), ``clip4dm_target`` ("orig" for the baseline, the foil
    word lower-cased for the foil).
    """
    check_limit(limit)
    path, images = Path(annotations), Path(images)
    data = load_json_list(path)

    def items() -> Iterator[MisalignmentItem]:
        for i, entry in enumerate(data):
            where = f"entry {i}"
            image_path = field(entry, "image_path", str, path, where)
            baseline = field(entry, "baseline", str, path, where)
            foil = field(entry, "foil", str, path, where)
            replacement = field(entry, "replacement", list, path, where)
            if len(replacement) != 2 or not all(isinstance(r, str) and r.strip() for r in replacement):
                raise AnnotationFormatError(
                    path, f"{where}: 'replacement' must be [original, foil] strings, got {replacement!r}"
                )
            references = str_list(field(entry, "references", list, path, where, default=[]), path, where)
            domain = field(entry, "domain", str, path, where, default=None)
            original, replaced = replacement
            stem = Path(image_path).stem
            common = {"index": i, "domain": domain, "replacement": (original, replaced)}
            yield MisalignmentItem(
                id=f"{stem}-baseline",
                image=images / image_path,
                caption=baseline,
                aligned=True,
                references=references,
                meta={
                    **common,
                    "replacement_spans": find_phrase_spans(baseline, original),
                    "clip4dm_target": "orig",
                },
            )
            phrase, _ = phrase_in_text(foil, replaced)
            yield MisalignmentItem(
                id=f"{stem}-foil",
                image=images / image_path,
                caption=foil,
                aligned=False,
                misaligned_phrases=(phrase,),
                references=references,
                meta={
                    **common,
                    "replacement_spans": find_phrase_spans(foil, replaced),
                    # the authors' code treats a replacement that changes nothing as an original
                    "clip4dm_target": "orig" if replaced == original else replaced.strip().lower(),
                },
            )

    return unique_ids(take(items(), limit))
