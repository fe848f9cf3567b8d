"""What the web demo computes, without the web: checked uploads, word scores, interactions, heatmaps."""

from __future__ import annotations

import base64
import ctypes
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
from matplotlib import colormaps
from PIL import ExifTags, Image, UnidentifiedImageError

from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.words import CLIP4DM
from clipalign.images import load_image
from clipalign.images.geometry import grid_to_image
from clipalign.models.base import InteractionAdapter
from clipalign.results import Interactions, WordAlignment
from clipalign.settings import InteractionSettings, WordSettings
from clipalign.text import CaptionTruncatedWarning
from clipalign.viz.html import image_data_url
from clipalign.viz.palette import CMAP, diverging_norm

DISPLAY_SIDE = 1024
"""Longest side of the copy of an upload the page shows (and heatmaps are drawn at)."""


class DemoInputError(ValueError):
    """Input the demo refuses; the message is shown on the page as is, with HTTP ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


_TRANSPOSED = frozenset({5, 6, 7, 8})
"""EXIF orientations that swap width and height."""
_NEAREST_MODES = frozenset({"1", "P", "PA"})
"""Modes PIL resizes by nearest neighbour: converted to RGB at full size before shrinking."""
MAX_ASPECT = 50
"""Longest side over shortest side accepted: the processor scales the short side up to the model's input,
so a long thin image would become huge once resized."""


@dataclass(frozen=True)
class Upload:
    """A checked image upload: the file as received and its size after EXIF rotation.

    Only the encoded bytes are kept (not decoded pixels) so that stored uploads stay small; the model's
    calls decode them again.
    """

    data: bytes
    width: int
    height: int
    display_size: tuple[int, int]


def check_upload(data: bytes, max_pixels: int) -> Upload:
    """Accept an image file (see :func:`read_upload`), without its copy to display."""
    return read_upload(data, max_pixels)[0]


def read_upload(data: bytes, max_pixels: int) -> tuple[Upload, str]:
    """Accept an image file and return it with a ``data:`` URL of a copy to display.

    Its size and aspect ratio are read from the header and checked before anything is decoded.
    """
    if not data:
        raise DemoInputError("The file is empty.")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError:
        raise DemoInputError(
            f"The image is too large: the demo accepts up to {max_pixels:,} pixels.", 413
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise DemoInputError("This file is not an image (or not in a format PIL can read).") from None
    if width * height > max_pixels:
        raise DemoInputError(
            f"The image is {width}×{height} ({width * height / 1e6:.0f} megapixels); the demo accepts up to "
            f"{max_pixels / 1e6:.0f} megapixels. Shrink it and upload it again.",
            413,
        )
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise DemoInputError(
            f"The image is {width}×{height}, too long and thin: the demo accepts sides up to "
            f"{MAX_ASPECT}:1. Crop it and upload it again.",
            413,
        )
    display, (width, height) = _display_copy(data)
    return Upload(data, width, height, display.size), image_data_url(display, DISPLAY_SIDE)


def _display_copy(data: bytes) -> tuple[Image.Image, tuple[int, int]]:
    """The upload decoded in full (so broken files fail here), kept as an RGB copy of at most
    ``DISPLAY_SIDE`` pixels, and its full size after EXIF rotation.

    It is shrunk (JPEG: decoded at a reduced scale) before rotation and conversion, so a decode holds one
    full-size buffer rather than three.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.getexif().get(ExifTags.Base.Orientation, 1) in _TRANSPOSED:
                width, height = height, width
            image.draft(None, (DISPLAY_SIDE, DISPLAY_SIDE))
            image.load()
            if image.mode not in _NEAREST_MODES:
                image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
            display = load_image(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DemoInputError(f"This image cannot be read: {exc}") from None
    display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return display, (width, height)


def decode(data: bytes) -> Image.Image:
    """The upload as a fully decoded RGB image (truncated or corrupt files raise :class:`DemoInputError`)."""
    try:
        return load_image(Image.open(io.BytesIO(data)))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DemoInputError(f"This image cannot be read: {exc}") from None


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return cast(Callable[[int], int], ctypes.CDLL(None).malloc_trim)
    except (OSError, AttributeError, TypeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_memory() -> None:
    """Hand freed memory back to the OS: glibc keeps a large decode's buffers in its per-thread arenas,
    so a burst of big uploads would otherwise leave the server hundreds of MB larger."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def heatmap_png(
    result: Interactions, words: list[int], size: tuple[int, int], alpha: float = 0.6
) -> tuple[str, float]:
    """The words' interaction map as a PNG ``data:`` URL at ``size`` (transparent outside the crop) and ±peak.

    Colours as in :func:`clipalign.viz.heatmap.span_figure`: centred at 0, green supports, magenta against.
    """
    heat = grid_to_image(result.span_grid(words), replace(result.geometry, original=size))
    norm = diverging_norm(heat)
    rgba = colormaps[CMAP](norm(np.nan_to_num(heat)))
    rgba[..., 3] = np.where(np.isnan(heat), 0.0, alpha)
    buffer = io.BytesIO()
    Image.fromarray(np.round(rgba * 255).astype(np.uint8), "RGBA").save(buffer, format="PNG")
    peak = cast(float, norm.vmax)  # set by the norm's constructor, never None here
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), peak


class DemoEngine:
    """The model, loaded once, and the two computations that need it. Call it from one thread at a time.

    ``words`` sets the word scores (mode included), ``interactions`` the heatmaps; None = the defaults.
    """

    def __init__(
        self,
        model: InteractionAdapter,
        *,
        words: WordSettings | None = None,
        interactions: InteractionSettings | None = None,
    ) -> None:
        self.context = model.max_text_tokens
        self.attributor = CLIP4DM(model, settings=words)
        self.interactions = TokenPatchInteractions(model, settings=interactions)

    def words(self, upload: Upload, caption: str) -> tuple[WordAlignment, list[str]]:
        """Word scores of the pair, and the warnings to show on the page (a caption cut at the context)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaptionTruncatedWarning)
            [result] = self.attributor.attribute([decode(upload.data)], [caption], on_error="raise")
        if not result.truncated_words:
            return result, []
        return result, [
            f"The caption is longer than the text encoder's context ({self.context} tokens): its last "
            f"{len(result.truncated_words)} words were not scored (struck out below)."
        ]

    def token_patch(self, upload: Upload, caption: str) -> Interactions:
        """Token×patch interactions of the pair (the slow part: one JVP per position and node)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaptionTruncatedWarning)
            [result] = self.interactions.attribute([decode(upload.data)], [caption], on_error="raise")
        return result
