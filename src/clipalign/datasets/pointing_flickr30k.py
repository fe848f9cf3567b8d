"""Pointing game on Flickr30k Entities (Plummer et al., 2015).

The root holds ``Sentences/<image id>.txt`` (one caption per line, phrases marked up as
``[/EN#123/people A man]``; an entity may carry several types, ``/EN#5/people/other``) and
``Annotations/<image id>.xml`` (VOC-style: ``<object><name>123</name><bndbox><xmin>..</xmin>...``
``</bndbox></object>``; one object may list several names; entities without a box have ``<nobndbox>``
or ``<scene>`` instead), plus ``train.txt``/``val.txt``/``test.txt`` listing the image ids of each
split, one a line.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from clipalign.datasets._common import AnnotationFormatError, check_limit, take, unique_ids
from clipalign.datasets.base import Box, PointingItem

_MARKUP = re.compile(r"\[/EN#(\d+)((?:/[^\s\[\]/]*)*)\s+([^\[\]]*?)\s*\]")


def parse_sentence(line: str) -> tuple[str, list[tuple[str, tuple[str, ...], int, int]]]:
    """A marked-up sentence → (clean caption, [(entity id, types, start, end)]) with offsets into the caption.

    Raises ``ValueError`` when a ``[/EN#`` opening is not a well-formed phrase.
    """
    parts: list[str] = []
    phrases = []
    length = pos = 0
    for m in _MARKUP.finditer(line):
        before = line[pos : m.start()]
        if "[/EN#" in before:
            raise ValueError(f"malformed phrase markup near {before[before.index('[/EN#') :]!r:.60}")
        parts.append(before)
        length += len(before)
        text = m.group(3)
        types = tuple(t for t in m.group(2).split("/") if t)
        phrases.append((m.group(1), types, length, length + len(text)))
        parts.append(text)
        length += len(text)
        pos = m.end()
    rest = line[pos:]
    if "[/EN#" in rest:
        raise ValueError(f"malformed phrase markup near {rest[rest.index('[/EN#') :]!r:.60}")
    parts.append(rest)
    caption = "".join(parts)
    # Strip the line's outer whitespace and shift the offsets accordingly.
    lead = len(caption) - len(caption.lstrip())
    caption = caption.strip()
    return caption, [(e, t, s - lead, end - lead) for e, t, s, end in phrases]


def parse_annotation(path: Path) -> tuple[str | None, dict[str, list[Box]]]:
    """``Annotations/<id>.xml`` → (image file name if given, entity id → boxes as (x, y, w, h)).

    Boxes follow the official ``flickr30k_entities_utils.get_annotations``: 1-based corners minus 1,
    so ``x = xmin - 1``, ``y = ymin - 1``, ``w = xmax - xmin``, ``h = ymax - ymin``.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationFormatError(path, f"not valid XML ({e})") from None
    boxes: dict[str, list[Box]] = defaultdict(list)
    for k, obj in enumerate(root.iter("object")):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            continue
        try:
            xmin, ymin, xmax, ymax = (float(bndbox.findtext(t, "")) for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise AnnotationFormatError(
                path, f"object {k}: bndbox needs numeric xmin, ymin, xmax, ymax"
            ) from None
        if xmax < xmin or ymax < ymin:
            raise AnnotationFormatError(path, f"object {k}: bndbox has xmax < xmin or ymax < ymin")
        names = [(n.text or "").strip() for n in obj.findall("name")]
        if not any(names):
            raise AnnotationFormatError(path, f"object {k} has a bndbox but no <name>")
        for name in names:
            if name:
                boxes[name].append((xmin - 1, ymin - 1, xmax - xmin, ymax - ymin))
    return root.findtext("filename"), dict(boxes)


FLICKR30K_SPLITS = ("train", "val", "test")
"""The official Flickr30k Entities splits (``<split>.txt`` of image ids in the root); ``all`` reads every
``Sentences`` file. The exCLIP paper evaluates on ``test``, the default."""


def _image_ids(root: Path, split: str) -> list[str]:
    """The image ids of ``split`` in file order (``all``: every ``Sentences/*.txt``, in numeric order)."""
    sentences = root / "Sentences"
    if not sentences.is_dir():
        raise FileNotFoundError(
            f"{sentences}: no such folder (annotations must be the Flickr30k Entities root)"
        )
    if split == "all":
        return sorted((p.stem for p in sentences.glob("*.txt")), key=lambda s: (len(s), s))
    if split not in FLICKR30K_SPLITS:
        raise ValueError(f"split must be one of {', '.join(FLICKR30K_SPLITS)} or all, got {split!r}")
    split_file = root / f"{split}.txt"
    if not split_file.exists():
        raise FileNotFoundError(
            f"{split_file}: no such split file (it ships with Flickr30k Entities beside Sentences/; "
            "split='all' reads every Sentences file instead)"
        )
    ids = []
    for n, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if not (sentences / f"{image_id}.txt").is_file():
            raise AnnotationFormatError(
                split_file, f"line {n}: image {image_id!r} has no Sentences/{image_id}.txt"
            )
        ids.append(image_id)
    return ids


def load_pointing_flickr30k(
    annotations: str | Path,
    images: str | Path,
    limit: int | None = None,
    *,
    split: str = "test",
) -> list[PointingItem]:
    """Load the Flickr30k Entities pointing game: one item per marked-up phrase that has boxes.

    ``annotations`` is the Flickr30k Entities root, ``images`` the ``flickr30k-images`` folder. Images
    come in the order of the official ``<split>.txt`` (``test`` by default, the split exCLIP reports;
    ``train``, ``val``), or all ``Sentences/*.txt`` in numeric order for ``split="all"``; then
    sentences in file order, phrases in sentence order. ``caption`` is the sentence without markup;
    phrases of entities without a box (scene, nobox, notvisual) are skipped. ``meta["category"]`` is the
    phrase type (``people``; a phrase of several types joins them, ``people/other``; ``none`` if untyped).
    Ids: ``<image id>-<sentence index>-<phrase index>``.
    """
    check_limit(limit)
    root, images = Path(annotations), Path(images)

    def items() -> Iterator[PointingItem]:
        for image_id in _image_ids(root, split):
            sentence_path = root / "Sentences" / f"{image_id}.txt"
            lines = sentence_path.read_text(encoding="utf-8").splitlines()
            file_name, boxes = parse_annotation(root / "Annotations" / f"{image_id}.xml")
            image = images / (file_name.strip() if file_name and file_name.strip() else f"{image_id}.jpg")
            for s_index, line in enumerate(x for x in lines if x.strip()):
                try:
                    caption, phrases = parse_sentence(line)
                except ValueError as e:
                    raise AnnotationFormatError(sentence_path, f"sentence {s_index}: {e}") from None
                for p_index, (entity, types, start, end) in enumerate(phrases):
                    if entity not in boxes:
                        continue
                    yield PointingItem(
                        id=f"{image_id}-{s_index}-{p_index}",
                        image=image,
                        caption=caption,
                        phrase=caption[start:end],
                        phrase_start=start,
                        phrase_end=end,
                        boxes=tuple(boxes[entity]),
                        meta={
                            "image_id": image_id,
                            "sentence": s_index,
                            "entity_id": entity,
                            "types": types,
                            "category": "/".join(types) or "none",
                        },
                    )

    return unique_ids(take(items(), limit))
