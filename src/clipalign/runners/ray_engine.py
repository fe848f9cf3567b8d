"""The Ray Data scan engine: the local engine's per-batch function on a Ray cluster, same output.

``pip install -e '.[ray]'`` (from a checkout). The pipeline is three stages:

1. **read** — one Ray task runs the very sample stream of the local engine (``open_source``), so
   indices, keys, duplicates and unreadable rows are exactly the same, and cuts it into batches of
   ``words.batch_size`` samples. Each batch travels as one Ray Data row holding the pickled samples (paths
   for tables and image folders, encoded bytes for tar shards); Ray's streaming backpressure bounds
   how far the reader runs ahead, so nothing is materialised on the driver or in the object store.
2. **score** — ``map_batches`` over a fixed pool of :class:`ScoreActor`, one per GPU (or
   ``concurrency`` CPU actors), each loading the model once and calling the local engine's
   :func:`~clipalign.runners.local.load_sample` (in ``options.workers`` threads) and
   :func:`~clipalign.runners.local.score_batch`.
3. **write** — the driver receives the scored batches in input order (``preserve_order``) and writes
   them with the local engine's :class:`~clipalign.runners.output.PartWriter`: the same
   ``part-NNNNN.parquet`` parts, settings metadata, atomic writes, merge into one ``.parquet`` file,
   and the same resume after the last complete part. Only scores (no images) reach the driver.

Why not ``ray.data.read_json``/``read_parquet`` for tables: they would number rows, report bad lines
and find duplicates differently from the local engine (and per file block), so the output could not
be identical; reading is cheap next to scoring, which is what the actors parallelise.
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from tqdm import tqdm

from clipalign.attribution.words import CLIP4DM
from clipalign.models import load_model
from clipalign.runners.local import Row, ScanResult, draft_size, load_sample, score_batch
from clipalign.runners.output import PartWriter, writing
from clipalign.runners.sources import Sample
from clipalign.settings import ModelSpec, RaySettings, ScanSettings, WordSettings
from clipalign.text import CaptionTruncatedWarning

SampleFactory = Callable[[], Iterable[Sample]]
"""A picklable zero-argument callable returning the sample stream, e.g.
``functools.partial(open_source, "pairs.jsonl", Columns())``; it runs in the read task."""


def _enter(cwd: str) -> None:
    """Resolve relative paths as the driver does, where its working directory exists on this node."""
    if os.path.isdir(cwd):
        os.chdir(cwd)


def _pack(position: int, payload: Any) -> pa.Table:
    """One Ray Data row: where the batch starts in the input, and the batch, pickled."""
    return pa.table(
        {
            "position": pa.array([position], pa.int64()),
            "payload": pa.array([pickle.dumps(payload)], pa.large_binary()),
        }
    )


def read_batches(
    _: pa.Table, samples: SampleFactory, skip: int, batch_size: int, cwd: str
) -> Iterator[pa.Table]:
    """The read stage: the sample stream after ``skip`` items, one row per batch of ``batch_size``."""
    _enter(cwd)
    stream = itertools.islice(iter(samples()), skip, None)
    position = skip
    while batch := list(itertools.islice(stream, batch_size)):
        yield _pack(position, batch)
        position += len(batch)


class ScoreActor:
    """The score stage: holds the model; each call scores batches of samples into local-engine rows."""

    def __init__(self, spec: ModelSpec, words: WordSettings, options: ScanSettings, cwd: str) -> None:
        from huggingface_hub.utils import logging as hub_logging
        from transformers.utils import logging as hf_logging

        _enter(cwd)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        hub_logging.set_verbosity_error()
        # truncation is recorded in each row's truncated_words; one warning per caption is noise here
        warnings.filterwarnings("ignore", category=CaptionTruncatedWarning)
        model = load_model(spec.name, device=spec.device, dtype=spec.dtype, allow_pickle=spec.allow_pickle)
        self.attributor = CLIP4DM(model, settings=words)
        draft = draft_size(model) if options.jpeg_draft else None
        self.load = functools.partial(load_sample, model, draft=draft)
        self.pool = ThreadPoolExecutor(max_workers=options.workers)

    def __call__(self, batch: pa.Table) -> pa.Table:
        positions = batch.column("position").to_pylist()
        results = []
        for blob in batch.column("payload").to_pylist():
            samples: list[Sample] = pickle.loads(blob)
            loaded = list(self.pool.map(self.load, samples))
            results.append(pickle.dumps(score_batch(self.attributor, samples, loaded)))
        return pa.table(
            {"position": pa.array(positions, pa.int64()), "payload": pa.array(results, pa.large_binary())}
        )


def _unwrapped(batches: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Ray's batches, with an error raised in our code re-raised as itself instead of Ray's wrapper."""
    try:
        yield from batches
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from exc
        raise
    except ray.exceptions.RayActorError as exc:
        if not exc.actor_init_failed:
            raise
        # the creation task's traceback comes as text: keep its last "module.SomeError: message" line
        found = re.findall(
            r"^\s*(?:\w+\.)*(\w+(?:Error|Exception)): (.*)$", exc.error_msg or "", re.MULTILINE
        )
        reason = f"{found[-1][0]}: {found[-1][1]}" if found else "see the Ray logs"
        raise ValueError(f"a Ray scoring actor could not start: {reason}") from exc


