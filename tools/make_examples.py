"""Render the example scenes shipped with clipalign (drawn here with PIL, so we own them).

Run ``python tools/make_examples.py`` to rebuild, bit for bit, ``examples/apple_and_cup.png``, the demo's
examples in ``src/clipalign/examples/`` (each scene's PNG and ``examples.json``, which lists them with a
suggested caption that gets one detail wrong), and ``examples/synthetic/``: scenes of the synthetic
shapes world (:mod:`clipalign.synthetic`) that the bundled model (``--model synthetic``) understands,
with ``captions.json`` giving each one's true caption and a caption with exactly one wrong word.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from clipalign.synthetic import KINDS, Scene, generate_scene, scene_rng

REPO = Path(__file__).resolve().parents[1]
README_EXAMPLE = REPO / "examples" / "apple_and_cup.png"
PACKAGE_EXAMPLES = REPO / "src" / "clipalign" / "examples"
SYNTHETIC_EXAMPLES = REPO / "examples" / "synthetic"
SYNTHETIC_SIZE = 256
"""Pixels per side of the synthetic examples: large enough to look at (the model sees them at 64)."""
SYNTHETIC_SEED = 3
"""Not the training (0), validation (1) or evaluation (2) seed of the synthetic model."""
SYNTHETIC_SCENES: dict[str, tuple[int, str]] = {
    "large_green_star": (71, "color"),
    "small_red_star": (144, "shape"),
    "large_orange_triangle": (160, "position"),
}
"""Name → (scene index under :data:`SYNTHETIC_SEED`, which foil kind is the wrong caption). Chosen
because the bundled model, with default settings, flags the wrong word and only it, and flags nothing
in the true caption."""


def apple_and_cup(size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A red apple beside a blue cup on a wooden table against a pale wall."""
    w, h = size
    image = Image.new("RGB", size, (222, 226, 230))
    draw = ImageDraw.Draw(image)
    table_top = int(h * 0.62)
    draw.rectangle([0, table_top, w, h], fill=(150, 101, 60))
    for y in range(table_top + 12, h, 22):
        draw.line([0, y, w, y + 6], fill=(128, 84, 48), width=3)
    # apple: body, highlight, stem and leaf
    cx, cy, r = int(w * 0.32), table_top - 62, 70
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(200, 24, 30))
    draw.ellipse([cx - 40, cy - 45, cx - 12, cy - 20], fill=(236, 120, 120))
    draw.line([cx, cy - r + 6, cx + 8, cy - r - 26], fill=(90, 60, 20), width=7)
    draw.ellipse([cx + 10, cy - r - 30, cx + 50, cy - r - 10], fill=(60, 150, 50))
    # cup: tapered body and handle
    left, right, top = int(w * 0.58), int(w * 0.78), table_top - 150
    draw.polygon(
        [(left, top), (right, top), (right - 16, table_top + 4), (left + 16, table_top + 4)],
        fill=(30, 80, 200),
    )
    draw.ellipse([left, top - 14, right, top + 14], fill=(20, 60, 160))
    draw.arc([right - 30, top + 30, right + 45, top + 105], start=-90, end=90, fill=(30, 80, 200), width=14)
    return image.filter(ImageFilter.SMOOTH)


def _vertical_gradient(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], top: tuple[int, ...], bottom: tuple[int, ...]
) -> None:
    """Fill ``box`` (left, top, right, bottom) with colours blending from ``top`` to ``bottom``."""
    x0, y0, x1, y1 = box
    for y in range(y0, y1):
        t = (y - y0) / max(y1 - y0 - 1, 1)
        draw.line(
            [x0, y, x1, y], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        )


