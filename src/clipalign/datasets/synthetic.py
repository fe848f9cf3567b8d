"""Loaders of a synthetic shapes dataset written by :func:`clipalign.synthetic.write_dataset`.

The annotations file (format ``clipalign-synthetic-v1``, described in :mod:`clipalign.synthetic.writer`)
becomes misalignment items (each scene's true caption and its one-word foils) or pointing items (each
object's "colour shape" phrase and its box).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from clipalign.datasets._common import AnnotationFormatError, check_limit, load_json
from clipalign.datasets.base import MisalignmentItem, PointingItem
from clipalign.synthetic import FORMAT

T = TypeVar("T", MisalignmentItem, PointingItem)


def _read(annotations: str | Path, limit: int | None) -> list[dict[str, Any]]:
    """The scenes of an annotations file, after checking its format and ``limit``."""
    check_limit(limit)
    path = Path(annotations)
    document = load_json(path)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise AnnotationFormatError(path, f"not a {FORMAT} annotations file (format={found!r})")
    scenes = document.get("scenes")
    if not isinstance(scenes, list):
        raise AnnotationFormatError(path, "'scenes' is missing or not a list")
    return scenes


def _misalignment_items(scene: dict[str, Any], images_dir: Path) -> list[MisalignmentItem]:
    """A scene's true caption (aligned) then its foils, each checked to hold its foil word at its index."""
    image = images_dir / scene["file_name"]
    n_words = len(scene["caption"].split())
    base = {"scene": scene["id"], "objects": len(scene["objects"])}
    items = [
        MisalignmentItem(
            id=f"{scene['id']}-true",
            image=image,
            caption=scene["caption"],
            aligned=True,
            word_labels=(False,) * n_words,
            meta={**base, "kind": None},
        )
    ]
    for foil in scene["foils"]:
        index = foil["word_index"]
        if foil["caption"].split()[index] != foil["foil"]:
            raise ValueError(f"foil word {foil['foil']!r} is not word {index} of {foil['caption']!r}")
        items.append(
            MisalignmentItem(
                id=f"{scene['id']}-foil-{foil['kind']}",
                image=image,
                caption=foil["caption"],
                aligned=False,
                misaligned_phrases=(foil["foil"],),
                word_labels=tuple(i == index for i in range(n_words)),
                meta={
                    **base,
                    "kind": foil["kind"],
                    "word_index": index,
                    "original": foil["original"],
                    "foil": foil["foil"],
                },
            )
        )
    return items


def _pointing_items(scene: dict[str, Any], images_dir: Path) -> list[PointingItem]:
    """One item per object of a scene, each checked to find its phrase at its ``phrase_span``."""
    items = []
    for i, obj in enumerate(scene["objects"]):
        start, end = obj["phrase_span"]
        if scene["caption"][start:end] != obj["phrase"]:
            raise ValueError(f"phrase_span {[start, end]} of object {i} is not {obj['phrase']!r}")
        items.append(
            PointingItem(
                id=f"{scene['id']}-obj{i}",
                image=images_dir / scene["file_name"],
                caption=scene["caption"],
                phrase=obj["phrase"],
                phrase_start=start,
                phrase_end=end,
                boxes=(tuple(float(v) for v in obj["box"]),),  # type: ignore[arg-type]
                meta={
                    "scene": scene["id"],
                    "object": i,
                    "shape": obj["shape"],
                    "color": obj["color"],
                    "size": obj["size"],
                    "position": obj["position"],
                    "category": obj["shape"],
                },
            )
        )
    return items


def _load(
    annotations: str | Path,
    images: str | Path,
    limit: int | None,
    build: Callable[[dict[str, Any], Path], list[T]],
) -> list[T]:
    """Items ``build`` makes of each scene, in order, up to ``limit``; a bad scene names its index."""
    path = Path(annotations)
    images_dir = Path(images)
    items: list[T] = []
    for n, scene in enumerate(_read(path, limit)):
        if limit is not None and len(items) >= limit:
            break
        try:
            items.extend(build(scene, images_dir))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise AnnotationFormatError(path, f"scene {n}: {detail}") from None
    return items if limit is None else items[:limit]


def load_synthetic(
    annotations: str | Path, images: str | Path, limit: int | None = None
) -> list[MisalignmentItem]:
    """Items of a synthetic dataset: per scene the true caption (aligned) then its foils (misaligned).

    Foil items have ``misaligned_phrases=(foil word,)`` and ``word_labels`` marking exactly the changed
    word; ``meta`` holds the scene id, foil ``kind``, ``word_index``, ``original`` and ``foil`` words and
    the object count. Ids: ``<scene>-true``, ``<scene>-foil-<kind>``. ``limit`` keeps the first N items.
    A malformed file raises :class:`~clipalign.datasets.AnnotationFormatError` (a ``ValueError``).
    """
    return _load(annotations, images, limit, _misalignment_items)


def load_synthetic_pointing(
    annotations: str | Path, images: str | Path, limit: int | None = None
) -> list[PointingItem]:
    """One pointing item per object: its "colour shape" phrase in the true caption and its box.

    Ids: ``<scene>-obj<i>``. ``meta`` holds the object's ``shape``, ``color``, ``size`` and ``position``,
    and ``category`` (its shape, the per-class default). ``limit`` keeps the first N items.
    """
    return _load(annotations, images, limit, _pointing_items)
