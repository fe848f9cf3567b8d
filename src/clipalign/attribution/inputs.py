"""Input handling shared by the attribution verbs: pairing images with captions, per-item errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from clipalign.images import ImageInput, ImageLoadError, describe_source
from clipalign.results import ItemError
from clipalign.text.alignment import CaptionError


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


def reason(exc: BaseException) -> str:
    """Why a pair failed, on one line: the message of an expected error (unreadable image, bad caption);
    for any other exception its type too, since messages such as a tokenizer's TypeError say little alone."""
    if isinstance(exc, (ImageLoadError, CaptionError)):
        return str(exc)
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def item_error(index: int, image: ImageInput, caption: object, exc: Exception) -> ItemError:
    """The record of a pair that could not be scored: which one (input index, source) and why."""
    text = caption if isinstance(caption, str) else None
    return ItemError(index, describe_source(image), text, reason(exc))
