"""Training pairs from the same inputs as ``clipalign scan``, in a seeded order that a resumed run replays.

Each epoch reads the source again (:func:`~clipalign.runners.sources.open_source`: JSONL/CSV/Parquet,
tar shards, an image folder), drops the samples the reader already marks bad or whose caption cannot be
scored, and shuffles the rest through a seeded buffer, so the order depends only on the seed, the epoch
and the source. Images are decoded when their batch is formed (:func:`~clipalign.runners.local.load_sample`,
scan's loader); an image that cannot be used is skipped and counted, and its batch is one pair shorter.
A position in the stream (epoch, pairs taken) is all a checkpoint needs to resume exactly there.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from clipalign.attribution.inputs import reason
from clipalign.models.base import ClipAdapter
from clipalign.runners.local import load_sample
from clipalign.runners.sources import Columns, Sample, open_source
from clipalign.text.alignment import CaptionError, validate_caption


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where the training pairs come from: ``scan``'s input options."""

    source: str
    """A JSONL/CSV/Parquet table, tar shards (``shards/{00000..00099}.tar``) or an image directory."""
    captions: str | None = None
    """With an image directory: the captions JSON."""
    columns: Columns = field(default_factory=Columns)
    base_dir: str | None = None

    def open(self) -> Iterator[Sample]:
        """A fresh pass over the source (a missing input is a ValueError here)."""
        return open_source(self.source, self.columns, self.captions, self.base_dir)


@dataclass
class Skipped:
    """Pairs left out of training: how many (an image that cannot be read counts in every epoch that
    meets it), and the first few distinct "key: reason" lines."""

    total: int = 0
    examples: list[str] = field(default_factory=list)
    shown: int = 5

    def add(self, key: str, reason: str) -> None:
        self.total += 1
        line = f"{key}: {reason}"
        if len(self.examples) < self.shown and line not in self.examples:
            self.examples.append(line)


def usable(samples: Iterator[Sample], skipped: Skipped | None = None) -> Iterator[Sample]:
    """The samples with an image and a caption that can be scored; the others counted in ``skipped``."""
    for sample in samples:
        why = sample.error
        if why is None and sample.image is None:
            why = "no image"
        if why is None:
            try:
                validate_caption(sample.caption)
            except CaptionError as exc:
                why = str(exc)
        if why is None:
            yield sample
        elif skipped is not None:
            skipped.add(sample.key, why)


def shuffled(samples: Iterator[Sample], seed: int, epoch: int, buffer: int) -> Iterator[Sample]:
    """``samples`` shuffled through a buffer of ``buffer`` items, seeded by (seed, epoch): the whole epoch
    when the buffer holds it, a local shuffle of a stream too large for memory otherwise."""
    rng = random.Random(f"clipalign-finetune/{seed}/{epoch}")
    pool: list[Sample] = []
    for sample in samples:
        pool.append(sample)
        if len(pool) >= buffer:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            yield pool.pop()
    rng.shuffle(pool)
    yield from pool


def count_usable(spec: DataSpec) -> tuple[int, Skipped]:
    """How many pairs one epoch offers (images not decoded), and the samples left out."""
    skipped = Skipped()
    return sum(1 for _ in usable(spec.open(), skipped)), skipped


@dataclass(frozen=True)
class Batch:
    """One global batch: pixel values and captions of the pairs that loaded, in stream order."""

    pixels: torch.Tensor
    captions: list[str]
    taken: int
    """Pairs of the stream this batch used up, including those skipped."""


def batches(
    spec: DataSpec,
    model: ClipAdapter,
    *,
    seed: int,
    epoch: int,
    batch_size: int,
    buffer: int,
    skip: int = 0,
    skipped: Skipped,
    workers: int = 2,
    keep: Callable[[int], bool] = lambda _: True,
) -> Iterator[Batch]:
    """Global batches of ``batch_size`` stream pairs of one epoch, after the first ``skip`` pairs (resume).

    Only the pairs at positions ``keep(i)`` within a batch are decoded (a data-parallel rank keeps its
    share); an image that cannot be decoded or preprocessed is dropped and counted in ``skipped``. The
    last, incomplete batch of the epoch is dropped, as the contrastive loss needs the full batch.
    """
    stream = itertools.islice(shuffled(usable(spec.open()), seed, epoch, buffer), skip, None)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        while True:
            chunk = list(itertools.islice(stream, batch_size))
            if len(chunk) < batch_size:
                return
            mine = [s for i, s in enumerate(chunk) if keep(i)]
            pixels, captions = [], []
            for sample, loaded in zip(mine, pool.map(lambda s: load_sample(model, s), mine), strict=True):
                if isinstance(loaded, torch.Tensor):
                    pixels.append(loaded)
                    captions.append(str(sample.caption))
                else:
                    skipped.add(sample.key, reason(loaded) if isinstance(loaded, Exception) else loaded)
            stacked = torch.stack(pixels) if pixels else torch.empty(0)
            yield Batch(stacked, captions, len(chunk))
