"""Prepare batches ahead of the model in threads, so that decoding and preprocessing overlap with scoring.

Each item is loaded (image decoded and turned into pixel values) in one of ``workers`` threads; each batch
is then collated (pixels stacked, captions tokenised in one call) in one more thread, up to ``depth``
batches ahead of the consumer. Threads suffice: PIL's decoder and its resize release the GIL, and so do
the NumPy and torch operations of preprocessing and stacking (see ``benchmarks/README.md`` for numbers).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Batch = TypeVar("Batch")

DEFAULT_DEPTH = 2
"""Batches prepared ahead of the one being scored: one to absorb a slow batch, one being prepared."""


def _collate_when_loaded(
    collate: Callable[[Sequence[Item], list[Loaded]], Batch], items: Sequence[Item], loads: list[Future]
) -> Batch:
    return collate(items, [f.result() for f in loads])


def prepared_ahead(
    batches: Iterable[Sequence[Item]],
    load: Callable[[Item], Loaded],
    collate: Callable[[Sequence[Item], list[Loaded]], Batch],
    *,
    workers: int,
    depth: int = DEFAULT_DEPTH,
) -> Iterator[Batch]:
    """``collate(batch, [load(item) for item in batch])`` for every batch, in order, computed ahead.

    ``load`` runs in ``workers`` threads and must report failures in its return value (it may not raise);
    ``collate`` runs in one more thread and whatever it raises is raised here, for its batch. Batches are
    read from ``batches`` in this thread, ``depth`` ahead of the one handed out; leaving the loop early
    cancels the work not yet started.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clipalign-load")
    collator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipalign-collate")
    queue: deque[Future] = deque()
    source = iter(batches)
    try:
        while True:
            while len(queue) <= depth:
                items = next(source, None)
                if items is None:
                    break
                loads = [pool.submit(load, item) for item in items]
                queue.append(collator.submit(_collate_when_loaded, collate, items, loads))
            if not queue:
                return
            yield queue.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        collator.shutdown(wait=True, cancel_futures=True)
