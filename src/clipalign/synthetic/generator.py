"""Seeded scene generation: backgrounds, non-overlapping objects placed by position, and one-word foils.

Scene ``i`` of seed ``s`` is drawn from ``numpy.random.default_rng([s, i])`` (:func:`scene_rng`), so the
same seed gives the same scenes whatever ``n`` is. Each object's centre lies in the outer 30 % of the
image on its position's side and in the middle 20 % across it, so its position word is never borderline.
Each foil changes exactly ONE word of the true caption to a value false for the image: a colour or shape
that no object in the scene has, the other size, or a position where no object with the same size,
colour and shape is.
"""

from __future__ import annotations

import numpy as np

from clipalign.images.geometry import Box
from clipalign.synthetic.scenes import Background, Foil, Scene, SceneObject, caption_words
from clipalign.synthetic.vocabulary import (
    COLORS,
    KINDS,
    POSITIONS,
    SHAPES,
    SIZES,
    VOCABULARY,
    WORD_OFFSET,
    WORDS_PER_OBJECT,
    WORLDS,
    vocabulary_of,
)

BACKGROUNDS = ("plain", "stripes", "checker", "noise")
RADIUS = {"small": (0.09, 0.11), "large": (0.15, 0.17)}
"""Half extent of an object, as a fraction of the image side (uniform in the range)."""


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
    """A random background: kind, tinted grey and (for textures) contrast, period, orientation, seed."""
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


def _objects(
    rng: np.random.Generator,
    width: int,
    height: int,
    n_objects: int,
    colors: dict[str, tuple[int, int, int]] = COLORS,
) -> tuple[SceneObject, ...]:
    """``n_objects`` objects at distinct positions, redrawn until no two boxes overlap, coloured from
    ``colors`` (the world's palette)."""
    side = min(width, height)
    for _ in range(1000):
        positions = [POSITIONS[i] for i in rng.permutation(len(POSITIONS))[:n_objects]]
        objects: list[SceneObject] = []
        for position in positions:
            size = SIZES[int(rng.integers(len(SIZES)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            color = tuple(colors)[int(rng.integers(len(colors)))]
            radius = float(rng.uniform(*RADIUS[size])) * side
            center = _slot_center(rng, position, radius, width, height)
            jitter = rng.integers(-12, 13, size=3)
            rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colors[color], jitter, strict=True))
            objects.append(SceneObject(shape, color, size, position, center, radius, rgb))  # type: ignore[arg-type]
        boxes = [o.box for o in objects]
        if not any(boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            return tuple(objects)
    raise RuntimeError("could not place non-overlapping objects")  # pragma: no cover


def make_foil(
    rng: np.random.Generator,
    objects: tuple[SceneObject, ...],
    kind: str,
    vocabulary: dict[str, tuple[str, ...]] = VOCABULARY,
) -> Foil:
    """Change one ``kind`` word of one random object to a value that makes its description false
    (colours and shapes from ``vocabulary``, the world's words)."""
    order = [int(i) for i in rng.permutation(len(objects))]
    for index in order:
        obj = objects[index]
        if kind in ("color", "shape"):
            present = {getattr(o, kind) for o in objects}
            choices = [v for v in vocabulary[kind] if v not in present]
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
            word_index = index * (WORDS_PER_OBJECT + 1) + WORD_OFFSET[kind]
            original = words[word_index]
            words[word_index] = value
            return Foil(kind, index, word_index, original, value, " ".join(words))
    raise RuntimeError(f"no {kind} foil possible")  # pragma: no cover


def generate_scene(
    rng: np.random.Generator, image_size: int = 64, max_objects: int = 3, *, world: str = "default"
) -> Scene:
    """Draw a scene (1..``max_objects`` objects, at most 4) with its true caption and 4 foils.

    Foils come in the order of :data:`KINDS` (colour, shape, size, position), one per kind. ``world``
    ``"shifted"`` draws the colours of :data:`~clipalign.synthetic.vocabulary.SHIFTED_COLORS` instead
    (the same random draws, so scene ``i`` differs from the default world's only in its colours).
    """
    vocabulary = vocabulary_of(world)
    if not 1 <= max_objects <= len(POSITIONS):
        raise ValueError(f"max_objects must be in 1..{len(POSITIONS)}, got {max_objects}")
    if image_size < 16:
        raise ValueError(f"image_size must be ≥ 16 pixels, got {image_size}")
    background = _background(rng)
    n_objects = int(rng.integers(1, max_objects + 1))
    objects = _objects(rng, image_size, image_size, n_objects, WORLDS[world])
    foils = tuple(make_foil(rng, objects, kind, vocabulary) for kind in KINDS)
    return Scene(image_size, image_size, background, objects, foils)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of a seed: independent of how many scenes are drawn."""
    return np.random.default_rng([seed, index])


def generate_scenes(
    n: int, seed: int, image_size: int = 64, start: int = 0, *, world: str = "default"
) -> list[Scene]:
    """Scenes ``start .. start + n - 1`` of ``seed`` in ``world``."""
    return [generate_scene(scene_rng(seed, i), image_size, world=world) for i in range(start, start + n)]
