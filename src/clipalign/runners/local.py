"""The local scan engine: stream samples, decode images in threads, score batches, write Parquet parts.

Output is a directory of ``part-NNNNN.parquet`` files, each covering a contiguous range of input
indices and written atomically (temporary file, then rename), so a killed run resumes after the last
complete part with no duplicate and no missing item. A ``.parquet`` output path gets its parts in a
``<name>.parts/`` directory that is merged into the single file at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from clipalign.attribution.inputs import item_error, reason
from clipalign.attribution.words import CLIP4DM
from clipalign.images import load_image
from clipalign.results import ItemError, WordAlignment, word_row
from clipalign.runners.sources import Sample
from clipalign.settings import ScanSettings, comparable

METADATA_KEY = b"clipalign"

SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("key", pa.string()),
        ("caption", pa.string()),
        ("cosine", pa.float64()),
        ("clipscore", pa.float64()),
        ("f_clipscore", pa.float64()),
        ("misaligned_words", pa.list_(pa.string())),
        (
            "spans",
            pa.list_(
                pa.struct(
                    [
                        ("text", pa.string()),
                        ("start", pa.int32()),
                        ("end", pa.int32()),
                        ("mean_score", pa.float64()),
                        ("sum_score", pa.float64()),
                    ]
                )
            ),
        ),
        ("words", pa.list_(pa.string())),
        ("word_scores", pa.list_(pa.float64())),
        ("truncated_words", pa.list_(pa.string())),
        ("error", pa.string()),
    ]
)
"""One row per input sample; scores are null and ``error`` says why when it could not be scored."""

Row = dict[str, Any]

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


class PartWriter:
    """Parquet parts covering contiguous input ranges, with the run's settings in each file's metadata.

    ``out`` is a directory of parts, or a ``.parquet`` file whose parts live in ``<out>.parts/`` until
    :meth:`finish` merges them. ``options.overwrite`` discards earlier output; without it, a complete
    single file is refused. :meth:`add` buffers rows and writes a part every ``options.part_size``
    rows, then calls ``on_part`` with its path.
    """

    def __init__(
        self,
        out: str | Path,
        metadata: dict[str, Any],
        options: ScanSettings,
        on_part: Callable[[Path], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.single_file = self.out.suffix == ".parquet"
        self.directory = self.out.with_name(self.out.name + ".parts") if self.single_file else self.out
        if options.overwrite:
            shutil.rmtree(self.directory, ignore_errors=True)
            if self.single_file:
                self.out.unlink(missing_ok=True)
        elif self.single_file and self.out.exists() and not self.directory.exists():
            raise ValueError(f"{self.out} already exists and is complete: use --overwrite to score again")
        self.metadata = metadata
        self.part_size = options.part_size
        self.on_part = on_part
        self.pending: list[Row] = []
        self.schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})

    def parts(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet"))

    def completed(self) -> int:
        """How many input samples the complete parts cover (they are contiguous from 0).

        A part's settings must match this run's; a setting it predates counts as its old implicit value.
        """
        total = 0
        for part in self.parts():
            meta = pq.read_schema(part).metadata or {}
            if comparable(json.loads(meta.get(METADATA_KEY, b"{}"))) != comparable(self.metadata):
                raise ValueError(
                    f"{part} was written with other settings; use --overwrite to start again or another --out"
                )
            total = max(total, pq.ParquetFile(part).metadata.num_rows + int(part.stem.split("-")[1]))
        return total

    def write(self, rows: list[Row]) -> Path:
        """Write one part named after its first input index (temporary file, then atomic rename)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        first = rows[0]["index"]
        path = self.directory / f"part-{first:012d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=self.schema), tmp)
        tmp.replace(path)
        return path

    def add(self, rows: list[Row]) -> None:
        """Buffer rows (in input order); write a part once ``part_size`` rows are waiting."""
        self.pending.extend(rows)
        if len(self.pending) >= self.part_size:
            path = self.write(self.pending)
            self.pending = []
            if self.on_part:
                self.on_part(path)

    def finish(self) -> None:
        """Write the rows still buffered, then merge the parts into the single output file if asked."""
        if self.pending:
            self.write(self.pending)
            self.pending = []
        if self.single_file:
            merge_parts(self.parts(), self.out, self.schema)
            shutil.rmtree(self.directory)


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
    out: str | Path,
    metadata: dict[str, Any],
    *,
    options: ScanSettings | None = None,
    total: int | None = None,
    on_part: Callable[[Path], None] | None = None,
) -> ScanResult:
    """Score every sample into Parquet, resuming after the parts already written.

    ``metadata`` is recorded in every part (a resumed run must match it); batches are
    ``attributor.settings.batch_size`` pairs; ``total`` only sizes the progress bar.
    """
    options = options or ScanSettings()
    writer = PartWriter(out, metadata, options, on_part)
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


def merge_parts(parts: list[Path], out: Path, schema: pa.Schema) -> None:
    """Concatenate parts into one Parquet file, one part in memory at a time."""
    tmp = out.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as merged:
        for part in parts:
            merged.write_table(pq.read_table(part, schema=schema))
    tmp.replace(out)
