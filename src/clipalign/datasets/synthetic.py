"""A seeded synthetic world of coloured shapes where the truth of every caption word is known.

A scene is a plain or textured grey background with 1–3 non-overlapping objects. Each object has a
shape (circle, square, triangle, star, cross, diamond), a colour (red, green, blue, yellow, purple,
orange), a size (small, large) and a position (left, right, top, bottom): its centre lies in the outer
30 % of the image on that side and in the middle 20 % across it, so exactly one position word is true
for it (:func:`position_of`, by thirds, never sees a borderline centre). Every scene has

- a true caption, one phrase per object joined by "and":
  ``"a large red circle on the left and a small blue square on the top"``;
- four foils, one per attribute kind, each changing exactly ONE word of the true caption to a value
  false for the image: a colour or shape that no object in the scene has, the other size, or a
  position where no object with the same size, colour and shape is.

Scene ``i`` of seed ``s`` is drawn from ``numpy.random.default_rng([s, i])`` and rendered with PIL at
4× and box-filtered down (anti-aliased), so the same seed gives the same scenes and the same PNG bytes
(with the same NumPy and Pillow versions), whatever ``n`` is. Boxes are exact: the bounding box of the
drawn geometry, (x, y, w, h) in image pixels where pixel (i, j) covers [i, i + 1) × [j, j + 1); the
rendered edges match them to within about a quarter of a pixel (the 4× drawing grid).

Annotations file (``annotations.json``) written by :func:`write_dataset`::

    {
      "format": "clipalign-synthetic-v1",
      "seed": 0, "n": 100, "image_size": 64,
      "vocabulary": {"shape": [...], "color": [...], "size": [...], "position": [...]},
      "scenes": [
        {
          "id": "000000",
          "file_name": "000000.png",          # relative to the images directory
          "width": 64, "height": 64,
          "background": {"kind": "stripes", "rgb": [120, 118, 125], ...},
          "caption": "a large red circle on the left and a small blue square on the top",
          "objects": [
            {"shape": "circle", "color": "red", "size": "large", "position": "left",
             "center": [14.2, 30.9], "radius": 10.4, "rgb": [221, 38, 45],
             "box": [3.8, 20.5, 20.8, 20.8],             # x, y, w, h in pixels
             "phrase": "red circle", "phrase_span": [8, 18],   # characters of the caption
             "word_indices": {"size": 1, "color": 2, "shape": 3, "position": 6}}
          ],
          "foils": [
            {"kind": "color", "object": 0, "word_index": 2, "original": "red", "foil": "green",
             "caption": "a large green circle on the left and a small blue square on the top"}
          ]
        }
      ]
    }

``word_index`` counts whitespace-delimited words of the caption from 0 (``caption.split()``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from clipalign.datasets._common import AnnotationFormatError, check_limit, load_json
from clipalign.datasets.base import Box, MisalignmentItem, PointingItem

T = TypeVar("T", MisalignmentItem, PointingItem)

FORMAT = "clipalign-synthetic-v1"
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (30, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 190),
    "orange": (250, 135, 20),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom")
KINDS = ("color", "shape", "size", "position")
VOCABULARY: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": SIZES,
    "position": POSITIONS,
}
BACKGROUNDS = ("plain", "stripes", "checker", "noise")
RADIUS = {"small": (0.09, 0.11), "large": (0.15, 0.17)}
"""Half extent of an object, as a fraction of the image side (uniform in the range)."""
SUPERSAMPLE = 4
WORDS_PER_OBJECT = 7  # "a {size} {color} {shape} on the {position}"
_WORD_OFFSET = {"size": 1, "color": 2, "shape": 3, "position": 6}


@dataclass(frozen=True)
class SceneObject:
    """One shape: its attributes, geometry in image pixels and drawing colour."""

    shape: str
    color: str
    size: str
    position: str
    center: tuple[float, float]
    radius: float
    rgb: tuple[int, int, int]

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        """(size, color, shape, position): what a caption phrase says about the object."""
        return (self.size, self.color, self.shape, self.position)

    @property
    def phrase(self) -> str:
        """The object's noun phrase for pointing: ``"red circle"``."""
        return f"{self.color} {self.shape}"

    def describe(self) -> list[str]:
        """The caption words of the object: ``a large red circle on the left``."""
        return ["a", self.size, self.color, self.shape, "on", "the", self.position]

    def polygon(self) -> list[tuple[float, float]]:
        """Vertices in image pixels (a 64-gon for the circle)."""
        return shape_polygon(self.shape, self.center, self.radius)

    @property
    def box(self) -> Box:
        """(x, y, w, h) bounding box of the drawn geometry, in image pixels."""
        if self.shape == "circle":
            cx, cy = self.center
            r = self.radius
            return (cx - r, cy - r, 2 * r, 2 * r)
        xs, ys = zip(*self.polygon(), strict=True)
        return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


