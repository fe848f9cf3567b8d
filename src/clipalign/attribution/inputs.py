"""Input handling shared by the attribution verbs: pairing images with captions, per-item errors, and
the loop every method runs them through (:func:`attribute_pairs`: prepare each pair alone, compute a
batch together, and when a batch fails compute its pairs one by one, so that only a pair that fails alone
gets an error)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Generic, Literal, TypeVar, cast, overload

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


Item = TypeVar("Item")
Result = TypeVar("Result")
Images = ImageInput | Sequence[ImageInput]
"""One image or a list of them, as every ``attribute`` takes."""
Captions = str | Sequence[str]
"""One caption or a list of them, one per image."""
OnError = Literal["record", "raise"]
"""``record``: a pair that fails becomes an :class:`ItemError`; ``raise``: the failure is raised."""


def compute_or_split(
    items: Sequence[Item],
    compute: Callable[[list[Item]], Sequence[Result]],
    failed: Callable[[Item, Exception], None],
) -> list[tuple[Item, Result]]:
    """``compute`` on all ``items`` at once, each item with its result; should that raise, on each item
    alone, so that only an item that fails alone goes to ``failed`` (which may raise) and the others stay."""
    done: list[tuple[Item, Result]] = []
    groups = [list(items)] if items else []
    while groups:
        group = groups.pop(0)
        try:
            results = compute(group)
        except Exception as exc:
            if len(group) == 1:
                failed(group[0], exc)
            else:
                groups = [[item] for item in group] + groups
            continue
        done += zip(group, results, strict=True)
    return done


def attribute_pairs(
    images: Sequence[ImageInput],
    captions: Sequence[str],
    prepare: Callable[[int, ImageInput, str], Item],
    compute: Callable[[list[Item]], Sequence[Result]],
    *,
    batch_size: int,
    on_error: OnError,
) -> list[Result | ItemError]:
    """One result per pair, in input order: pairs go ``batch_size`` at a time, each first prepared alone
    (``prepare(index, image, caption)``: what can fail for one pair, such as loading its image), then the
    prepared ones of the batch computed together (:func:`compute_or_split`). With ``on_error="record"``
    a pair that fails becomes an :class:`ItemError` and the others are still computed; ``"raise"`` raises."""
    slots: list[Result | ItemError | None] = [None] * len(captions)

    def failed(index: int, exc: Exception) -> None:
        if on_error == "raise":
            raise exc
        slots[index] = item_error(index, images[index], captions[index], exc)

    def compute_prepared(group: list[tuple[int, Item]]) -> Sequence[Result]:
        return compute([item for _, item in group])

    def failed_prepared(pair: tuple[int, Item], exc: Exception) -> None:
        failed(pair[0], exc)

    for lo in range(0, len(captions), batch_size):
        prepared: list[tuple[int, Item]] = []
        for index in range(lo, min(lo + batch_size, len(captions))):
            try:
                prepared.append((index, prepare(index, images[index], captions[index])))
            except Exception as exc:
                failed(index, exc)
        for (index, _), result in compute_or_split(
            prepared,
            lambda group: compute([item for _, item in group]),
            lambda pair, exc: failed(pair[0], exc),
        ):
            slots[index] = result
    return [slot for slot in slots if slot is not None]


class PairMethod(ABC, Generic[Item, Result]):
    """An attribution method over image–caption pairs: ``attribute`` pairs them up and runs
    :func:`attribute_pairs` with the subclass's :meth:`_prepare` and :meth:`_compute`."""

    @property
    def pair_batch_size(self) -> int:
        """Pairs computed together (one unless a method batches them)."""
        return 1

    @overload
    def attribute(
        self, images: Images, captions: Captions, *, on_error: Literal["raise"]
    ) -> list[Result]: ...

    @overload
    def attribute(
        self, images: Images, captions: Captions, *, on_error: Literal["record"] = ...
    ) -> list[Result | ItemError]: ...

    def attribute(
        self, images: Images, captions: Captions, *, on_error: OnError = "record"
    ) -> list[Result] | list[Result | ItemError]:
        """One result per pair, in input order, ``pair_batch_size`` pairs computed together.

        With ``on_error="record"`` a pair that fails (an unreadable image, an invalid caption, any error
        while computing it) becomes an :class:`ItemError` saying why and the others are still computed:
        a batch that fails is computed again pair by pair, so only the pairs that fail alone get an
        error. ``on_error="raise"`` raises.
        """
        image_list, caption_list = pair_up(images, captions)
        return attribute_pairs(
            image_list,
            caption_list,
            self._prepare,
            self._compute,
            batch_size=self.pair_batch_size,
            on_error=on_error,
        )

    @abstractmethod
    def _prepare(self, index: int, image: ImageInput, caption: str) -> Item:
        """What can fail for one pair alone (loading its image, encoding its caption)."""

    @abstractmethod
    def _compute(self, group: list[Item]) -> Sequence[Result]:
        """The results of prepared pairs, computed together, in the group's order."""
