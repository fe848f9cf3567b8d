"""Image inputs: load paths, PIL images, arrays and tensors as fully decoded RGB images.

Names load on first use (PEP 562), so that :mod:`clipalign.images.geometry` (boxes, used by the dataset
items) can be imported without the loader's torch and numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipalign._lazy import lazy_exports

if TYPE_CHECKING:
    from clipalign.images.loading import (
        MAX_ASPECT_RATIO,
        ImageInput,
        ImageLoadError,
        describe_source,
        load_image,
    )

_EXPORTS: dict[str, str] = {
    name: "clipalign.images.loading"
    for name in ("MAX_ASPECT_RATIO", "ImageInput", "ImageLoadError", "describe_source", "load_image")
}
"""Public name → the module that defines it, imported when the name is first read."""

__all__ = ["MAX_ASPECT_RATIO", "ImageInput", "ImageLoadError", "describe_source", "load_image"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
