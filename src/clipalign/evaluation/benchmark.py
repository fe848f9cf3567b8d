"""Run one paper benchmark end to end: load its items, score them (cached), compute metrics, report.

The command line only parses arguments into settings objects and prints; everything between lives
here so that a script can run the same evaluation with :func:`run_benchmark`.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipalign.attribution.baselines import BASELINES, get_baseline
from clipalign.attribution.fixlip import FIxLIP
from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.words import CLIP4DM
from clipalign.datasets import BENCHMARKS, POINTING_NAMES
from clipalign.datasets.base import MisalignmentItem, PointingItem
from clipalign.evaluation.authors import Protocol
from clipalign.evaluation.cache import ResultCache
from clipalign.evaluation.nli import DEFAULT_NLI_MODEL, NLIScorer
from clipalign.evaluation.report import PER_CLASS_CHART, write_report
from clipalign.evaluation.runner import (
    PointingMethod,
    Record,
    misalignment_metrics,
    per_class_metrics,
    pointing_metrics,
    score_misalignment,
    score_pointing,
)
from clipalign.models.base import ClipAdapter
from clipalign.settings import InteractionSettings, ModelSpec, WordSettings

BENCHMARK_EPSILON: dict[str, float] = {"richhf": -1e-5}
"""Benchmarks the authors evaluate at another ε than :class:`WordSettings`'s default."""

AUTHORS_PROTOCOL: dict[str, Protocol] = {
    "foil": "lowest_word",
    "nocaps-foil": "lowest_word",
    "synthetic": "lowest_word",
    "hat": "lowest_span",
    "seetrue-feedback": "spans",
    "richhf": "tokens",
}
"""How the CLIP4DM authors' main.py evaluates each benchmark (see :mod:`clipalign.evaluation.authors`)."""

GROUP_BY: dict[str, str] = {"nocaps-foil": "domain", "seetrue-feedback": "dataset_source"}
"""Benchmarks whose metrics are also reported per group: the item ``meta`` key that names the group."""

FAILURES_FILE = "failures.jsonl"
"""Written into ``OUT/BENCHMARK/`` when items failed: one JSON line per failed item (id, image, error)."""

LOADER_OPTIONS = ("prompts", "instances", "split", "karpathy")
"""Extra options some loaders take: ``prompts=`` (richhf); ``instances=``, ``karpathy=`` (pointing-coco);
``split=`` (pointing-flickr30k, pointing-coco)."""


def is_pointing(benchmark: str) -> bool:
    """Pointing games are scored with interactions; the others with word-level misalignment."""
    return benchmark in POINTING_NAMES


def default_word_settings(benchmark: str) -> dict[str, Any]:
    """Word settings the authors use on ``benchmark`` where they differ from the defaults."""
    return {"epsilon": BENCHMARK_EPSILON[benchmark]} if benchmark in BENCHMARK_EPSILON else {}


def load_items(
    benchmark: str,
    annotations: str | Path,
    images: str | Path,
    *,
    limit: int | None = None,
    **options: str | None,
) -> list[MisalignmentItem] | list[PointingItem]:
    """The benchmark's items; a missing images directory or an option the loader lacks is a ValueError."""
    directory = Path(images)
    if not directory.is_dir():
        raise ValueError(f"images directory not found: {directory}")
    loader = BENCHMARKS[benchmark]
    accepted = inspect.signature(loader).parameters
    given = {k: v for k, v in options.items() if v}
    for name in given:
        if name not in accepted:
            raise ValueError(f"--{name} does not apply to {benchmark}")
    items = loader(annotations, directory, limit=limit, **given)
    if not items:
        raise ValueError(f"no items in {annotations}")
    return items


@dataclass(frozen=True)
class BenchmarkRun:
    """What a run produced: the metrics, the report files, how many items were scored anew and the
    failure list (None when nothing failed)."""

    metrics: dict[str, Any]
    json_path: Path
    md_path: Path
    newly_scored: int
    failures_path: Path | None = None
    chart_path: Path | None = None


POINTING_METHODS = ("interactions", "fixlip", *BASELINES)
"""What ``clipalign eval pointing-* --method`` takes: our interactions, FIxLIP, the first-order baselines."""


def pointing_method(name: str, model: ClipAdapter, interactions: InteractionSettings) -> PointingMethod:
    """The pointing-game method called ``name``; ``interactions`` configure ours (the others use their
    defaults: the authors' budget for FIxLIP, each paper's settings for the baselines)."""
    if name == "interactions":
        return TokenPatchInteractions(model, settings=interactions)
    if name == "fixlip":
        return FIxLIP(model)
    if name not in BASELINES:
        raise ValueError(f"unknown pointing method {name!r}: choose from {', '.join(POINTING_METHODS)}")
    return get_baseline(name, model)


