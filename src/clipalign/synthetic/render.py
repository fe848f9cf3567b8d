"""Drawing the synthetic world: shape outlines, textured backgrounds and anti-aliased scene images.

Scenes are drawn with PIL at :data:`SUPERSAMPLE`× and box-filtered down, so the same scene always gives
the same pixels (with the same NumPy and Pillow versions) and edges match the exact geometry to within
about a quarter of a pixel.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from clipalign.synthetic.vocabulary import SHAPES

if TYPE_CHECKING:
    from clipalign.synthetic.scenes import Background, Scene

SUPERSAMPLE = 4


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


def background_pixels(background: Background, width: int, height: int) -> np.ndarray:
    """The background as a uint8 (height, width, 3) array: its grey plus the texture's offsets."""
    base = np.array(background.rgb, dtype=np.float64)
    yy, xx = np.mgrid[0:height, 0:width]
    period, contrast = background.period, background.contrast
    if background.kind == "plain":
        offset = np.zeros((height, width))
    elif background.kind == "stripes":
        coord = {"horizontal": yy, "vertical": xx, "diagonal": xx + yy}[background.orientation]
        offset = np.where((coord // period) % 2 == 0, contrast, -contrast)
    elif background.kind == "checker":
        offset = np.where(((xx // period) + (yy // period)) % 2 == 0, 1, -1) * contrast
    elif background.kind == "noise":
        offset = np.random.default_rng(background.seed).normal(0.0, contrast, (height, width))
    else:
        raise ValueError(f"unknown background kind {background.kind!r}")
    pixels = base[None, None, :] + np.asarray(offset, dtype=np.float64)[..., None]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def render_scene(scene: Scene, supersample: int = SUPERSAMPLE) -> Image.Image:
    """Draw ``scene`` (RGB), anti-aliased by drawing at ``supersample``× and box-filtering down."""
    background = background_pixels(scene.background, scene.width, scene.height)
    big = Image.fromarray(background, "RGB").resize(
        (scene.width * supersample, scene.height * supersample), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        points = [(x * supersample, y * supersample) for x, y in obj.polygon()]
        draw.polygon(points, fill=obj.rgb)
    return big.resize((scene.width, scene.height), Image.Resampling.BOX)
