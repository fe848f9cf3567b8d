"""Pointing game on COCO: ``captions_*.json`` phrases grounded by ``instances_*.json`` boxes.

A caption mentions a category when the category's name, or its plural with ``s``/``es`` on the last
word ("traffic lights", "buses"), appears as whole words, case-insensitively, with any whitespace
between its words; ``synonyms`` adds other names per category ("person": ["man", "people"]). Only
categories with an instance in the caption's image count; overlapping mentions go to the earliest,
then longest ("hot dog" over "dog").
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from clipalign.datasets._common import AnnotationFormatError, check_limit, field, load_json, take, unique_ids
from clipalign.datasets.base import Box, PointingItem


@functools.lru_cache(maxsize=4096)
def _name_pattern(name: str) -> re.Pattern[str]:
    words = name.split()
    body = r"\s+".join(re.escape(w) for w in words) + "(?:e?s)?"
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _box(value: Any, path: Path, where: str) -> Box:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or value[2] < 0
        or value[3] < 0
    ):
        raise AnnotationFormatError(
            path, f"{where}: 'bbox' must be [x, y, w, h] with w, h >= 0, got {value!r:.60}"
        )
    x, y, w, h = (float(v) for v in value)
    return (x, y, w, h)


def _default_instances(captions: Path) -> Path:
    if "captions" not in captions.name:
        raise ValueError(f"{captions}: pass instances=... (cannot derive the instances file from this name)")
    return captions.with_name(captions.name.replace("captions", "instances", 1))


def find_mentions(caption: str, names: Mapping[int, Sequence[str]]) -> list[tuple[int, int, int]]:
    """``(category id, start, end)`` of the first non-overlapping mention of each category, by position."""
    matches: list[tuple[int, int, int]] = []
    for cat_id, cat_names in names.items():
        for name in cat_names:
            if name.split():
                matches.extend(
                    (m.start(), -(m.end() - m.start()), cat_id) for m in _name_pattern(name).finditer(caption)
                )
    taken: list[tuple[int, int]] = []
    found: dict[int, tuple[int, int]] = {}
    for start, neg_len, cat_id in sorted(matches):
        end = start - neg_len
        if cat_id in found or any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        found[cat_id] = (start, end)
    return sorted(((c, s, e) for c, (s, e) in found.items()), key=lambda t: (t[1], t[0]))


def load_pointing_coco(
    annotations: str | Path,
    images: str | Path,
    limit: int | None = None,
    *,
    instances: str | Path | None = None,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> list[PointingItem]:
    """Load the COCO pointing game: one item per (caption, mentioned category), captions in file order.

    ``annotations`` is ``captions_<split>.json``; ``instances`` is ``instances_<split>.json`` (default: the
    same name with ``instances`` for ``captions``, beside it). ``boxes`` are all of the category's
    instance boxes in the image (crowd boxes included; ``meta["iscrowd"]`` tells them apart), COCO
    ``[x, y, w, h]``. Ids: ``<caption id>-<category id>``.
    """
    check_limit(limit)
    cap_path, images = Path(annotations), Path(images)
    inst_path = Path(instances) if instances is not None else _default_instances(cap_path)
    captions = load_json(cap_path)
    inst = load_json(inst_path)

    file_names: dict[int, str] = {}
    for path, data in ((inst_path, inst), (cap_path, captions)):
        for i, img in enumerate(field(data, "images", list, path, "the file", default=[])):
            where = f"images[{i}]"
            file_names[field(img, "id", int, path, where)] = field(img, "file_name", str, path, where)

    categories: dict[int, str] = {}
    for i, cat in enumerate(field(inst, "categories", list, inst_path, "the file")):
        where = f"categories[{i}]"
        categories[field(cat, "id", int, inst_path, where)] = field(cat, "name", str, inst_path, where)
    extra = {k.lower(): list(v) for k, v in (synonyms or {}).items()}
    names = {cid: [name, *extra.get(name.lower(), [])] for cid, name in categories.items()}

    boxes: dict[tuple[int, int], list[tuple[Box, bool, int]]] = defaultdict(list)
    for i, ann in enumerate(field(inst, "annotations", list, inst_path, "the file")):
        where = f"annotations[{i}]"
        cat_id = field(ann, "category_id", int, inst_path, where)
        if cat_id not in categories:
            raise AnnotationFormatError(inst_path, f"{where}: category_id {cat_id} is not in 'categories'")
        box = _box(field(ann, "bbox", list, inst_path, where), inst_path, where)
        crowd = bool(field(ann, "iscrowd", (int, bool), inst_path, where, default=0))
        ann_id = field(ann, "id", int, inst_path, where, default=-1)
        boxes[(field(ann, "image_id", int, inst_path, where), cat_id)].append((box, crowd, ann_id))
    present: dict[int, list[int]] = defaultdict(list)
    for image_id, cat_id in boxes:
        present[image_id].append(cat_id)

    def items() -> Iterator[PointingItem]:
        for i, ann in enumerate(field(captions, "annotations", list, cap_path, "the file")):
            where = f"annotations[{i}]"
            caption = field(ann, "caption", str, cap_path, where)
            image_id = field(ann, "image_id", int, cap_path, where)
            caption_id = field(ann, "id", int, cap_path, where)
            cats = present.get(image_id)
            if not cats:
                continue
            if image_id not in file_names:
                raise AnnotationFormatError(cap_path, f"{where}: image_id {image_id} is in no 'images' list")
            for cat_id, start, end in find_mentions(caption, {c: names[c] for c in sorted(cats)}):
                grounded = boxes[(image_id, cat_id)]
                yield PointingItem(
                    id=f"{caption_id}-{cat_id}",
                    image=images / file_names[image_id],
                    caption=caption,
                    phrase=caption[start:end],
                    phrase_start=start,
                    phrase_end=end,
                    boxes=tuple(b for b, _, _ in grounded),
                    meta={
                        "caption_id": caption_id,
                        "image_id": image_id,
                        "category_id": cat_id,
                        "category": categories[cat_id],
                        "iscrowd": tuple(c for _, c, _ in grounded),
                        "annotation_ids": tuple(a for _, _, a in grounded),
                    },
                )

    return unique_ids(take(items(), limit))
