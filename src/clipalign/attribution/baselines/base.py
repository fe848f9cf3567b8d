"""The interface shared by the first-order baselines: an image and a caption span in, a patch map out.

Every method is a class built once from a model adapter, with one ``attribute(images, captions, spans)``
returning, per pair, a :class:`PatchMap` (rows × cols patch values for the span, with the preprocessing
geometry to draw them on the original image) or an :class:`~clipalign.results.ItemError`, as
:class:`~clipalign.TokenPatchInteractions` does. Pairs are computed ``batch_size`` at a time; when a batch
fails its pairs are retried one by one, so only a pair that fails alone gets an error.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, cast, overload

import numpy as np
import torch
from PIL import Image

from clipalign.attribution.inputs import Captions, Images, OnError, attribute_pairs, pair_up
from clipalign.images import ImageInput, describe_source, load_image
from clipalign.images.geometry import ImageGeometry, grid_to_image
from clipalign.models.base import ClipAdapter, InteractionAdapter
from clipalign.results import ItemError

SpanInput = str | tuple[int, int] | None
"""A caption span: a phrase (its first occurrence in the caption), a character range [start, end), or
None for the whole caption."""
Spans = SpanInput | Sequence[SpanInput]
"""One span for every pair, or one per pair."""

TextSource = Literal["span", "caption"]

S = TypeVar("S", bound="BaselineSettings")


@dataclass(frozen=True, kw_only=True)
class BaselineSettings:
    """What every text-conditioned baseline shares.

    ``text``: which text the image is compared with: ``span`` embeds the span's words alone (a first-order
    image map can only follow a span through its own embedding), ``caption`` the whole caption.
    ``template`` is prefixed to that text (none by default, as for interactions). ``batch_size`` pairs
    are computed at once; it does not change the numbers.
    """

    text: TextSource = "span"
    template: str = ""
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.text not in ("span", "caption"):
            raise ValueError(f"text must be 'span' or 'caption', got {self.text!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")

    def replace(self: S, **changes: Any) -> S:
        """A copy with some fields changed (validated as the constructor validates)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields that decide the numbers (not ``batch_size``), for reports and caches."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "batch_size"}


@dataclass(frozen=True, eq=False)
class PatchMap:
    """One pair's first-order map for a caption span: ``values`` (rows, cols) over the patch grid.

    Positive = the patch raises the image's similarity with ``text`` (the text that was embedded: the
    span, or the caption). ``span`` is the span's [start, end) characters in ``caption``. ``details``
    holds method-specific diagnostics (Integrated Gradients: its completeness terms).
    """

    method: str
    caption: str
    text: str
    span: tuple[int, int]
    grid: tuple[int, int]
    values: np.ndarray = field(repr=False)
    geometry: ImageGeometry
    source: str | None = None
    details: dict[str, float] = field(default_factory=dict)

    def heatmap(self) -> np.ndarray:
        """The patch values over the original image's pixels (H, W); NaN outside the model's crop."""
        return grid_to_image(self.values, self.geometry)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only."""
        return {
            "method": self.method,
            "caption": self.caption,
            "text": self.text,
            "span": list(self.span),
            "grid": list(self.grid),
            "values": self.values.tolist(),
            "geometry": dataclasses.asdict(self.geometry),
            "source": self.source,
            "details": dict(self.details),
        }


def span_list_of(spans: SpanInput | Sequence[SpanInput], count: int) -> list[SpanInput]:
    """One span for every pair, or a list with one per pair: (2, 5) is one character range, not two spans."""
    if spans is None or isinstance(spans, str):
        return [spans] * count
    if isinstance(spans, tuple) and len(spans) == 2 and all(isinstance(v, int) for v in spans):
        return [cast(tuple[int, int], spans)] * count
    return list(cast(Sequence[SpanInput], spans))


def resolve_span(caption: str, span: SpanInput) -> tuple[int, int]:
    """[start, end) characters of a span in ``caption``; a ValueError when it is empty or not in it."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("the caption is empty")
    if span is None:
        return 0, len(caption)
    if isinstance(span, str):
        start = caption.find(span) if span.strip() else -1
        if start < 0:
            raise ValueError(f"span {span!r} does not occur in the caption {caption!r}")
        return start, start + len(span)
    start, end = (int(v) for v in cast(tuple[int, int], span))
    if not 0 <= start < end <= len(caption) or not caption[start:end].strip():
        raise ValueError(
            f"span {span!r} is not a non-empty character range of a {len(caption)}-character caption"
        )
    return start, end


@dataclass
class Prepared:
    """One pair ready to compute: its position in the call, loaded image, span, the text to embed and its
    image input described for the result."""

    position: int
    image: Image.Image
    caption: str
    span: tuple[int, int]
    text: str
    source: str


