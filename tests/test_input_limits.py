"""Hostile inputs fail fast with a one-line error: long thin images, FIFOs, broken tar shards."""

from __future__ import annotations

import io
import os
import re
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from clipalign.images import MAX_ASPECT_RATIO, ImageLoadError, load_image
from clipalign.runners import sources
from clipalign.runners.sources import Columns, Sample, tar_samples


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "aspect"),
    [((100_000, 1), "100000:1"), ((1, 100_000), "100000:1"), ((1_000_000, 1), "1000000:1")],
)
def test_long_thin_png_is_refused_from_the_header(
    tmp_path: Path, size: tuple[int, int], aspect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "thin.png"
    path.write_bytes(_png(size))
    decoded: list[tuple[int, int]] = []
    original_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        decoded.append(self.size)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    width, height = size
    expected = f"{path}: image is {width}×{height} (aspect {aspect}), more than 50:1 (max_aspect_ratio)"
    with pytest.raises(ImageLoadError, match=re.escape(expected)):
        load_image(path)
    with pytest.raises(ImageLoadError, match=re.escape(f"(aspect {aspect}), more than 50:1")):
        load_image(path.read_bytes())
    assert decoded == []
    assert load_image(path, max_aspect_ratio=None).size == size
    assert decoded  # the spy sees decoding when the limit is off


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


def test_limit_is_a_keyword() -> None:
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


def _tar_bytes(prefix: str, count: int) -> bytes:
    """An uncompressed shard of ``count`` samples, each a PNG and a caption."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(count):
            for name, data in [
                (f"{prefix}{i}.png", _png((4 + i, 4))),
                (f"{prefix}{i}.txt", f"{prefix} {i}".encode()),
            ]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _offset(data: bytes, name: str) -> int:
    """Byte offset of member ``name``'s header in an uncompressed tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmember(name).offset


def _summary(samples: list[Sample]) -> list[tuple[int, str, str | None, str | None]]:
    return [(s.index, s.key, s.caption, s.error) for s in samples]


def test_broken_shards_become_error_rows_and_later_shards_are_read(tmp_path: Path) -> None:
    good = _tar_bytes("a", 3)
    truncated = _tar_bytes("b", 3)
    cut = _offset(truncated, "b1.png") + 512 + 10  # inside b1.png's data
    corrupt = bytearray(_tar_bytes("c", 3))
    bad_header = _offset(bytes(corrupt), "c1.png")
    corrupt[bad_header : bad_header + 20] = b"\xff" * 20
    (tmp_path / "0.tar").write_bytes(good)
    (tmp_path / "1.tar").write_bytes(truncated[:cut])
    (tmp_path / "2.tar").write_bytes(bytes(corrupt))
    (tmp_path / "3.tar").write_bytes(b"not a tar archive\n" * 100)
    (tmp_path / "4.tar").write_bytes(_tar_bytes("e", 2))
    pattern = str(tmp_path / "{0..4}.tar")

    samples = list(tar_samples(pattern, Columns()))
    assert _summary(samples) == _summary(list(tar_samples(pattern, Columns())))
    assert [s.index for s in samples] == list(range(len(samples)))
    by_key = {s.key: s for s in samples}
    for key in ["a0", "a1", "a2", "b0", "c0", "c2", "e0", "e1"]:
        assert by_key[key].error is None and isinstance(by_key[key].image, bytes), key
        assert by_key[key].caption == f"{key[0]} {key[1]}"
    shard = {i: str(tmp_path / f"{i}.tar") for i in range(5)}
    assert (
        by_key["b1"].error == f"{shard[1]}: member b1.png is truncated or unreadable (unexpected end of data)"
    )
    assert "b2" not in by_key
    damaged = by_key[f"{shard[2]}@{bad_header}"]
    assert damaged.image is None
    assert damaged.error is not None and damaged.error.startswith(
        f"{shard[2]}: unreadable tar data at bytes {bad_header}–"
    )
    assert by_key["c1"].error == "no image member"
    not_tar = [s for s in samples if s.key.startswith(shard[3])]
    assert len(not_tar) == 1 and not_tar[0].error.startswith(f"{shard[3]}: unreadable tar data at bytes 0–")
    assert [s.key for s in samples] == [
        "a0", "a1", "a2", "b0", "b1", "c0", damaged.key, "c1", "c2", not_tar[0].key, "e0", "e1",
    ]  # fmt: skip


def test_shard_cut_inside_a_header(tmp_path: Path) -> None:
    data = _tar_bytes("a", 3)
    cut = _offset(data, "a1.txt") + 100
    (tmp_path / "0.tar").write_bytes(data[:cut])
    (tmp_path / "1.tar").write_bytes(_tar_bytes("b", 1))
    samples = list(tar_samples(str(tmp_path / "{0..1}.tar"), Columns()))
    assert [(s.key, s.error) for s in samples] == [
        ("a0", None),
        ("a1", "no .txt or .json caption member"),
        (
            f"{tmp_path / '0.tar'}@{cut - 100}",
            f"{tmp_path / '0.tar'}: unreadable tar data at bytes {cut - 100}–{cut} (truncated header)",
        ),
        ("b0", None),
    ]


@pytest.mark.parametrize("content", [b"", None])
def test_unopenable_shard_is_one_error_row(tmp_path: Path, content: bytes | None) -> None:
    bad = tmp_path / "0.tar"
    if content is None:
        bad.mkdir()
    else:
        bad.write_bytes(content)
    (tmp_path / "1.tar").write_bytes(_tar_bytes("b", 1))
    samples = list(tar_samples(str(tmp_path / "{0..1}.tar"), Columns()))
    assert [s.key for s in samples] == [str(bad), "b0"]
    assert samples[0].error is not None and samples[0].error.startswith(f"{bad}: cannot read tar shard (")


def test_missing_shard_fails_before_the_first_sample(tmp_path: Path) -> None:
    (tmp_path / "0.tar").write_bytes(_tar_bytes("a", 1))
    (tmp_path / "2.tar").write_bytes(_tar_bytes("c", 1))
    samples = tar_samples(str(tmp_path / "{0..2}.tar"), Columns())
    with pytest.raises(ValueError, match=re.escape(f"tar shard not found: {tmp_path / '1.tar'}")):
        next(samples)


def test_long_unreadable_stretch_gives_up_on_the_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_MAX_SKIPPED_BYTES", 4 * tarfile.BLOCKSIZE)
    (tmp_path / "0.tar").write_bytes(_tar_bytes("a", 1)[:1024] + b"\x01" * 512 * 20 + _tar_bytes("b", 1))
    (tmp_path / "1.tar").write_bytes(_tar_bytes("c", 1))
    samples = list(tar_samples(str(tmp_path / "{0..1}.tar"), Columns()))
    assert [s.key for s in samples] == ["a0", f"{tmp_path / '0.tar'}@1024", "c0"]
    assert "cannot read tar shard (no valid tar header" in str(samples[1].error)


def test_scan_summary_names_the_new_failure_kinds(tmp_path):
    """A scan's failure table says what went wrong with thin images, non-files and broken shards."""
    from clipalign.runners.summary import failure_kind

    thin = tmp_path / "thin.png"
    Image.new("RGB", (5000, 1)).save(thin)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    kinds = []
    for path in (thin, fifo):
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        kinds.append(failure_kind(str(info.value)))
    assert kinds == ["image too thin", "not a file"]
    assert failure_kind("s.tar: member b1.png is truncated or unreadable (unexpected end of data)") == (
        "corrupt shard"
    )