@dataclass(frozen=True)
class Foil:
    """A caption that differs from the true one in exactly one word (``word_index``), false for the image."""

    kind: str
    object: int
    word_index: int
    original: str
    foil: str
    caption: str


@dataclass(frozen=True)
class Background:
    """A grey (slightly tinted) background, plain or with a low-contrast texture."""

    kind: str
    rgb: tuple[int, int, int]
    contrast: int = 0
    period: int = 0
    orientation: str = ""
    seed: int = 0

    def array(self, width: int, height: int) -> np.ndarray:
        """The background as a uint8 (height, width, 3) array."""
        base = np.array(self.rgb, dtype=np.float64)
        yy, xx = np.mgrid[0:height, 0:width]
        if self.kind == "plain":
            offset = np.zeros((height, width))
        elif self.kind == "stripes":
            coord = {"horizontal": yy, "vertical": xx, "diagonal": xx + yy}[self.orientation]
            offset = np.where((coord // self.period) % 2 == 0, self.contrast, -self.contrast)
        elif self.kind == "checker":
            offset = np.where(((xx // self.period) + (yy // self.period)) % 2 == 0, 1, -1) * self.contrast
        elif self.kind == "noise":
            offset = np.random.default_rng(self.seed).normal(0.0, self.contrast, (height, width))
        else:
            raise ValueError(f"unknown background kind {self.kind!r}")
        pixels = base[None, None, :] + np.asarray(offset, dtype=np.float64)[..., None]
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rgb": list(self.rgb),
            "contrast": self.contrast,
            "period": self.period,
            "orientation": self.orientation,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Scene:
    """A generated image description: background, objects, the true caption and its one-word foils."""

    width: int
    height: int
    background: Background
    objects: tuple[SceneObject, ...]
    foils: tuple[Foil, ...] = field(default=())

    @property
    def caption(self) -> str:
        return " ".join(caption_words(self.objects))

    def word_indices(self, index: int) -> dict[str, int]:
        """Word index in the caption of each attribute word of object ``index``."""
        base = index * (WORDS_PER_OBJECT + 1)
        return {kind: base + offset for kind, offset in _WORD_OFFSET.items()}

    def phrase_span(self, index: int) -> tuple[int, int]:
        """Characters [start, end) of object ``index``'s "colour shape" phrase in the caption."""
        words = caption_words(self.objects)
        color_word = self.word_indices(index)["color"]
        start = sum(len(w) + 1 for w in words[:color_word])
        return start, start + len(self.objects[index].phrase)

    def render(self, supersample: int = SUPERSAMPLE) -> Image.Image:
        """Draw the scene (RGB), anti-aliased by drawing at ``supersample``× and box-filtering down."""
        big = Image.fromarray(self.background.array(self.width, self.height), "RGB").resize(
            (self.width * supersample, self.height * supersample), Image.Resampling.NEAREST
        )
        draw = ImageDraw.Draw(big)
        for obj in self.objects:
            points = [(x * supersample, y * supersample) for x, y in obj.polygon()]
            draw.polygon(points, fill=obj.rgb)
        return big.resize((self.width, self.height), Image.Resampling.BOX)

    def to_dict(self) -> dict[str, Any]:
        """The scene's entry of the annotations file (without ``id`` and ``file_name``)."""
        return {
            "width": self.width,
            "height": self.height,
            "background": self.background.to_dict(),
            "caption": self.caption,
            "objects": [
                {
                    "shape": o.shape,
                    "color": o.color,
                    "size": o.size,
                    "position": o.position,
                    "center": [_r(o.center[0]), _r(o.center[1])],
                    "radius": _r(o.radius),
                    "rgb": list(o.rgb),
                    "box": [_r(v) for v in o.box],
                    "phrase": o.phrase,
                    "phrase_span": list(self.phrase_span(i)),
                    "word_indices": self.word_indices(i),
                }
                for i, o in enumerate(self.objects)
            ],
            "foils": [
                {
                    "kind": f.kind,
                    "object": f.object,
                    "word_index": f.word_index,
                    "original": f.original,
                    "foil": f.foil,
                    "caption": f.caption,
                }
                for f in self.foils
            ],
        }


def _r(value: float) -> float:
    return round(float(value), 4)


def caption_words(objects: tuple[SceneObject, ...] | list[SceneObject]) -> list[str]:
    """Words of the caption describing ``objects`` in order, joined by "and"."""
    words: list[str] = []
    for i, obj in enumerate(objects):
        if i:
            words.append("and")
        words.extend(obj.describe())
    return words


def shape_polygon(shape: str, center: tuple[float, float], radius: float) -> list[tuple[float, float]]:
    """Vertices of a shape of half extent ``radius`` centred at ``center`` (image pixels, y down)."""
    cx, cy = center
    r = radius
    if shape == "circle":
        n = 64
        return [
            (cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)
        ]
    if shape == "square":
        s = 0.85 * r
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        points = []
        for k in range(10):
            angle = -math.pi / 2 + k * math.pi / 5
            rad = r if k % 2 == 0 else 0.45 * r
            points.append((cx + rad * math.cos(angle), cy + rad * math.sin(angle)))
        return points
    if shape == "cross":
        t = 0.33 * r
        return [
            (cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
            (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
            (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def position_of(center: tuple[float, float], width: int, height: int) -> str | None:
    """The one true position word of a centre (middle third of a side), or None (centre, corners)."""
    x, y = center[0] / width, center[1] / height
    mid_x, mid_y = 1 / 3 <= x <= 2 / 3, 1 / 3 <= y <= 2 / 3
    if mid_y and x < 1 / 3:
        return "left"
    if mid_y and x > 2 / 3:
        return "right"
    if mid_x and y < 1 / 3:
        return "top"
    if mid_x and y > 2 / 3:
        return "bottom"
    return None


def _slot_center(
    rng: np.random.Generator, position: str, radius: float, width: int, height: int
) -> tuple[float, float]:
    """A centre well inside the position's region: along the side within the outer 30 %, across it within
    the middle 20 % (so the position word is never borderline), keeping the object 1 px inside."""
    margin = radius + 1.0

    def span(lo: float, hi: float, size: int) -> float:
        return float(rng.uniform(max(lo * size, margin), min(hi * size, size - margin)))

    if position == "left":
        return span(0.0, 0.3, width), span(0.4, 0.6, height)
    if position == "right":
        return span(0.7, 1.0, width), span(0.4, 0.6, height)
    if position == "top":
        return span(0.4, 0.6, width), span(0.0, 0.3, height)
    return span(0.4, 0.6, width), span(0.7, 1.0, height)


def boxes_overlap(a: Box, b: Box, gap: float = 1.0) -> bool:
    """True when two (x, y, w, h) boxes are closer than ``gap`` pixels on both axes."""
    return not (
        a[0] + a[2] + gap <= b[0]
        or b[0] + b[2] + gap <= a[0]
        or a[1] + a[3] + gap <= b[1]
        or b[1] + b[3] + gap <= a[1]
    )


def _background(rng: np.random.Generator) -> Background:
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    grey = int(rng.integers(80, 181))
    tint = rng.integers(-8, 9, size=3)
    rgb = tuple(int(np.clip(grey + t, 0, 255)) for t in tint)
    if kind == "plain":
        return Background("plain", rgb)  # type: ignore[arg-type]
    contrast = int(rng.integers(8, 21))
    period = int(rng.integers(2, 7))
    orientation = ("horizontal", "vertical", "diagonal")[int(rng.integers(3))] if kind == "stripes" else ""
    seed = int(rng.integers(2**31)) if kind == "noise" else 0
    return Background(kind, rgb, contrast, period, orientation, seed)  # type: ignore[arg-type]


def _objects(rng: np.random.Generator, width: int, height: int, n_objects: int) -> tuple[SceneObject, ...]:
    side = min(width, height)
    for _ in range(1000):
        positions = [POSITIONS[i] for i in rng.permutation(len(POSITIONS))[:n_objects]]
        objects: list[SceneObject] = []
        for position in positions:
            size = SIZES[int(rng.integers(len(SIZES)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
            radius = float(rng.uniform(*RADIUS[size])) * side
            center = _slot_center(rng, position, radius, width, height)
            jitter = rng.integers(-12, 13, size=3)
            rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[color], jitter, strict=True))
            objects.append(SceneObject(shape, color, size, position, center, radius, rgb))  # type: ignore[arg-type]
        boxes = [o.box for o in objects]
        if not any(boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            return tuple(objects)
    raise RuntimeError("could not place non-overlapping objects")  # pragma: no cover


def make_foil(rng: np.random.Generator, objects: tuple[SceneObject, ...], kind: str) -> Foil:
    """Change one ``kind`` word of one random object to a value that makes its description false."""
    order = [int(i) for i in rng.permutation(len(objects))]
    for index in order:
        obj = objects[index]
        if kind in ("color", "shape"):
            present = {getattr(o, kind) for o in objects}
            choices = [v for v in VOCABULARY[kind] if v not in present]
        elif kind == "size":
            choices = [v for v in SIZES if v != obj.size]
        else:
            taken = {o.attributes for o in objects}
            choices = [
                p for p in POSITIONS if p != obj.position and (obj.size, obj.color, obj.shape, p) not in taken
            ]
        if choices:
            value = choices[int(rng.integers(len(choices)))]
            words = caption_words(objects)
            word_index = index * (WORDS_PER_OBJECT + 1) + _WORD_OFFSET[kind]
            original = words[word_index]
            words[word_index] = value
            return Foil(kind, index, word_index, original, value, " ".join(words))
    raise RuntimeError(f"no {kind} foil possible")  # pragma: no cover


def generate_scene(rng: np.random.Generator, image_size: int = 64, max_objects: int = 3) -> Scene:
    """Draw a scene (1..``max_objects`` objects, at most 4) with its true caption and 4 foils.

    Foils come in the order of :data:`KINDS` (colour, shape, size, position), one per kind.
    """
    if not 1 <= max_objects <= len(POSITIONS):
        raise ValueError(f"max_objects must be in 1..{len(POSITIONS)}, got {max_objects}")
    if image_size < 16:
        raise ValueError(f"image_size must be ≥ 16 pixels, got {image_size}")
    background = _background(rng)
    n_objects = int(rng.integers(1, max_objects + 1))
    objects = _objects(rng, image_size, image_size, n_objects)
    foils = tuple(make_foil(rng, objects, kind) for kind in KINDS)
    return Scene(image_size, image_size, background, objects, foils)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of a seed: independent of how many scenes are drawn."""
    return np.random.default_rng([seed, index])


def generate_scenes(n: int, seed: int, image_size: int = 64, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of ``seed``."""
    return [generate_scene(scene_rng(seed, i), image_size) for i in range(start, start + n)]


def caption_holds(scene: Scene, caption: str) -> bool:
    """True when every object phrase of a templated caption describes some object of the scene."""
    words = caption.split()
    if (len(words) + 1) % (WORDS_PER_OBJECT + 1):
        raise ValueError(f"not a synthetic caption: {caption!r}")
    present = {o.attributes for o in scene.objects}
    for start in range(0, len(words), WORDS_PER_OBJECT + 1):
        chunk = words[start : start + WORDS_PER_OBJECT]
        attrs = (chunk[_WORD_OFFSET["size"]], chunk[_WORD_OFFSET["color"]], chunk[_WORD_OFFSET["shape"]])
        if (*attrs, chunk[_WORD_OFFSET["position"]]) not in present:
            return False
    return True


def write_dataset(out_dir: str | Path, n: int, seed: int, image_size: int = 64) -> Path:
    """Write ``n`` scenes as ``out_dir/images/NNNNNN.png`` and ``out_dir/annotations.json``.

    Returns the annotations path. The same (n, seed, image_size) always gives identical bytes.
    """
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(max(n - 1, 0))))
    entries = []
    for i, scene in enumerate(generate_scenes(n, seed, image_size)):
        scene_id = f"{i:0{width}d}"
        file_name = f"{scene_id}.png"
        scene.render().save(images / file_name, format="PNG")
        entries.append({"id": scene_id, "file_name": file_name, **scene.to_dict()})
    document = {
        "format": FORMAT,
        "seed": seed,
        "n": n,
        "image_size": image_size,
        "vocabulary": {k: list(v) for k, v in VOCABULARY.items()},
        "scenes": entries,
    }
    path = out / "annotations.json"
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


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

    Ids: ``<scene>-obj<i>``. ``limit`` keeps the first N items.
    """
    return _load(annotations, images, limit, _pointing_items)