def sailboat_at_sunset(size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A sailboat with white sails on a dark sea, the sun setting on the horizon behind it."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    horizon = int(h * 0.58)
    _vertical_gradient(draw, (0, 0, w, horizon), (92, 60, 140), (250, 160, 80))
    sun_x, sun_r = int(w * 0.7), 58
    draw.ellipse([sun_x - sun_r, horizon - sun_r, sun_x + sun_r, horizon + sun_r], fill=(255, 214, 90))
    _vertical_gradient(draw, (0, horizon, w, h), (40, 70, 120), (12, 28, 60))
    for i, y in enumerate(range(horizon + 8, h, 16)):
        half = 70 - 3 * i
        if half > 8:
            draw.line([sun_x - half, y, sun_x + half, y], fill=(240, 170, 80), width=3)
    # boat: hull, mast, mainsail and jib
    bx, waterline = int(w * 0.34), horizon + 70
    draw.polygon(
        [(bx - 110, waterline - 28), (bx + 120, waterline - 28), (bx + 85, waterline), (bx - 80, waterline)],
        fill=(70, 40, 25),
    )
    draw.line([bx, waterline - 28, bx, waterline - 250], fill=(50, 35, 25), width=6)
    draw.polygon(
        [(bx - 6, waterline - 245), (bx - 6, waterline - 40), (bx - 120, waterline - 40)],
        fill=(246, 244, 236),
    )
    draw.polygon(
        [(bx + 6, waterline - 230), (bx + 6, waterline - 40), (bx + 95, waterline - 40)], fill=(232, 230, 222)
    )
    return image.filter(ImageFilter.SMOOTH)


def red_house_in_snow(size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A red house with a snowy roof between two pine trees, in falling snow."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    ground = int(h * 0.66)
    _vertical_gradient(draw, (0, 0, w, ground), (150, 180, 215), (215, 228, 240))
    draw.rectangle([0, ground, w, h], fill=(244, 246, 250))
    for tx in (int(w * 0.13), int(w * 0.86)):
        draw.rectangle([tx - 9, ground - 40, tx + 9, ground + 10], fill=(90, 60, 35))
        for k, half in enumerate((70, 56, 40)):
            base = ground - 30 - 55 * k
            draw.polygon([(tx - half, base), (tx + half, base), (tx, base - 90)], fill=(30, 100, 55))
    left, right, top = int(w * 0.32), int(w * 0.68), ground - 140
    draw.rectangle([left, top, right, ground + 6], fill=(185, 35, 35))
    draw.polygon([(left - 30, top), (right + 30, top), ((left + right) // 2, top - 95)], fill=(70, 55, 55))
    draw.polygon(
        [(left - 30, top), (right + 30, top), ((left + right) // 2, top - 95)],
        outline=(250, 250, 252),
        width=9,
    )
    door_x = (left + right) // 2
    draw.rectangle([door_x - 22, ground - 70, door_x + 22, ground + 6], fill=(80, 45, 30))
    for wx in (left + 38, right - 38):
        draw.rectangle(
            [wx - 24, top + 30, wx + 24, top + 72], fill=(255, 220, 120), outline=(250, 250, 250), width=4
        )
    rng = random.Random(3)
    for _ in range(160):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.choice((2, 3, 4))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255))
    return image.filter(ImageFilter.SMOOTH)


def traffic_light(size: tuple[int, int] = (480, 640)) -> Image.Image:
    """A traffic light on a grey pole against a blue sky, its red lamp lit (portrait)."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    _vertical_gradient(draw, (0, 0, w, h), (70, 130, 210), (175, 210, 240))
    for cx, cy in ((90, 110), (380, 70), (400, 420)):
        for dx, dy, r in ((0, 0, 34), (32, 8, 28), (-30, 10, 26)):
            draw.ellipse([cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r], fill=(245, 248, 252))
    cx = w // 2
    draw.rectangle([cx - 14, int(h * 0.55), cx + 14, h], fill=(120, 124, 128))
    top, bottom = int(h * 0.12), int(h * 0.58)
    draw.rounded_rectangle([cx - 70, top, cx + 70, bottom], radius=26, fill=(35, 38, 40))
    lamps = ((230, 30, 30), (95, 75, 20), (20, 70, 35))
    step = (bottom - top) / 3
    for k, colour in enumerate(lamps):
        ly, r = int(top + step * (k + 0.5)), 44
        if k == 0:
            draw.ellipse([cx - r - 10, ly - r - 10, cx + r + 10, ly + r + 10], fill=(120, 40, 40))
        draw.ellipse([cx - r, ly - r, cx + r, ly + r], fill=colour)
    return image.filter(ImageFilter.SMOOTH)


SCENES: dict[str, tuple[Callable[[], Image.Image], str, str]] = {
    "apple_and_cup": (apple_and_cup, "Apple and cup", "a green apple next to a blue cup"),
    "sailboat_at_sunset": (
        sailboat_at_sunset,
        "Sailboat at sunset",
        "a sailboat on the sea under a full moon",
    ),
    "red_house_in_snow": (
        red_house_in_snow,
        "House in the snow",
        "a blue house between two pine trees in the snow",
    ),
    "traffic_light": (traffic_light, "Traffic light", "a traffic light showing green"),
}
"""Name → (renderer, title, suggested caption) of every scene the package ships."""


def synthetic_scene(index: int) -> Scene:
    """Scene ``index`` of :data:`SYNTHETIC_SEED`, at :data:`SYNTHETIC_SIZE` pixels."""
    return generate_scene(scene_rng(SYNTHETIC_SEED, index), image_size=SYNTHETIC_SIZE)


def synthetic_entry(name: str) -> dict[str, object]:
    """The ``captions.json`` entry of a synthetic example: its captions and which word is wrong."""
    index, kind = SYNTHETIC_SCENES[name]
    scene = synthetic_scene(index)
    foil = scene.foils[KINDS.index(kind)]
    return {
        "file": f"{name}.png",
        "caption": scene.caption,
        "wrong_caption": foil.caption,
        "wrong_word": foil.foil,
        "wrong_word_index": foil.word_index,
        "right_word": foil.original,
        "kind": kind,
        "seed": SYNTHETIC_SEED,
        "scene": index,
    }


def write_synthetic_examples() -> None:
    """``examples/synthetic/``: each scene's PNG and ``captions.json``."""
    SYNTHETIC_EXAMPLES.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, (index, _) in SYNTHETIC_SCENES.items():
        synthetic_scene(index).render().save(SYNTHETIC_EXAMPLES / f"{name}.png", optimize=True)
        entries.append(synthetic_entry(name))
    text = json.dumps(entries, indent=2) + "\n"
    (SYNTHETIC_EXAMPLES / "captions.json").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Render every scene over the committed files (``--help`` says what without writing anything)."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    apple_and_cup().save(README_EXAMPLE, optimize=True)
    PACKAGE_EXAMPLES.mkdir(parents=True, exist_ok=True)
    index = []
    for name, (render, title, caption) in SCENES.items():
        render().save(PACKAGE_EXAMPLES / f"{name}.png", optimize=True)
        index.append({"name": name, "file": f"{name}.png", "title": title, "caption": caption})
    (PACKAGE_EXAMPLES / "examples.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    write_synthetic_examples()


if __name__ == "__main__":
    main()
