"""Image loading: every input kind and PIL mode becomes a decoded RGB image, or a clear ImageLoadError."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from clipalign.images import ImageLoadError, describe_source, load_image

WHITE = (255, 255, 255)


def _palette_image(transparent_index: int | None = None) -> Image.Image:
    """A 2x2 palette image whose pixel (0, 0) is index 1 (red) and the rest index 0 (blue)."""
    image = Image.new("P", (2, 2), 0)
    image.putpalette([0, 0, 255, 255, 0, 0] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 1)
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


def _pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("L", 77, (77, 77, 77)),
        ("1", 1, WHITE),
        ("1", 0, (0, 0, 0)),
        ("I", 100, (100, 100, 100)),
        ("I", 300, WHITE),
        ("I;16", 65535, WHITE),
        ("I;16", 257 * 100, (100, 100, 100)),
        ("I;16", 128, (0, 0, 0)),
        ("I;16", 129, (1, 1, 1)),
        ("I;16B", 65535, WHITE),
        ("I;16L", 257 * 42, (42, 42, 42)),
        ("F", 0.5, (128, 128, 128)),
        ("F", 1.0, WHITE),
        ("F", 200.0, (200, 200, 200)),
        ("F", 300.0, WHITE),
        ("CMYK", (0, 0, 0, 0), WHITE),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("YCbCr", (255, 128, 128), WHITE),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("RGBA", (10, 20, 30, 0), WHITE),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBa", (0, 0, 0, 0), WHITE),
        ("RGBa", (10, 20, 30, 255), (10, 20, 30)),
        ("LA", (50, 0), WHITE),
        ("LA", (50, 255), (50, 50, 50)),
    ],
)
def test_pil_modes_convert_to_expected_rgb(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    image = load_image(Image.new(mode, (3, 2), value))
    assert image.size == (3, 2)
    assert _pixel(image) == expected


def test_lab_converts_to_rgb() -> None:
    assert _close(_pixel(load_image(Image.new("LAB", (1, 1), (255, 128, 128)))), WHITE, 2)


def test_half_transparent_black_blends_with_white() -> None:
    assert _close(_pixel(load_image(Image.new("RGBA", (1, 1), (0, 0, 0, 128)))), (127, 127, 127), 1)


def test_palette_pixels_take_their_palette_colour() -> None:
    image = load_image(_palette_image())
    assert _pixel(image, (0, 0)) == (255, 0, 0)
    assert _pixel(image, (1, 1)) == (0, 0, 255)


def test_palette_transparency_becomes_white() -> None:
    image = load_image(_palette_image(transparent_index=0))
    assert _pixel(image, (0, 0)) == (255, 0, 0)
    assert _pixel(image, (1, 1)) == WHITE


def test_palette_with_alpha_becomes_white() -> None:
    image = Image.new("PA", (1, 1), (1, 0))
    image.putpalette([0, 0, 255, 255, 0, 0] + [0, 0, 0] * 254)
    assert _pixel(load_image(image)) == WHITE


def test_rgba_palette_transparency_becomes_white() -> None:
    quantized = Image.new("RGBA", (2, 2), (255, 0, 0, 0)).quantize()
    assert _pixel(load_image(quantized)) == WHITE


def test_files_of_several_modes(tmp_path: Path) -> None:
    sixteen = tmp_path / "depth16.png"
    Image.fromarray(np.full((2, 3), 65535, dtype=np.uint16)).save(sixteen)
    rgba = tmp_path / "clear.png"
    Image.new("RGBA", (2, 2), (9, 9, 9, 0)).save(rgba)
    palette = tmp_path / "palette.png"
    _palette_image(transparent_index=0).save(palette, transparency=0)

    assert _pixel(load_image(sixteen)) == WHITE
    assert _pixel(load_image(rgba)) == WHITE
    assert _pixel(load_image(palette), (0, 0)) == (255, 0, 0)
    assert _pixel(load_image(palette), (1, 1)) == WHITE


def test_path_as_str_and_pathlike(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).save(path)
    for source in (path, str(path)):
        image = load_image(source)
        assert image.size == (4, 3)
        assert _pixel(image) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)

    with Image.open(path) as opened:
        for image in (load_image(path), load_image(opened)):
            assert image.size == (32, 64)
            assert _close(_pixel(image, (31 - 4, 4)), (255, 0, 0), 12)
            assert _close(_pixel(image, (4, 4)), (0, 0, 255), 12)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (4, 4), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3

    assert _pixel(load_image(path)) == (255, 0, 0)


def test_pil_image_is_used_at_its_current_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.png"
    frames = [Image.new("RGB", (4, 4), colour) for colour in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert _pixel(load_image(path)) == (255, 0, 0)
    with Image.open(path) as image:
        image.seek(1)
        assert _pixel(load_image(image)) == (0, 255, 0)


def test_result_is_a_new_image() -> None:
    original = Image.new("RGB", (2, 2), (1, 2, 3))
    loaded = load_image(original)
    loaded.putpixel((0, 0), (9, 9, 9))
    assert original.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_rejected_with_its_name(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"photo.{fmt.lower()}"
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageLoadError, match="cannot read image") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_with_image_extension_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture\n")
    with pytest.raises(ImageLoadError, match=re.escape(f"{path}: cannot read image: not an image file")):
        load_image(path)


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "missing.png"
    with pytest.raises(ImageLoadError, match=re.escape(f"{path}: cannot read image: no such file")):
        load_image(str(path))


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_decompression_bomb_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageLoadError, match=r"bomb\.png: cannot read image: .*MAX_IMAGE_PIXELS"):
        load_image(path)


@pytest.mark.parametrize(
    "source", [Image.new("RGB", (0, 5)), np.zeros((0, 5, 3), dtype=np.uint8), np.zeros((5, 0), np.uint8)]
)
def test_zero_size_is_rejected(source: object) -> None:
    with pytest.raises(ImageLoadError, match=r"zero size|empty array"):
        load_image(source)


def _hwc_red_corner(dtype: type, high: float) -> np.ndarray:
    """A 4x5 HWC array, blue everywhere except a red pixel at row 0, column 0."""
    array = np.zeros((4, 5, 3), dtype=dtype)
    array[..., 2] = high
    array[0, 0] = (high, 0, 0)
    return array


@pytest.mark.parametrize(("dtype", "high"), [(np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0)])
def test_arrays_in_hwc_and_chw(dtype: type, high: float) -> None:
    hwc = _hwc_red_corner(dtype, high)
    for array in (hwc, np.transpose(hwc, (2, 0, 1))):
        image = load_image(array)
        assert image.size == (5, 4)
        assert _pixel(image, (0, 0)) == (255, 0, 0)
        assert _pixel(image, (4, 3)) == (0, 0, 255)


def test_array_value_scaling() -> None:
    assert _pixel(load_image(np.full((2, 2), 257 * 10, dtype=np.uint16))) == (10, 10, 10)
    assert _pixel(load_image(np.full((2, 2), 0.5, dtype=np.float64))) == (128, 128, 128)
    assert _pixel(load_image(np.full((2, 2), 1.0000001, dtype=np.float32))) == WHITE
    assert _pixel(load_image(np.full((2, 2), -1e-7, dtype=np.float32))) == (0, 0, 0)
    assert _pixel(load_image(np.full((2, 2), 0.5, dtype=np.float16))) == (128, 128, 128)


def test_bool_array() -> None:
    image = load_image(np.array([[True, False], [False, True]]))
    assert _pixel(image, (0, 0)) == WHITE
    assert _pixel(image, (1, 0)) == (0, 0, 0)


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 1), (1, 4, 5)])
def test_grey_array_shapes(shape: tuple[int, ...]) -> None:
    image = load_image(np.full(shape, 60, dtype=np.uint8))
    assert image.size == (5, 4)
    assert _pixel(image) == (60, 60, 60)


def test_rgba_array_is_composited_over_white() -> None:
    array = np.zeros((2, 2, 4), dtype=np.uint8)
    array[0, 0] = (10, 20, 30, 255)
    image = load_image(array)
    assert _pixel(image, (0, 0)) == (10, 20, 30)
    assert _pixel(image, (1, 1)) == WHITE


def test_ambiguous_shape_is_read_as_hwc() -> None:
    array = np.zeros((3, 4, 3), dtype=np.uint8)
    array[..., 0] = 255
    image = load_image(array)
    assert image.size == (4, 3)
    assert _pixel(image) == (255, 0, 0)


def test_tensors_are_read_as_chw() -> None:
    tensor = torch.zeros(3, 4, 5, requires_grad=True)
    with torch.no_grad():
        tensor[0, 0, 0] = 1.0
    image = load_image(tensor)
    assert image.size == (5, 4)
    assert _pixel(image) == (255, 0, 0)
    assert _pixel(load_image(torch.ones(3, 4, 5, dtype=torch.bfloat16))) == WHITE
    assert _pixel(load_image(torch.full((4, 5, 3), 7, dtype=torch.uint8))) == (7, 7, 7)


@pytest.mark.parametrize("value", [1.5, -0.2, 255.0, float("nan")])
def test_float_out_of_range_is_rejected(value: float) -> None:
    with pytest.raises(ImageLoadError, match=r"<array \(2, 2, 3\) float32>: .*(\[0, 1\]|NaN)"):
        load_image(np.full((2, 2, 3), value, dtype=np.float32))


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 2, 3), dtype=np.int64),
        np.zeros((2, 2, 3), dtype=np.complex64),
        np.zeros((2, 2, 2), dtype=np.uint8),
        np.zeros((1, 2, 2, 3), dtype=np.uint8),
        np.zeros(5, dtype=np.uint8),
    ],
)
def test_unsupported_arrays_are_rejected(array: np.ndarray) -> None:
    with pytest.raises(ImageLoadError, match=r"^<array .*: unsupported (array shape|pixel dtype)"):
        load_image(array)


def test_encoded_bytes(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (5, 4), (0, 0, 255, 255)).save(buffer, format="PNG")
    image = load_image(buffer.getvalue())
    assert image.mode == "RGB" and image.size == (5, 4) and image.getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(ImageLoadError, match=r"^<4 bytes>: cannot read image: not an image file"):
        load_image(b"\x89PNG")
    assert describe_source(b"abc") == "<3 bytes>"


@pytest.mark.parametrize("source", [None, 42, bytearray(b"x"), [[0, 0]]])
def test_unsupported_types_are_rejected(source: object) -> None:
    with pytest.raises(ImageLoadError, match="expected a file path"):
        load_image(source)  # type: ignore[arg-type]


def test_describe_source(tmp_path: Path) -> None:
    assert describe_source(tmp_path / "a.jpg") == str(tmp_path / "a.jpg")
    assert describe_source("photo.jpg") == "photo.jpg"
    assert describe_source(Image.new("CMYK", (640, 480))) == "<PIL image 640x480 CMYK>"
    assert describe_source(np.zeros((3, 64, 64), dtype=np.uint8)) == "<array (3, 64, 64) uint8>"
    assert describe_source(torch.zeros(3, 8, 8)) == "<tensor (3, 8, 8) float32>"
    assert describe_source(None) == "<NoneType>"
