"""FOIL-COCO (Shekhar et al., 2017): ``foilv1.0_test_2017.json``, a COCO-style caption file.

``{"images": [{"id", "file_name", ...}], "annotations": [{"id", "image_id", "caption", "foil_word",
"target_word", "foil", ...}]}``. ``foil_word == "ORIG"`` marks a true COCO caption; otherwise the caption
is the true one with ``target_word`` replaced by ``foil_word``. A foil shares its ``id`` with the true
caption it came from (the COCO caption id), so item ids add ``orig``/``foil-<word>``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from clipalign.datasets._common import (
    AnnotationFormatError,
    check_limit,
    field,
    find_phrase_spans,
    load_json,
    phrase_in_text,
    take,
    unique_ids,
)
from clipalign.datasets.base import MisalignmentItem

ORIG = "ORIG"


def _coco_references(path: Path) -> dict[int, list[tuple[int, str]]]:
    """COCO ``captions_*.json`` → image id → [(caption id, caption)] in file order."""
    data = load_json(path)
    anns = field(data, "annotations", list, path, "the file")
    refs: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for i, ann in enumerate(anns):
        where = f"annotations[{i}]"
        image_id = field(ann, "image_id", int, path, where)
        refs[image_id].append((field(ann, "id", int, path, where), field(ann, "caption", str, path, where)))
    return refs


def load_foil(
    annotations: str | Path,
    images: str | Path,
    limit: int | None = None,
    *,
    coco_captions: str | Path | None = None,
) -> list[MisalignmentItem]:
    """Load FOIL-COCO: one item per caption, in file order (true captions aligned, foils misaligned).

    A foil's phrase is ``foil_word`` as written in the caption (found case-insensitively, whole words
    first; multi-word foils such as "golf ball" stay whole), or ``foil_word`` itself when not found.
    ``coco_captions`` (e.g. ``captions_val2014.json``) optionally fills ``references`` with the image's
    COCO captions other than the one the item was made from. Ids: ``<id>-orig``, ``<id>-foil-<word>``.
    """
    check_limit(limit)
    path, images = Path(annotations), Path(images)
    data = load_json(path)
    image_entries = field(data, "images", list, path, "the file")
    anns = field(data, "annotations", list, path, "the file")
    file_names: dict[int, str] = {}
    for i, img in enumerate(image_entries):
        where = f"images[{i}]"
        file_names[field(img, "id", int, path, where)] = field(img, "file_name", str, path, where)
    refs = _coco_references(Path(coco_captions)) if coco_captions is not None else None

    def items() -> Iterator[MisalignmentItem]:
        for i, ann in enumerate(anns):
            where = f"annotations[{i}]"
            ann_id = field(ann, "id", (int, str), path, where)
            image_id = field(ann, "image_id", int, path, where)
            caption = field(ann, "caption", str, path, where)
            foil_word = field(ann, "foil_word", str, path, where)
            target_word = field(ann, "target_word", str, path, where, default=None)
            if image_id not in file_names:
                raise AnnotationFormatError(path, f"{where}: image_id {image_id} is not in 'images'")
            is_orig = foil_word == ORIG
            flag = field(ann, "foil", bool, path, where, default=None)
            if flag is not None and flag == is_orig:
                raise AnnotationFormatError(
                    path, f"{where}: 'foil' is {flag} but 'foil_word' is {foil_word!r}"
                )
            meta = {
                "annotation_id": ann_id,
                "image_id": image_id,
                "foil_word": foil_word,
                "clip4dm_target": foil_word.strip().lower(),
            }
            if target_word is not None:
                meta["target_word"] = target_word
            phrases: tuple[str, ...] = ()
            if is_orig:
                item_id = f"{ann_id}-orig"
            else:
                phrase, _ = phrase_in_text(caption, foil_word)
                meta["phrase_spans"] = find_phrase_spans(caption, foil_word)
                item_id, phrases = f"{ann_id}-foil-{'_'.join(foil_word.split())}", (phrase,)
            references: tuple[str, ...] = ()
            if refs is not None:
                references = tuple(c for cid, c in refs.get(image_id, []) if cid != ann_id)
            yield MisalignmentItem(
                id=item_id,
                image=images / file_names[image_id],
                caption=caption,
                aligned=is_orig,
                misaligned_phrases=phrases,
                references=references,
                meta=meta,
            )

    return unique_ids(take(items(), limit))
