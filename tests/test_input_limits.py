"""Hostile inputs fail fast with a one-line error: long thin images, FIFOs, broken tar shards."""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipalign.images import MAX_ASPECT_RATIO, ImageLoadError, load_image


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("size", "aspect"), [((100_000, 1), "100000:1"), ((1, 100_000), "100000:1")])
def test_long_thin_png_is_refused_from_the_header(
    tmp_path: Path, size: tuple[int, int], aspect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "thin.png"
    path.write_bytes(_png(size))
    decoded: list[tuple[int, int]] = []
    original_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or original_load(self))
    width, height = size
    expected = f"{path}: image is {width}×{height} (aspect {aspect}), more than 50:1"
    with pytest.raises(ImageLoadError, match=re.escape(expected)):
        load_image(path)
    with pytest.raises(ImageLoadError, match=re.escape(f"(aspect {aspect}), more than 50:1")):
        load_image(path.read_bytes())
    assert decoded == []


def test_million_pixel_line_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "line.png"
    path.write_bytes(_png((1_000_000, 1)))
    with pytest.raises(ImageLoadError, match=r"aspect 1000000:1"):
        load_image(path)


@pytest.mark.parametrize(
    "source",
    [
        Image.new("RGB", (1000, 2)),
        np.zeros((2, 1000, 3), dtype=np.uint8),
        torch.zeros(3, 1000, 2),
    ],
)
def test_decoded_inputs_are_checked_too(source: object) -> None:
    with pytest.raises(ImageLoadError, match=r"aspect 500:1\), more than 50:1"):
        load_image(source)  # type: ignore[arg-type]


def test_limit_is_a_keyword(tmp_path: Path) -> None:
    assert MAX_ASPECT_RATIO == 50
    image = Image.new("RGB", (510, 10), (1, 2, 3))
    with pytest.raises(ImageLoadError, match=r"aspect 51:1\), more than 50:1"):
        load_image(image)
    assert load_image(image, max_aspect_ratio=None).size == (510, 10)
    assert load_image(image, max_aspect_ratio=60).size == (510, 10)
    with pytest.raises(ImageLoadError, match=r"aspect 5:1\), more than 2.5:1"):
        load_image(Image.new("RGB", (50, 10)), max_aspect_ratio=2.5)
    with pytest.raises(ValueError, match="at least 1"):
        load_image(image, max_aspect_ratio=0.5)


@pytest.mark.parametrize("size", [(500, 10), (10, 500), (640, 480), (1, 1)])
def test_images_within_the_limit_are_unchanged(tmp_path: Path, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path = tmp_path / "ok.png"
    Image.fromarray(pixels).save(path)
    image = load_image(path)
    assert image.size == size and np.array_equal(np.asarray(image), pixels)


def test_pixel_limit_still_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png((100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(path)


def _in_thread(function: Callable[[], object], timeout: float = 10.0) -> BaseException | None:
    """Run ``function`` in a daemon thread; fail the test if it is still running after ``timeout``."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            function()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"still blocked after {timeout} s")
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_refused_without_opening(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    error = _in_thread(lambda: load_image(fifo))
    assert isinstance(error, ImageLoadError)
    assert str(error) == f"{fifo}: cannot read image: not a regular file (a FIFO)"


def test_missing_file_and_directory_messages_are_unchanged(tmp_path: Path) -> None:
    with pytest.raises(
        ImageLoadError, match=re.escape(f"{tmp_path / 'none.png'}: cannot read image: no such file")
    ):
        load_image(tmp_path / "none.png")
    with pytest.raises(ImageLoadError, match=re.escape(f"{tmp_path}: cannot read image: is a directory")):
        load_image(tmp_path)
