"""Pointing game on COCO: ``captions_*.json`` phrases grounded by ``instances_*.json`` boxes.

A caption mentions a category when the category's name or one of its synonyms (:data:`COCO_SYNONYMS`:
"man", "women", "kids" → person; "bike" → bicycle...), or its plural with ``s``/``es`` on the last
word ("traffic lights", "buses"), appears as whole words, case-insensitively, with any whitespace
between its words. Only categories with an instance in the caption's image count; overlapping mentions
go to the earliest, then longest ("hot dog" over "dog"). The exCLIP paper evaluates on the val split
of Karpathy's ``dataset_coco.json`` (val2014 images): pass it as ``karpathy=`` to keep only those images.
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

COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "man",
        "men",
        "woman",
        "women",
        "boy",
        "girl",
        "child",
        "children",
        "kid",
        "people",
        "guy",
        "lady",
        "ladies",
        "baby",
        "babies",
        "player",
        "skier",
        "surfer",
        "skateboarder",
        "snowboarder",
    ),
    "bicycle": ("bike",),
    "car": ("automobile", "taxi", "sedan"),
    "motorcycle": ("motorbike", "motor bike", "motor cycle", "scooter"),
    "airplane": ("plane", "aeroplane", "airliner", "aircraft", "jet"),
    "train": ("locomotive",),
    "boat": ("ship", "sailboat", "canoe", "kayak", "yacht"),
    "traffic light": ("stoplight", "stop light", "traffic signal"),
    "fire hydrant": ("hydrant",),
    "parking meter": ("meter",),
    "bird": ("pigeon", "seagull", "duck"),
    "cat": ("kitten", "kitty"),
    "dog": ("puppy", "puppies", "pup"),
    "horse": ("pony", "ponies"),
    "sheep": ("lamb",),
    "cow": ("cattle", "bull", "calf", "calves"),
    "backpack": ("back pack",),
    "umbrella": ("parasol",),
    "handbag": ("purse", "hand bag"),
    "tie": ("necktie",),
    "suitcase": ("luggage", "suit case"),
    "skis": ("ski",),
    "snowboard": ("snow board",),
    "sports ball": ("ball", "football"),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "skateboard": ("skate board",),
    "surfboard": ("surf board",),
    "tennis racket": ("racket", "racquet", "tennis racquet"),
    "wine glass": ("glass",),
    "cup": ("mug",),
    "knife": ("knives",),
    "hot dog": ("hotdog",),
    "donut": ("doughnut",),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant"),
    "dining table": ("table",),
    "tv": ("television",),
    "remote": ("remote control", "controller"),
    "cell phone": ("phone", "cellphone", "mobile phone", "smartphone"),
    "oven": ("stove",),
    "refrigerator": ("fridge",),
    "teddy bear": ("teddy", "stuffed animal"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("tooth brush",),
}
"""COCO category name → other words captions use for it (regular plurals need no entry: "s"/"es" on
the last word always match). The exCLIP code has no such table (its COCO loader only attaches category
names to the instance boxes); this one is ours, in the spirit of the word lists captioning work uses."""

KARPATHY_SPLITS = ("train", "restval", "val", "test")
"""The ``split`` values of Karpathy's ``dataset_coco.json``."""


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


def karpathy_image_ids(path: Path, split: str) -> set[int]:
    """COCO image ids (``cocoid``) of one split of Karpathy's ``dataset_coco.json``."""
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"Karpathy split must be one of {', '.join(KARPATHY_SPLITS)}, got {split!r}")
    data = load_json(path)
    ids = set()
    for i, img in enumerate(field(data, "images", list, path, "the file")):
        where = f"images[{i}]"
        if field(img, "split", str, path, where) == split:
            ids.add(field(img, "cocoid", int, path, where))
    if not ids:
        raise AnnotationFormatError(path, f"no image has split {split!r}")
    return ids


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
    karpathy: str | Path | None = None,
    split: str | None = None,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> list[PointingItem]:
    """Load the COCO pointing game: one item per (caption, mentioned category), captions in file order.

    ``annotations`` is ``captions_<set>.json``; ``instances`` is ``instances_<set>.json`` (default: the
    same name with ``instances`` for ``captions``, beside it). ``karpathy`` is Karpathy's
    ``dataset_coco.json``: only the images of its ``split`` (default ``val``, the paper's) are kept, and
    each of them must have captions in ``annotations`` (val and test come from ``captions_val2014.json``).
    Without it every captioned image counts. ``synonyms`` replaces :data:`COCO_SYNONYMS` (``{}``: category
    names only). ``boxes`` are all of the category's instance boxes in the image (crowd boxes included;
    ``meta["iscrowd"]`` tells them apart), COCO ``[x, y, w, h]``. Ids: ``<caption id>-<category id>``.
    """
    check_limit(limit)
    if karpathy is None and split is not None:
        raise ValueError("a COCO split needs Karpathy's dataset_coco.json (karpathy=, --karpathy FILE)")
    split = split or "val"
    cap_path, images = Path(annotations), Path(images)
    inst_path = Path(instances) if instances is not None else _default_instances(cap_path)
    captions = load_json(cap_path)
    inst = load_json(inst_path)
    kept = None if karpathy is None else karpathy_image_ids(Path(karpathy), split)

    file_names: dict[int, str] = {}
    for path, data in ((inst_path, inst), (cap_path, captions)):
        for i, img in enumerate(field(data, "images", list, path, "the file", default=[])):
            where = f"images[{i}]"
            file_names[field(img, "id", int, path, where)] = field(img, "file_name", str, path, where)

    categories: dict[int, str] = {}
    for i, cat in enumerate(field(inst, "categories", list, inst_path, "the file")):
        where = f"categories[{i}]"
        categories[field(cat, "id", int, inst_path, where)] = field(cat, "name", str, inst_path, where)
    table = COCO_SYNONYMS if synonyms is None else synonyms
    extra = {k.lower(): list(v) for k, v in table.items()}
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

    caption_anns = field(captions, "annotations", list, cap_path, "the file")
    if kept is not None:
        captioned = {
            field(a, "image_id", int, cap_path, f"annotations[{i}]") for i, a in enumerate(caption_anns)
        }
        if missing := kept - captioned:
            raise AnnotationFormatError(
                cap_path,
                f"{len(missing)} of the {len(kept)} images of Karpathy's {split!r} split have no caption "
                f"here (e.g. image {min(missing)}); its val and test images are in captions_val2014.json",
            )

    def items() -> Iterator[PointingItem]:
        for i, ann in enumerate(caption_anns):
            where = f"annotations[{i}]"
            image_id = field(ann, "image_id", int, cap_path, where)
            if kept is not None and image_id not in kept:
                continue
            caption = field(ann, "caption", str, cap_path, where)
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
