"""Input handling shared by the attribution verbs: pairing images with captions, per-item errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from clipalign.images import ImageInput, describe_source
from clipalign.results import ItemError


def pair_up(
    images: ImageInput | Sequence[ImageInput], captions: str | Sequence[str]
) -> tuple[list[ImageInput], list[str]]:
    """One image (or a list) and one caption (or a list) as two lists of equal length."""
    caption_list = [captions] if isinstance(captions, str) else list(captions)
    # a str or bytes path is one image even though it is also a Sequence
    image_list = list(images) if isinstance(images, (list, tuple)) else [cast(ImageInput, images)]
    if len(image_list) != len(caption_list):
        raise ValueError(f"got {len(image_list)} images but {len(caption_list)} captions")
    return image_list, caption_list


def item_error(index: int, image: ImageInput, caption: object, exc: Exception) -> ItemError:
    """The record of a pair that could not be scored: which one (input index, source) and why."""
    return ItemError(index, describe_source(image), caption if isinstance(caption, str) else None, str(exc))
