"""Turn any supported image input (path, PIL image, array, tensor) into a fully decoded RGB PIL image.

Conversion is deliberately predictable: EXIF orientation is applied, animated files give their first
frame, 16-bit data is rescaled rather than clipped, and transparency is composited over white, because
a fixed background gives the same pixels on every run and CLIP was trained mostly on opaque photos.
"""

from __future__ import annotations

import io
import os
import stat
from typing import TypeAlias

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | Image.Image | np.ndarray | torch.Tensor
"""Everything ``load_image`` accepts: a file path, encoded file bytes, a PIL image, or an HWC / CHW / HW
numpy array or tensor."""

MAX_ASPECT_RATIO = 50.0
"""Default limit on longest side ÷ shortest side, checked from the header before decoding.

CLIP processors scale the shortest edge up to the model input (224–336 px) before the centre crop,
so a 100000×1 file of a few hundred bytes would become a 22-gigapixel array. Capping the aspect at
50:1 bounds the resized image at 50 × input² pixels (16800×336 for a 336-px model); the crop of a
50:1 image already shows the model only 2% of it, so nothing wider is worth scoring."""

_BACKGROUND = (255, 255, 255)
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_CHANNEL_COUNTS = (1, 3, 4)
_FLOAT_TOLERANCE = 1e-3
_READ_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (FileNotFoundError, "no such file"),
    (IsADirectoryError, "is a directory"),
    (PermissionError, "permission denied"),
    (UnidentifiedImageError, "not an image file, or a format PIL cannot read"),
)
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


READ_FAILURE = "cannot read image"
"""Part of every message about a file (or bytes) that could not be read: missing, not a regular file, not
an image, truncated, unreadable. Unlike the other load errors it may pass once the file is fixed."""


class ImageLoadError(ValueError):
    """An input that cannot be turned into an RGB image; the message starts with ``describe_source``."""


def describe_source(source: object) -> str:
    """A short, human-readable name for an image input, used in error messages and results."""
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height} {source.mode}>"
    if isinstance(source, np.ndarray):
        return f"<array {tuple(source.shape)} {source.dtype.name}>"
    if isinstance(source, torch.Tensor):
        return f"<tensor {tuple(source.shape)} {str(source.dtype).removeprefix('torch.')}>"
    return f"<{type(source).__name__}>"


def load_image(
    source: ImageInput,
    *,
    max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Load ``source`` as a new, fully decoded RGB image, raising ``ImageLoadError`` for anything unusable.

    A PIL image is used at its current frame, so frames from ``ImageSequence`` can be scored one by one.
    Files must be regular files (a FIFO would block), and images whose longest side exceeds
    ``max_aspect_ratio`` × the shortest are refused before decoding (``None`` allows any shape); the
    pixel-count limit is PIL's ``Image.MAX_IMAGE_PIXELS`` decompression-bomb check. ``draft`` (width,
    height) lets a JPEG file be decoded at 1/2, 1/4 or 1/8 scale (PIL's draft mode), the smallest that
    keeps both sides at least that; other formats and inputs are unaffected.
    """
    if max_aspect_ratio is not None and not max_aspect_ratio >= 1:
        raise ValueError(f"max_aspect_ratio must be at least 1 or None, got {max_aspect_ratio!r}")
    name = describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        _require_regular_file(source, name)
        return _to_rgb(_read_file(source, name, max_aspect_ratio, draft), name)
    if isinstance(source, bytes):
        return _to_rgb(_read_file(io.BytesIO(source), name, max_aspect_ratio, draft), name)
    if isinstance(source, Image.Image):
        _check_aspect(source.width, source.height, name, max_aspect_ratio)
        return _to_rgb(_decode(source, name), name)
    if isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return _from_array(tensor.numpy(), name, max_aspect_ratio)
    if isinstance(source, np.ndarray):
        return _from_array(source, name, max_aspect_ratio)
    raise ImageLoadError(
        f"{name}: unsupported image input; expected a file path "
        "(str or os.PathLike), encoded bytes, a PIL.Image.Image, a numpy.ndarray or a torch.Tensor"
    )


def _require_regular_file(path: str | os.PathLike[str], name: str) -> None:
    """Refuse directories, FIFOs, sockets and devices before opening: reading a FIFO with no writer hangs."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _read_error(name, exc) from exc
    if stat.S_ISDIR(mode):
        raise _read_error(name, IsADirectoryError(path))
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _SPECIAL_FILES if test(mode)), "special file")
        raise ImageLoadError(f"{name}: {READ_FAILURE}: not a regular file (a {kind})")


