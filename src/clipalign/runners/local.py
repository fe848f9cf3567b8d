"""The local scan engine: stream samples, prepare batches in threads, score them, write Parquet parts.

Worker threads decode and preprocess each image and a collating thread tokenises each batch's captions
in one call and stacks its pixels, while the model scores the batch before
(:func:`~clipalign.attribution.feeding.prepared_ahead`).

Output is a directory of ``part-NNNNN.parquet`` files, or one ``.parquet`` file merged from them at
the end, written by :class:`~clipalign.runners.output.PartWriter`: parts are committed to a manifest,
so a killed run resumes after the last committed part with no duplicate and no missing item.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from tqdm import tqdm

from clipalign.attribution.feeding import prepared_ahead
from clipalign.attribution.inputs import reason
from clipalign.attribution.words import CLIP4DM, PreparedBatch
from clipalign.images import load_image
from clipalign.models.base import ClipAdapter, StatesAdapter
from clipalign.results import ItemError, WordAlignment, word_row
from clipalign.runners.output import PartWriter, writing
from clipalign.runners.schema import METADATA_KEY as METADATA_KEY
from clipalign.runners.schema import SCHEMA, Row
from clipalign.runners.sources import Sample
from clipalign.settings import ScanSettings

SCORE_COLUMNS = [name for name in SCHEMA.names if name not in ("index", "key", "caption", "error")]
"""The columns taken from a scored pair's ``word_row`` (null when it could not be scored)."""

SPAN_FIELDS = [f.name for f in SCHEMA.field("spans").type.value_type]
"""What a span keeps in the Parquet output (not its word indices)."""


def _text(value: object) -> str | None:
    """A string column's value: None for a non-string, lone surrogates escaped (Parquet needs UTF-8)."""
    if not isinstance(value, str):
        return None
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def error_row(sample: Sample, error: str) -> Row:
    """The row of a sample that could not be scored; any caption, key or reason is stored as valid text."""
    return {
        "index": sample.index,
        "key": _text(sample.key),
        "caption": _text(sample.caption),
        "error": _text(error),
    }


def result_row(sample: Sample, result: WordAlignment) -> Row:
    """The sample's row: the SCHEMA's columns selected from :func:`~clipalign.results.word_row`."""
    row = word_row(result)
    row["spans"] = [{k: s[k] for k in SPAN_FIELDS} for s in row["spans"]]
    return {
        "index": sample.index,
        "key": _text(sample.key),
        "caption": sample.caption,
        **{name: row[name] for name in SCORE_COLUMNS},
        "error": None,
    }


def decode(sample: Sample, draft: tuple[int, int] | None = None) -> Image.Image | str:
    """The sample's RGB image, or the reason it cannot be used (runs in worker threads; never raises).

    ``draft`` (width, height): a JPEG is decoded at the smallest scale that keeps both sides at least that.
    """
    if sample.error is not None:
        return sample.error
    if sample.image is None:
        return "no image"
    try:
        return load_image(sample.image, draft=draft)
    except Exception as exc:
        return reason(exc)


Loaded = torch.Tensor | Exception | str
"""A sample's pixel values (3, H, W), why its image could not be decoded (str) or preprocessed."""


def load_sample(model: ClipAdapter, sample: Sample, draft: tuple[int, int] | None = None) -> Loaded:
    """Decode a sample's image and preprocess it (in a worker thread; never raises)."""
    image = decode(sample, draft)
    if isinstance(image, str):
        return image
    try:
        return model.pixel_values([image])[0]
    except Exception as exc:
        return exc


@dataclass
class SampleBatch:
    """A batch of samples with the rows already known (errors) and the rest prepared for the model."""

    samples: list[Sample]
    rows: list[Row | None]
    prepared: PreparedBatch
    todo: list[int]
    """Position in ``samples`` of each pair of ``prepared``."""


