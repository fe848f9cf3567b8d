"""A seeded synthetic world of coloured shapes where the truth of every caption word is known.

A scene is a plain or textured grey background with 1–3 non-overlapping objects. Each object has a
shape (circle, square, triangle, star, cross, diamond), a colour (red, green, blue, yellow, purple,
orange), a size (small, large) and a position (left, right, top, bottom): its centre lies in the outer
30 % of the image on that side and in the middle 20 % across it, so exactly one position word is true
for it (:func:`position_of`, by thirds, never sees a borderline centre). The ``"shifted"`` world
(``world="shifted"``) paints the same layouts in six other colours (:data:`SHIFTED_COLORS`), a domain
the bundled synthetic CLIP never saw. Every scene has

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

Modules: :mod:`~clipalign.synthetic.vocabulary` (the words and the caption template),
:mod:`~clipalign.synthetic.scenes` (scenes, objects, foils; when a caption holds),
:mod:`~clipalign.synthetic.generator` (seeded generation), :mod:`~clipalign.synthetic.render` (drawing)
and :mod:`~clipalign.synthetic.writer` (a dataset on disk, read back by
:func:`clipalign.datasets.load_synthetic`).
"""

from clipalign.synthetic.generator import (
    BACKGROUNDS,
    RADIUS,
    boxes_overlap,
    generate_scene,
    generate_scenes,
    make_foil,
    scene_rng,
)
from clipalign.synthetic.render import SUPERSAMPLE, shape_polygon
from clipalign.synthetic.scenes import (
    Background,
    Foil,
    Scene,
    SceneObject,
    caption_holds,
    caption_words,
    position_of,
)
from clipalign.synthetic.vocabulary import (
    COLORS,
    KINDS,
    POSITIONS,
    SHAPES,
    SHIFTED_COLORS,
    SIZES,
    VOCABULARY,
    WORD_OFFSET,
    WORDS_PER_OBJECT,
    WORLDS,
    vocabulary_of,
)
from clipalign.synthetic.writer import FORMAT, write_dataset

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "FORMAT",
    "KINDS",
    "POSITIONS",
    "RADIUS",
    "SHAPES",
    "SHIFTED_COLORS",
    "SIZES",
    "SUPERSAMPLE",
    "VOCABULARY",
    "WORDS_PER_OBJECT",
    "WORD_OFFSET",
    "WORLDS",
    "Background",
    "Foil",
    "Scene",
    "SceneObject",
    "boxes_overlap",
    "caption_holds",
    "caption_words",
    "generate_scene",
    "generate_scenes",
    "make_foil",
    "position_of",
    "scene_rng",
    "shape_polygon",
    "vocabulary_of",
    "write_dataset",
]