def _check_aspect(width: int, height: int, name: str, max_aspect_ratio: float | None) -> None:
    """Refuse a long thin image, which the processor's shortest-edge resize would blow up in memory."""
    if max_aspect_ratio is None or width == 0 or height == 0:
        return
    longest, shortest = max(width, height), min(width, height)
    if longest > max_aspect_ratio * shortest:
        ratio = f"{longest / shortest:.1f}".removesuffix(".0")
        limit = f"{max_aspect_ratio:.1f}".removesuffix(".0")
        raise ImageLoadError(
            f"{name}: image is {width}×{height} (aspect {ratio}:1), more than {limit}:1 (max_aspect_ratio); "
            "scaling its short side up to the model input would take too much memory"
        )


def _read_file(
    path: str | os.PathLike[str] | io.BytesIO,
    name: str,
    max_aspect_ratio: float | None,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Open an image file, check its header size, then decode the first frame (truncation fails here),
    reduced in draft mode to no less than ``draft`` when given and the format allows it."""
    try:
        image = Image.open(path)
    except Exception as exc:
        raise _read_error(name, exc) from exc
    with image:
        _check_aspect(image.width, image.height, name, max_aspect_ratio)
        if draft is not None:
            image.draft(None, draft)
        return _decode(image, name)


def _decode(image: Image.Image, name: str) -> Image.Image:
    """Force the pixel data to load, then return a copy rotated/flipped as its EXIF orientation says."""
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    # PIL's format plugins raise many exception types on malformed data; all of them mean "unreadable".
    except Exception as exc:
        raise _read_error(name, exc) from exc


def _read_error(name: str, exc: Exception) -> ImageLoadError:
    """A one-line error naming the source and saying why it could not be read."""
    reason = next((text for kind, text in _READ_REASONS if isinstance(exc, kind)), None)
    if reason is None:
        message = str(exc).strip()
        reason = message.splitlines()[0] if message else type(exc).__name__
    if isinstance(exc, Image.DecompressionBombError):
        reason += " (raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted)"
    return ImageLoadError(f"{name}: {READ_FAILURE}: {reason}")


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert a decoded image of any PIL mode to RGB: alpha over white, 16-bit ÷257, F as [0, 1] or 0–255.

    Other modes use PIL's own conversion; mode I has no known bit depth, so PIL clips it to 0–255.
    """
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"{name}: image has zero size ({image.width}x{image.height})")
    if _has_alpha(image):
        return _over_white(image.convert("RGBA"))
    if image.mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray(_uint16_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode == "F":
        return Image.fromarray(_float_image_to_uint8(np.asarray(image), name)).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(f"{name}: cannot convert image mode {image.mode} to RGB: {exc}") from exc


def _has_alpha(image: Image.Image) -> bool:
    """True for alpha modes, a transparent colour key, or a palette carrying alpha."""
    if image.mode in _ALPHA_MODES:
        return True
    if image.mode in ("L", "P", "RGB") and "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode.endswith("A")


def _over_white(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image over an opaque white background."""
    background = Image.new("RGB", rgba.size, _BACKGROUND)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """Rescale 16-bit values to 8 bits as round(value / 257), so 65535 → 255 and 257·k → k."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _unit_float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] to 0–255 with rounding, clipping tiny excursions outside the range."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _require_finite(values: np.ndarray, name: str) -> None:
    """Reject NaN or infinite pixel values, which have no meaningful colour."""
    if not np.isfinite(values).all():
        raise ImageLoadError(f"{name}: pixel values contain NaN or infinity")


def _float_image_to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    """Mode F pixels: taken as [0, 1] when the maximum is at most 1, otherwise as 0–255 and clipped."""
    values = values.astype(np.float64)
    _require_finite(values, name)
    if values.max() <= 1.0:
        return _unit_float_to_uint8(values)
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Pixel values of a supported dtype as uint8: bool, uint8, uint16 (÷257) or float in [0, 1] (×255)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return _uint16_to_uint8(array)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        _require_finite(values, name)
        low, high = values.min(), values.max()
        if low < -_FLOAT_TOLERANCE or high > 1.0 + _FLOAT_TOLERANCE:
            raise ImageLoadError(
                f"{name}: float pixel values must lie in [0, 1], got [{low:.4g}, {high:.4g}] "
                "(divide 0–255 data by 255, or pass uint8)"
            )
        return _unit_float_to_uint8(values)
    raise ImageLoadError(f"{name}: unsupported pixel dtype; expected uint8, uint16, bool or float in [0, 1]")


def _from_array(array: np.ndarray, name: str, max_aspect_ratio: float | None) -> Image.Image:
    """Build an RGB image from an HxW, HxWxC or CxHxW array (C in 1, 3, 4; CHW only if the last dim isn't)."""
    if array.size == 0:
        raise ImageLoadError(f"{name}: empty array")
    if array.ndim == 3 and array.shape[0] in _CHANNEL_COUNTS and array.shape[-1] not in _CHANNEL_COUNTS:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ImageLoadError(
            f"{name}: unsupported array shape; expected HxW, HxWxC or CxHxW with C in 1, 3 or 4"
        )
    _check_aspect(array.shape[1], array.shape[0], name, max_aspect_ratio)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(_array_to_uint8(array, name))), name)
