"""The local scan engine: stream samples, decode images in threads, score batches, write Parquet parts.

Output is a directory of ``part-NNNNN.parquet`` files, or one ``.parquet`` file merged from them at
the end, written by :class:`~clipalign.runners.output.PartWriter`: parts are committed to a manifest,
so a killed run resumes after the last committed part with no duplicate and no missing item.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from clipalign.attribution.inputs import item_error, reason
from clipalign.attribution.words import CLIP4DM
from clipalign.images import load_image
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


def decode(sample: Sample) -> Image.Image | str:
    """The sample's RGB image, or the reason it cannot be used (runs in worker threads; never raises)."""
    if sample.error is not None:
        return sample.error
    if sample.image is None:
        return "no image"
    try:
        return load_image(sample.image)
    except Exception as exc:
        return reason(exc)


def score_batch(attributor: CLIP4DM, samples: list[Sample], images: list[Image.Image | str]) -> list[Row]:
    """Rows for one batch: one forward and one backward for every sample that decoded.

    Every failure of one sample becomes its error row (CLIP4DM records them per pair); should scoring
    the batch still raise, each sample is scored alone so that the scan always gets one row per sample.
    """
    rows: list[Row | None] = [None] * len(samples)
    todo: list[int] = []
    pairs: list[tuple[Image.Image, str]] = []
    for i, (sample, image) in enumerate(zip(samples, images, strict=True)):
        if isinstance(image, str):
            rows[i] = error_row(sample, image)
        elif sample.caption is None:
            rows[i] = error_row(sample, "no caption")
        else:
            todo.append(i)
            pairs.append((image, sample.caption))
    results: list[WordAlignment | ItemError] | None = None
    # a batch that raises is retried pair by pair after the handler, once its memory is released
    with contextlib.suppress(Exception):
        results = attributor.attribute([image for image, _ in pairs], [caption for _, caption in pairs])
    if results is None:
        results = [
            _score_alone(attributor, samples[i].index, *pair) for i, pair in zip(todo, pairs, strict=True)
        ]
    for i, result in zip(todo, results, strict=True):
        rows[i] = (
            error_row(samples[i], result.error)
            if isinstance(result, ItemError)
            else result_row(samples[i], result)
        )
    return [r for r in rows if r is not None]


def _score_alone(
    attributor: CLIP4DM, index: int, image: Image.Image, caption: str
) -> WordAlignment | ItemError:
    """One pair scored on its own, its failure recorded (the fallback when a whole batch raised)."""
    try:
        [result] = attributor.attribute([image], [caption])
    except Exception as exc:
        return item_error(index, image, caption, exc)
    return result


@dataclass
class ScanResult:
    """Where the output is and how many samples this run scored (the rest came from earlier runs)."""

    output: Path
    scored_now: int
    resumed_from: int


def _prefetch(
    samples: Iterator[Sample], batch_size: int, pool: ThreadPoolExecutor, depth: int
) -> Iterator[tuple[list[Sample], list[Future]]]:
    """Batches with their images decoding ahead in the pool, ``depth`` batches in flight at most."""
    queue: deque[tuple[list[Sample], list[Future]]] = deque()
    while True:
        while len(queue) < depth:
            batch = list(itertools.islice(samples, batch_size))
            if not batch:
                break
            queue.append((batch, [pool.submit(decode, s) for s in batch]))
        if not queue:
            return
        yield queue.popleft()


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
        workers = options.workers
        with ThreadPoolExecutor(max_workers=workers) as pool:
            batches = _prefetch(stream, attributor.settings.batch_size, pool, depth=max(2, workers // 2 + 1))
            for batch, futures in batches:
                writer.add(score_batch(attributor, batch, [f.result() for f in futures]))
                scored += len(batch)
                bar.update(len(batch))
        bar.close()
        writer.finish()
    return ScanResult(writer.out, scored, done)