def prepare_samples(attributor: CLIP4DM, samples: Sequence[Sample], loaded: Sequence[Loaded]) -> SampleBatch:
    """Error rows for samples without an image or caption; the others prepared (captions tokenised in one
    call, pixels stacked) by :meth:`CLIP4DM.prepare`. Safe in a worker thread."""
    rows: list[Row | None] = [None] * len(samples)
    todo: list[int] = []
    for i, (sample, image) in enumerate(zip(samples, loaded, strict=True)):
        if isinstance(image, str):
            rows[i] = error_row(sample, image)
        elif sample.caption is None:
            rows[i] = error_row(sample, "no caption")
        else:
            todo.append(i)
    prepared = attributor.prepare(
        [samples[i].image for i in todo],
        [samples[i].caption for i in todo],
        [cast(torch.Tensor | Exception, loaded[i]) for i in todo],
    )
    return SampleBatch(list(samples), rows, prepared, todo)


def score_samples(attributor: CLIP4DM, batch: SampleBatch) -> list[Row]:
    """Rows for one prepared batch, in sample order: one forward and one backward for every sample that
    could be prepared; every failure of one sample is its error row (CLIP4DM retries a failing batch pair
    by pair, so the scan always gets one row per sample)."""
    rows = list(batch.rows)
    results = attributor.score_prepared(batch.prepared)
    for i, result in zip(batch.todo, results, strict=True):
        sample = batch.samples[i]
        rows[i] = (
            error_row(sample, result.error) if isinstance(result, ItemError) else result_row(sample, result)
        )
    return [r for r in rows if r is not None]


def score_batch(attributor: CLIP4DM, samples: Sequence[Sample], loaded: Sequence[Loaded]) -> list[Row]:
    """Rows for one batch of loaded samples (:func:`load_sample`), prepared and scored in this thread."""
    return score_samples(attributor, prepare_samples(attributor, samples, loaded))


def draft_size(model: ClipAdapter) -> tuple[int, int] | None:
    """(width, height) a JPEG may be reduced to with ``--jpeg-draft``: twice the model input's sides, so the
    processor still downsizes every drafted image (its resize target is at most the input size).

    The input size is the crop of the adapter's image geometry. A model without a fixed input size (NaFlex
    SigLIP 2 keeps each image's aspect ratio), or one that does not describe its geometry, has none to
    bound the reduction by: None, no draft.
    """
    if not isinstance(model, StatesAdapter):
        return None
    sizes = {model.image_geometry(width, height).crop[2:] for width, height in ((64, 64), (256, 32))}
    if len(sizes) > 1:
        return None
    [(width, height)] = sizes
    return 2 * width, 2 * height


@dataclass
class ScanResult:
    """Where the output is and how many samples this run scored (the rest came from earlier runs)."""

    output: Path
    scored_now: int
    resumed_from: int


def _batches(samples: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    """Consecutive lists of ``size`` samples (the last may be shorter)."""
    while batch := list(itertools.islice(samples, size)):
        yield batch


def scan(
    samples: Iterable[Sample],
    attributor: CLIP4DM,
    out: str | Path | PartWriter,
    metadata: dict[str, Any],
    *,
    options: ScanSettings | None = None,
    total: int | None = None,
    on_part: Callable[[Path], None] | None = None,
) -> ScanResult:
    """Score every sample into Parquet, resuming after the parts already committed.

    ``out`` is a path, or a :class:`PartWriter` already opened (the CLI opens it before the model
    loads, so a bad or busy output fails first). ``metadata`` is recorded in the output (a resumed
    run must match it); batches are ``attributor.settings.batch_size`` pairs; ``total`` only sizes
    the progress bar.
    """
    options = options or ScanSettings()
    with writing(out, metadata, options, on_part) as writer:
        done = writer.completed()
        stream = itertools.islice(iter(samples), done, None)
        bar = tqdm(total=total, initial=done, unit="pair", desc="scan", disable=not options.progress)
        scored = 0
        model = attributor.model
        draft = draft_size(model) if options.jpeg_draft else None
        batches = prepared_ahead(
            _batches(stream, attributor.settings.batch_size),
            functools.partial(load_sample, model, draft=draft),
            functools.partial(prepare_samples, attributor),
            workers=options.workers,
        )
        for batch in batches:
            writer.add(score_samples(attributor, batch))
            scored += len(batch.samples)
            bar.update(len(batch.samples))
        bar.close()
        writer.finish()
    return ScanResult(writer.out, scored, done)