def run_benchmark(
    benchmark: str,
    items: list[MisalignmentItem] | list[PointingItem],
    model: ClipAdapter,
    out: str | Path,
    *,
    spec: ModelSpec,
    words: WordSettings | None = None,
    interactions: InteractionSettings | None = None,
    methods: Sequence[str] = ("interactions",),
    nli_model: str | None = None,
    progress: bool = True,
    per_class: str | None = None,
) -> BenchmarkRun:
    """Score ``items`` with ``model`` into ``out/benchmark/`` (cache + report.json + report.md).

    The cache is keyed by the benchmark, ``spec.to_dict()`` and the method's settings ``to_dict()``,
    so a rerun with the same settings resumes and a changed setting starts a new cache. Pointing games
    score every method of ``methods`` (:data:`POINTING_METHODS`), each cached under its own key; the
    first is the report's headline, and with more than one ``metrics["methods"]`` holds each one's.
    ``per_class`` names the item ``meta`` key of a pointing game's classes: ``metrics["per_class"]``
    then holds the headline method's metrics per class, also drawn as bars in ``per_class.png``.
    """
    directory = Path(out) / benchmark
    if per_class is not None:
        check_class_key(items, per_class)
    if is_pointing(benchmark):
        method_settings = interactions or InteractionSettings()
        pointing_items = [i for i in items if isinstance(i, PointingItem)]
        evaluated: Sequence[MisalignmentItem | PointingItem] = pointing_items
        start = time.perf_counter()
        by_method: dict[str, list[Record]] = {}
        for name in methods:
            method = pointing_method(name, model, method_settings)
            keyed = {"benchmark": benchmark, **spec.to_dict(), **method.settings.to_dict()}
            if name != "interactions":  # interactions keep the cache key they had before --method
                keyed["method"] = name
            method_cache = ResultCache(directory / "cache", keyed)
            if name == methods[0]:  # the report's headline method
                settings, cache, before = keyed, method_cache, len(method_cache.load())
            by_method[name] = score_pointing(pointing_items, method, method_cache, progress=progress)
        seconds = time.perf_counter() - start
        records = by_method[methods[0]]
        metrics = pointing_metrics(records)
        if len(methods) > 1:
            metrics["methods"] = {name: pointing_metrics(r) for name, r in by_method.items()}
        if per_class is not None:
            metrics["per_class"] = per_class_metrics(pointing_items, records, per_class)
    else:
        word_settings = words or WordSettings(**default_word_settings(benchmark))
        cache = word_cache(out, benchmark, spec, word_settings)
        settings = cache.settings
        before = len(cache.load())
        attributor = CLIP4DM(model, settings=word_settings)
        word_items = [i for i in items if isinstance(i, MisalignmentItem)]
        evaluated = word_items
        start = time.perf_counter()
        records = score_misalignment(word_items, attributor, cache, progress=progress)
        seconds = time.perf_counter() - start
        protocol = AUTHORS_PROTOCOL.get(benchmark)
        nli = None
        if protocol == "spans":
            nli = NLIScorer(nli_model or DEFAULT_NLI_MODEL, device=spec.device)
        metrics = misalignment_metrics(
            word_items,
            records,
            nli,
            epsilon=word_settings.epsilon,
            protocol=protocol,
            group_by=GROUP_BY.get(benchmark),
        )
    scored = len(cache.load()) - before
    failures = [
        {"id": it.id, "image": str(it.image), "error": r["error"]}
        for it, r in zip(evaluated, records, strict=True)
        if r.get("error") is not None
    ]
    failures_path = write_failures(directory, failures)
    json_path, md_path = write_report(
        directory,
        benchmark,
        metrics,
        settings,
        seconds,
        scored,
        failures=failures,
        failures_path=failures_path,
    )
    chart_path = None
    if "per_class" in metrics:
        from clipalign.viz.bars import class_bars

        chart_path = class_bars(
            metrics["per_class"], directory / PER_CLASS_CHART, title=f"{benchmark}: {methods[0]}"
        )
    return BenchmarkRun(metrics, json_path, md_path, scored, failures_path, chart_path)


def check_class_key(items: Sequence[MisalignmentItem | PointingItem], key: str) -> None:
    """Refuse ``--per-class KEY`` unless every item is a pointing item whose ``meta`` has ``key``."""
    if not all(isinstance(it, PointingItem) for it in items):
        raise ValueError("--per-class applies to the pointing games only (pointing-*, hnc)")
    missing = [it for it in items if key not in it.meta]
    if missing:
        keys = sorted({k for it in items for k in it.meta})
        raise ValueError(
            f"--per-class {key}: item {missing[0].id} has no {key!r} (meta keys there: {', '.join(keys)})"
        )


def word_cache(out: str | Path, benchmark: str, spec: ModelSpec, words: WordSettings) -> ResultCache:
    """The per-item cache of a word-level benchmark under ``out/benchmark/cache``, keyed by the benchmark,
    the model and the word settings: ``clipalign eval`` and ``clipalign sweep`` share it."""
    settings = {"benchmark": benchmark, **spec.to_dict(), **words.to_dict()}
    return ResultCache(Path(out) / benchmark / "cache", settings)


def write_failures(directory: Path, failures: list[dict[str, Any]]) -> Path | None:
    """Write the failed items to ``directory/failures.jsonl`` (a stale list from an earlier run is
    removed when nothing failed); returns its path, or None."""
    path = directory / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures), encoding="utf-8")
    return path