class FirstOrderMethod(ABC):
    """Base of the baselines: input handling, batching, per-pair errors; subclasses compute the maps.

    Subclasses set ``name`` (the registry key) and ``settings_class``, and implement :meth:`_maps`.
    """

    name: ClassVar[str]
    settings_class: ClassVar[type[BaselineSettings]] = BaselineSettings

    def __init__(
        self, model: ClipAdapter, *, settings: BaselineSettings | None = None, **changes: Any
    ) -> None:
        if not isinstance(model, InteractionAdapter):
            raise ValueError(
                f"{model.name}: {self.name} needs a patch grid and image geometry (InteractionAdapter)"
            )
        base = settings if settings is not None else self.settings_class()
        if not isinstance(base, self.settings_class):
            raise TypeError(f"{self.name} takes {self.settings_class.__name__}, got {type(base).__name__}")
        self.settings = base.replace(**changes)
        self.model: InteractionAdapter = model

    @overload
    def attribute(
        self, images: Images, captions: Captions, spans: Spans = ..., *, on_error: Literal["raise"]
    ) -> list[PatchMap]: ...

    @overload
    def attribute(
        self, images: Images, captions: Captions, spans: Spans = ..., *, on_error: Literal["record"] = ...
    ) -> list[PatchMap | ItemError]: ...

    def attribute(
        self, images: Images, captions: Captions, spans: Spans = None, *, on_error: OnError = "record"
    ) -> list[PatchMap] | list[PatchMap | ItemError]:
        """One :class:`PatchMap` per pair, in input order, for its span (one span, or one per pair).

        With ``on_error="record"`` a pair that fails (an unreadable image, an empty caption, a span not
        in its caption, any error while computing it) becomes an :class:`ItemError` and the others are
        still computed; ``on_error="raise"`` raises instead.
        """
        image_list, caption_list = pair_up(images, captions)
        span_list = span_list_of(spans, len(caption_list))
        if len(span_list) != len(caption_list):
            raise ValueError(f"got {len(span_list)} spans but {len(caption_list)} captions")

        def prepare(index: int, image: ImageInput, caption: str) -> Prepared:
            start, end = resolve_span(caption, span_list[index])
            text = caption[start:end] if self.settings.text == "span" else caption
            return Prepared(index, load_image(image), caption, (start, end), text, describe_source(image))

        return attribute_pairs(
            image_list,
            caption_list,
            prepare,
            self._patch_maps,
            batch_size=self.settings.batch_size,
            on_error=on_error,
        )

    def _patch_maps(self, group: list[Prepared]) -> list[PatchMap]:
        """:meth:`_maps` of prepared pairs, each as a :class:`PatchMap`."""
        return [
            PatchMap(
                method=self.name,
                caption=item.caption,
                text=item.text,
                span=item.span,
                grid=self.model.patch_grid,
                values=values,
                geometry=self.model.image_geometry(*item.image.size),
                source=item.source,
                details=details,
            )
            for item, (values, details) in zip(group, self._maps(group), strict=True)
        ]

    @abstractmethod
    def _maps(self, group: Sequence[Prepared]) -> list[tuple[np.ndarray, dict[str, float]]]:
        """Per prepared pair: its (rows, cols) map as float64 and method details, in the group's order."""

    # --- helpers the model-based methods share ---

    def _pixels(self, group: Sequence[Prepared]) -> torch.Tensor:
        return self.model.preprocess([item.image for item in group])

    def _directions(self, group: Sequence[Prepared]) -> torch.Tensor:
        """Unit text embeddings (B, D) of each pair's text, templated."""
        return text_directions(self.model, [item.text for item in group], self.settings.template)

    def _grids(self, values: torch.Tensor) -> list[np.ndarray]:
        """(B, P) patch values (row-major) → one float64 (rows, cols) array per pair."""
        rows, cols = self.model.patch_grid
        array = values.detach().double().cpu().numpy()
        return [a.reshape(rows, cols) for a in array]


def text_directions(model: ClipAdapter, texts: Sequence[str], template: str) -> torch.Tensor:
    """Unit text embeddings (B, D), fp32 or wider, of ``template + text`` for each text."""
    encoded = model.encode_captions(list(texts), template)
    with torch.no_grad():
        embeds = model.text_embeddings(model.collate(encoded)).embeds
    return torch.nn.functional.normalize(embeds, dim=-1)


def split_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, d) → (B, heads, S, d / heads)."""
    batch, length, width = states.shape
    return states.view(batch, length, heads, width // heads).transpose(1, 2)


def merge_heads(states: torch.Tensor) -> torch.Tensor:
    """(B, heads, S, hd) → (B, S, heads · hd)."""
    batch, heads, length, width = states.shape
    return states.transpose(1, 2).reshape(batch, length, heads * width)
