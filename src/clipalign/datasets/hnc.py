"""Pointing game on HNC (Hard Negative Captions, Dönmez et al., CoNLL 2023), read in its original format.

An HNC split is one JSON file (``hnc_clean_strict_test.json``...): GQA image id → ``{"captions": {caption
id: caption}}`` (exCLIP also accepts the caption mapping directly under the image id), each caption
``{"caption", "label" (1 correct, 0 hard negative), "type", "textual_label", "bboxes", "cpt_p_id", ...}``
with ``bboxes`` mapping each GQA object id the caption is about to ``{"bbox": {"x", "y", "w", "h"},
"name"}``. Images are GQA's ``<image id>.jpg`` (exCLIP appends ``.jpg`` unless the id holds ``jpg``).

The pointing game grounds correct captions only: per caption with ``label`` 1, each distinct object
name of its ``bboxes`` found in the caption (as a whole word, case-insensitively, a plural ``s``/``es``
allowed, the first mention; names overlapping an earlier, longer one are dropped, as for COCO) is a
phrase, and every box of an object of that name is its ground truth. Names the caption never writes
(a template's paraphrase) give no item.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from clipalign.datasets._common import AnnotationFormatError, check_limit, field, load_json, take, unique_ids
from clipalign.datasets.base import Box, PointingItem
from clipalign.datasets.pointing_coco import find_mentions

_BOX_KEYS = ("x", "y", "w", "h")


def _captions(entry: Any, path: Path, where: str) -> Mapping[str, Any]:
    """An image's caption mapping: under ``"captions"``, or the entry itself (exCLIP reads both)."""
    if not isinstance(entry, Mapping):
        raise AnnotationFormatError(path, f"{where} is a {type(entry).__name__}, expected an object")
    captions = entry.get("captions", entry)
    if not isinstance(captions, Mapping):
        raise AnnotationFormatError(path, f"{where}: 'captions' is not an object")
    return captions


def _box(value: Any, path: Path, where: str) -> Box:
    """``{"x", "y", "w", "h"}`` (HNC's, from the GQA scene graph) as (x, y, w, h)."""
    if not isinstance(value, Mapping) or not all(
        isinstance(value.get(k), int | float) and not isinstance(value.get(k), bool) for k in _BOX_KEYS
    ):
        raise AnnotationFormatError(path, f"{where}: 'bbox' must be {{x, y, w, h}}, got {value!r:.60}")
    x, y, w, h = (float(value[k]) for k in _BOX_KEYS)
    if w < 0 or h < 0:
        raise AnnotationFormatError(path, f"{where}: 'bbox' has a negative width or height: {value!r:.60}")
    return (x, y, w, h)


def image_file(image_id: str) -> str:
    """The image file of an HNC image id, as exCLIP names it: ``<id>.jpg`` unless the id holds ``jpg``."""
    return image_id if "jpg" in image_id else f"{image_id}.jpg"


def load_hnc(annotations: str | Path, images: str | Path, limit: int | None = None) -> list[PointingItem]:
    """Load HNC's pointing game: one item per (correct caption, object name written in it).

    ``annotations`` is one split's JSON file (the human-annotated test split is the paper's), ``images``
    GQA's image folder. Images and captions come in file order, phrases in caption order. Ids:
    ``<image id>-<caption id>-<first object id of the name>``; ``meta`` holds ``image_id``,
    ``caption_id``, ``object_ids``, the caption ``type`` and ``category`` (the object name).
    """
    check_limit(limit)
    path, images = Path(annotations), Path(images)
    if path.suffix == ".pt":
        raise AnnotationFormatError(path, "a torch-saved split: save it as JSON first (docs/reproduce.md)")
    data = load_json(path)
    if not isinstance(data, Mapping):
        raise AnnotationFormatError(path, f"expected an object of image ids, got {type(data).__name__}")

    def items() -> Iterator[PointingItem]:
        for image_id, entry in data.items():
            for caption_id, cpt in _captions(entry, path, f"image {image_id!r}").items():
                where = f"image {image_id!r}, caption {caption_id!r}"
                label = field(cpt, "label", (int, str), path, where)
                try:
                    correct = int(label) == 1
                except ValueError:
                    raise AnnotationFormatError(path, f"{where}: 'label' {label!r} is not 0 or 1") from None
                if not correct:
                    continue
                caption = field(cpt, "caption", str, path, where)
                objects: dict[str, list[tuple[str, Box]]] = {}
                for object_id, obj in field(cpt, "bboxes", dict, path, where, default={}).items():
                    at = f"{where}, object {object_id!r}"
                    name = field(obj, "name", str, path, at)
                    box = _box(field(obj, "bbox", dict, path, at), path, at)
                    objects.setdefault(name, []).append((str(object_id), box))
                names = list(objects)
                for index, start, end in find_mentions(caption, {i: [n] for i, n in enumerate(names)}):
                    grounded = objects[names[index]]
                    yield PointingItem(
                        id=f"{image_id}-{caption_id}-{grounded[0][0]}",
                        image=images / image_file(str(image_id)),
                        caption=caption,
                        phrase=caption[start:end],
                        phrase_start=start,
                        phrase_end=end,
                        boxes=tuple(box for _, box in grounded),
                        meta={
                            "image_id": str(image_id),
                            "caption_id": str(caption_id),
                            "object_ids": tuple(o for o, _ in grounded),
                            "type": cpt.get("type"),
                            "category": names[index],
                        },
                    )

    return unique_ids(take(items(), limit))