@contextmanager
def _ray_data(address: str | None) -> Iterator[None]:
    """Ray initialised (joined, or started and shut down afterwards), Ray Data set up for the scan.

    One batch per block: a block is emitted as soon as the reader yields it (Ray would otherwise
    gather rows up to 128 MiB first) and every actor call gets whole batches, as in the local engine.
    The Data context is restored afterwards.
    """
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(address=address, include_dashboard=False)
    try:
        context = ray.data.DataContext.get_current()
        options = context.execution_options
        saved = (context.target_max_block_size, options.preserve_order, context.enable_progress_bars)
        context.target_max_block_size = 1
        options.preserve_order = True
        context.enable_progress_bars = False
        try:
            yield
        finally:
            context.target_max_block_size, options.preserve_order, context.enable_progress_bars = saved
    finally:
        if own_ray:
            ray.shutdown()


def _pipeline(
    samples: SampleFactory,
    spec: ModelSpec,
    words: WordSettings,
    options: ScanSettings,
    cluster: RaySettings,
    skip: int,
) -> ray.data.Dataset:
    """The read and score stages, reading after the first ``skip`` samples."""
    cwd = os.getcwd()
    gpu = cluster.num_gpus > 0
    return (
        ray.data.from_items([{"start": skip}])
        .map_batches(
            functools.partial(read_batches, samples=samples, skip=skip, batch_size=words.batch_size, cwd=cwd),
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=0,
        )
        .map_batches(
            ScoreActor,
            batch_size=1,
            batch_format="pyarrow",
            fn_constructor_kwargs={"spec": spec, "words": words, "options": options, "cwd": cwd},
            compute=ray.data.ActorPoolStrategy(size=cluster.num_gpus if gpu else cluster.concurrency),
            num_gpus=1 if gpu else 0,
            num_cpus=cluster.num_cpus,
        )
    )


def _in_order(dataset: ray.data.Dataset, start: int) -> Iterator[list[Row]]:
    """The scored rows, batch by batch, checked to arrive in input order from ``start``."""
    expected = start
    for block in _unwrapped(dataset.iter_batches(batch_size=None, batch_format="pyarrow")):
        for position, blob in zip(
            block.column("position").to_pylist(), block.column("payload").to_pylist(), strict=True
        ):
            if position != expected:
                raise RuntimeError(f"Ray returned the batch at {position} where {expected} was due")
            rows: list[Row] = pickle.loads(blob)
            expected += len(rows)
            yield rows


def scan_ray(
    samples: SampleFactory,
    spec: ModelSpec,
    out: str | Path | PartWriter,
    metadata: dict[str, Any],
    *,
    words: WordSettings,
    options: ScanSettings | None = None,
    cluster: RaySettings | None = None,
    on_part: Callable[[Path], None] | None = None,
) -> ScanResult:
    """Score every sample on Ray into the local engine's output, resuming after the parts written.

    Args:
        samples: the sample stream's factory (it runs in a Ray task, so it must be picklable).
        spec: the model every actor loads (a directory must exist on every node); without a device,
            actors use ``cuda`` when ``cluster.num_gpus`` > 0, else ``cpu``.
        out: the output path, or a :class:`~clipalign.runners.output.PartWriter` already opened.
        metadata: what every part records; a resumed run must match it.
        words, options: as for the local engine (``options.workers`` loading threads per actor).
        cluster: where to run; an already initialised Ray is used as it is.
    """
    options = options or ScanSettings()
    cluster = cluster or RaySettings()
    spec = replace(spec, device=spec.device or ("cuda" if cluster.num_gpus > 0 else "cpu"))
    with writing(out, metadata, options, on_part) as writer:
        done = writer.completed()
        bar = tqdm(initial=done, unit="pair", desc="scan", disable=not options.progress)
        scored = 0
        try:
            with _ray_data(cluster.address):
                for rows in _in_order(_pipeline(samples, spec, words, options, cluster, done), done):
                    writer.add(rows)
                    scored += len(rows)
                    bar.update(len(rows))
        finally:
            bar.close()
        writer.finish()
    return ScanResult(writer.out, scored, done)
