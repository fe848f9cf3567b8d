"""What a synthetic scene is: its objects, background, true caption and one-word foils, and when a
templated caption is true of it.

Every object's centre lies well inside one position's region, so exactly one position word is true for
it (:func:`position_of`); a caption is true when each of its object phrases describes some object of the
scene (:func:`caption_holds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from clipalign.images.geometry import Box
from clipalign.synthetic.render import SUPERSAMPLE, background_pixels, render_scene, shape_polygon
from clipalign.synthetic.vocabulary import WORD_OFFSET, WORDS_PER_OBJECT


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
        return background_pixels(self, width, height)

    def to_dict(self) -> dict[str, Any]:
        """The background's entry of the annotations file."""
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
        """The true caption: every object's phrase, in order, joined by "and"."""
        return " ".join(caption_words(self.objects))

    def word_indices(self, index: int) -> dict[str, int]:
        """Word index in the caption of each attribute word of object ``index``."""
        base = index * (WORDS_PER_OBJECT + 1)
        return {kind: base + offset for kind, offset in WORD_OFFSET.items()}

    def phrase_span(self, index: int) -> tuple[int, int]:
        """Characters [start, end) of object ``index``'s "colour shape" phrase in the caption."""
        words = caption_words(self.objects)
        color_word = self.word_indices(index)["color"]
        start = sum(len(w) + 1 for w in words[:color_word])
        return start, start + len(self.objects[index].phrase)

    def render(self, supersample: int = SUPERSAMPLE) -> Image.Image:
        """Draw the scene (RGB), anti-aliased by drawing at ``supersample``× and box-filtering down."""
        return render_scene(self, supersample)

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
    """A coordinate rounded to 4 decimals for the annotations file."""
    return round(float(value), 4)


def caption_words(objects: tuple[SceneObject, ...] | list[SceneObject]) -> list[str]:
    """Words of the caption describing ``objects`` in order, joined by "and"."""
    words: list[str] = []
    for i, obj in enumerate(objects):
        if i:
            words.append("and")
        words.extend(obj.describe())
    return words


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


def caption_holds(scene: Scene, caption: str) -> bool:
    """True when every object phrase of a templated caption describes some object of the scene."""
    words = caption.split()
    if (len(words) + 1) % (WORDS_PER_OBJECT + 1):
        raise ValueError(f"not a synthetic caption: {caption!r}")
    present = {o.attributes for o in scene.objects}
    for start in range(0, len(words), WORDS_PER_OBJECT + 1):
        chunk = words[start : start + WORDS_PER_OBJECT]
        attrs = (chunk[WORD_OFFSET["size"]], chunk[WORD_OFFSET["color"]], chunk[WORD_OFFSET["shape"]])
        if (*attrs, chunk[WORD_OFFSET["position"]]) not in present:
            return False
    return True
