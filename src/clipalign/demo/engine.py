"""What the web demo computes, without the web: checked uploads, word scores, interactions, heatmaps."""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass, replace

import numpy as np
from matplotlib import colormaps
from PIL import Image, UnidentifiedImageError

from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.words import CLIP4DM, Mode
from clipalign.images import load_image
from clipalign.images.geometry import grid_to_image
from clipalign.models.base import InteractionAdapter
from clipalign.results import Interactions, WordAlignment
from clipalign.text import CaptionTruncatedWarning
from clipalign.text.alignment import DEFAULT_TEMPLATE
from clipalign.viz.html import image_data_url
from clipalign.viz.palette import CMAP, diverging_norm

DISPLAY_SIDE = 1024
"""Longest side of the copy of an upload the page shows (and heatmaps are drawn at)."""


class DemoInputError(ValueError):
    """Input the demo refuses; the message is shown on the page as is, with HTTP ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """A checked image upload: the file as received, its size after EXIF rotation, a copy to display."""

    data: bytes
    width: int
    height: int
    display: str
    display_size: tuple[int, int]


def check_upload(data: bytes, max_pixels: int) -> Upload:
    """Accept an image file: its size is read from the header and checked before anything is decoded."""
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
    image = decode(data)
    display = image.copy()
    display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return Upload(data, image.width, image.height, image_data_url(display, DISPLAY_SIDE), display.size)


def decode(data: bytes) -> Image.Image:
    """The upload as a fully decoded RGB image (truncated or corrupt files raise :class:`DemoInputError`)."""
    try:
        return load_image(Image.open(io.BytesIO(data)))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DemoInputError(f"This image cannot be read: {exc}") from None


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
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), float(norm.vmax)


class DemoEngine:
    """The model, loaded once, and the two computations that need it. Call it from one thread at a time."""

    def __init__(
        self,
        model: InteractionAdapter,
        *,
        layers: int = 3,
        epsilon: float = -5e-5,
        mode: Mode = "threshold",
        template: str = DEFAULT_TEMPLATE,
        steps: int = 10,
    ) -> None:
        self.mode = mode
        self.context = model.max_text_tokens
        self.attributor = CLIP4DM(model, layers=layers, template=template, epsilon=epsilon)
        self.interactions = TokenPatchInteractions(model, steps=steps)

    def words(self, upload: Upload, caption: str) -> tuple[WordAlignment, list[str]]:
        """Word scores of the pair, and the warnings to show on the page (a caption cut at the context)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaptionTruncatedWarning)
            [result] = self.attributor.attribute(
                [decode(upload.data)], [caption], mode=self.mode, on_error="raise"
            )
        assert isinstance(result, WordAlignment)
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
            [result] = self.interactions.attribute([decode(upload.data)], [caption])
        return result
