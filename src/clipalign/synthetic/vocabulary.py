"""The words of the synthetic world and where each sits in a caption.

A caption is one 7-word phrase per object, ``"a {size} {color} {shape} on the {position}"``, the phrases
joined by ``"and"``; :data:`WORD_OFFSET` says which word of a phrase carries which attribute, so the
index of every attribute word in a caption follows from the object's index alone.
"""

from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (30, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 190),
    "orange": (250, 135, 20),
}
"""Colour word → its drawing RGB (each object jitters it by up to ±12 per channel)."""
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom")
KINDS = ("color", "shape", "size", "position")
"""The attribute kinds, in the order of every scene's foils."""
VOCABULARY: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": SIZES,
    "position": POSITIONS,
}
SHIFTED_COLORS: dict[str, tuple[int, int, int]] = {
    "pink": (245, 115, 190),
    "teal": (0, 140, 140),
    "brown": (135, 80, 35),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "lime": (165, 230, 50),
}
"""The shifted world's palette: six colours (and colour words) the default world never shows, for
measuring how a model trained on the default world does out of domain, and what fine-tuning recovers."""
WORLDS: dict[str, dict[str, tuple[int, int, int]]] = {"default": COLORS, "shifted": SHIFTED_COLORS}
"""World name → its palette; shapes, sizes, positions and backgrounds are the same in every world."""


def vocabulary_of(world: str) -> dict[str, tuple[str, ...]]:
    """The words of a world, by attribute kind (:data:`VOCABULARY` for the default one)."""
    if world not in WORLDS:
        raise ValueError(f"unknown synthetic world {world!r}; choose from {', '.join(WORLDS)}")
    return {**VOCABULARY, "color": tuple(WORLDS[world])}


WORDS_PER_OBJECT = 7  # "a {size} {color} {shape} on the {position}"
WORD_OFFSET = {"size": 1, "color": 2, "shape": 3, "position": 6}
"""Index of each attribute word within an object's 7-word phrase."""
