"""Render the example scenes shipped with clipalign (drawn here with PIL, so we own them).

Run ``python examples/make_examples.py`` to rebuild ``examples/*.png`` bit for bit.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent


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


def main() -> None:
    apple_and_cup().save(HERE / "apple_and_cup.png", optimize=True)


if __name__ == "__main__":
    main()
