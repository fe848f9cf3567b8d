"""CLIP4DM's ablations as one run: a grid of ε × text layers × template on a word-level benchmark.

The CLIP4DM paper (arXiv 2412.18404) varies the number of last text layers averaged, the threshold ε
and the template, and compares F-CLIPScore with CLIPScore. ε changes no word score, only the threshold
applied to them, so each (layers, template) is scored by the model once and every ε is derived from
those scores without a model call (flags, spans and F-CLIPScore recomputed, :func:`rethreshold`).
Every (layers, template, ε) cell is stored under the cache key ``clipalign eval`` uses with those
settings (:func:`~clipalign.evaluation.benchmark.word_cache`): an earlier ``eval`` is reused (at any ε
or mode: its word scores are), a later one finds its results, and a rerun or an interrupted sweep
computes only what is missing. :func:`run_sweep` writes ``OUT/sweep-BENCHMARK/``: ``sweep.json``,
``sweep.md``, ``heatmap.png`` (ε × layers per template and metric) and ``pr_curves.png``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve
from tqdm import tqdm

from clipalign.attribution.words import CLIP4DM, merge_spans, misaligned_mask
from clipalign.datasets.base import MisalignmentItem, PointingItem
from clipalign.evaluation.authors import AUTHORS_POSITIVE
from clipalign.evaluation.benchmark import (
    AUTHORS_PROTOCOL,
    GROUP_BY,
    default_word_settings,
    is_pointing,
    word_cache,
)
from clipalign.evaluation.cache import ResultCache
from clipalign.evaluation.measures import PositiveClass, average_precision
from clipalign.evaluation.runner import (
    Record,
    misalignment_metrics,
    score_misalignment,
    upgrade_record,
)
from clipalign.metrics.functional import f_clip_score
from clipalign.models.base import ClipAdapter
from clipalign.results import Word, WordAlignment, eligible, word_row
from clipalign.settings import Mode, ModelSpec, WordSettings, comparable
from clipalign.text.alignment import EncodedCaption
from clipalign.viz.sweep import Curve, epsilon_label, heatmap_figure, pr_figure

T = TypeVar("T")

HEADLINE: dict[str, tuple[str, ...]] = {
    "LA, ours": ("LA",),
    "LA, authors'": ("authors", "LA"),
    "AP F-CLIPScore, ours": ("AP", "{positive}-positive", "F-CLIPScore"),
    "AP F-CLIPScore, authors'": ("authors", "AP", "F-CLIPScore"),
    "AP CLIPScore": ("authors", "AP", "CLIPScore"),
    "F1, authors'": ("authors", "PRF", "f1"),
}
"""The metrics a sweep tabulates, by label → their path in :func:`misalignment_metrics`' output
(``{positive}`` is the benchmark's AP task). A benchmark tabulates those it has."""

HEATMAP_METRICS = ("LA, ours", "LA, authors'", "AP F-CLIPScore, authors'", "F1, authors'")
"""The metrics drawn as ε × layers heatmaps (AP CLIPScore depends on neither)."""

SCORE_SETTINGS_IGNORED = ("epsilon", "mode")
"""Settings that change no word score: a cache that differs from a cell only in these can feed it."""


def template_label(template: str) -> str:
    """A template as tables and figures show it: quoted, or ``(none)``."""
    return json.dumps(template, ensure_ascii=False) if template else "(none)"


def _values(name: str, text: str, convert: Callable[[str], T], kind: str) -> tuple[T, ...]:
    """A comma-separated option as distinct values; one line naming the option when one is wrong."""
    values: list[T] = []
    for part in text.split(","):
        try:
            values.append(convert(part))
        except ValueError:
            raise ValueError(
                f"--{name}: {part.strip()!r} is not {kind} (give a comma-separated list)"
            ) from None
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"--{name}: {', '.join(map(repr, repeated))} given more than once")
    return tuple(values)


@dataclass(frozen=True, kw_only=True)
class SweepGrid:
    """The values swept: thresholds ε, numbers of last text layers averaged, templates (each distinct)."""

    epsilon: tuple[float, ...]
    layers: tuple[int, ...]
    template: tuple[str, ...]

    def __post_init__(self) -> None:
        for name, values in (("epsilon", self.epsilon), ("layers", self.layers), ("template", self.template)):
            if not values:
                raise ValueError(f"--{name}: give at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"--{name}: values repeat: {list(values)}")
        bad_epsilon = [e for e in self.epsilon if not math.isfinite(e)]
        if bad_epsilon:
            raise ValueError(f"--epsilon: every ε must be a finite number, got {bad_epsilon}")
        bad_layers = [n for n in self.layers if n < 1]
        if bad_layers:
            raise ValueError(f"--layers: every count must be ≥ 1, got {bad_layers}")

    @classmethod
    def parse(cls, *, epsilon: str, layers: str, template: str) -> SweepGrid:
        """From comma-separated lists (``"-1e-4,0"``, ``"1,2,3"``, ``",A photo depicts "``: the empty
        template and the default one); a wrong value is a one-line ValueError naming its option.

        >>> grid = SweepGrid.parse(epsilon="-1e-4,0", layers="1,3", template=",A photo depicts ")
        >>> grid.epsilon, grid.template, grid.size
        ((-0.0001, 0.0), ('', 'A photo depicts '), 8)
        >>> SweepGrid.parse(epsilon="-1e-4", layers="3,x", template="")
        Traceback (most recent call last):
        ValueError: --layers: 'x' is not a whole number (give a comma-separated list)
        """
        return cls(
            epsilon=_values("epsilon", epsilon, float, "a number"),
            layers=_values("layers", layers, int, "a whole number"),
            template=_values("template", template, str, "a template"),
        )

    @property
    def size(self) -> int:
        return len(self.epsilon) * len(self.layers) * len(self.template)


@dataclass(frozen=True)
class Cell:
    """One grid point: its settings, its cache file (``clipalign eval``'s for them), its metrics, and the
    :data:`HEADLINE` values it has."""

    template: str
    layers: int
    epsilon: float
    cache: Path
    metrics: dict[str, Any]
    headline: dict[str, float]


@dataclass(frozen=True)
class GroupRecords:
    """The records of one (layers, template) at every ε, and how they were obtained this time."""

    records: dict[float, list[Record]]
    caches: dict[float, Path]
    scored: int
    """Items scored by the model."""
    derived: int
    """Records derived from cached word scores and written to a cache."""


@dataclass(frozen=True)
class SweepRun:
    """What :func:`run_sweep` produced: every cell, the files written and the work done."""

    cells: list[Cell]
    curves: dict[str, list[Curve]]
    json_path: Path
    md_path: Path
    figures: list[Path]
    scored: int
    derived: int


def rethreshold(record: Record, encoded: EncodedCaption, *, epsilon: float, mode: Mode) -> Record:
    """A cached record of one item at another ``epsilon`` and ``mode``, exactly as scoring it there gives.

    Its word scores, cosine and RefCLIPScores stay; the flags, spans, F-CLIPScore and the lowest word
    are recomputed (``encoded`` is the item's caption encoded with the record's template and word unit:
    it says which words are punctuation or got no token, and so can never be flagged).
    """
    words = encoded.words
    if [w.text for w in words] != record["words"]:
        raise ValueError(
            f"cached item {record['id']!r} holds the words {record['words']} but its caption splits into "
            f"{[w.text for w in words]}: the cache is stale; remove it to score again"
        )
    scores = np.asarray(record["word_scores"], dtype=np.float64)
    tokens = np.bincount(encoded.token_word[encoded.token_word >= 0], minlength=len(words))
    punctuation = np.array([w.punctuation for w in words], dtype=bool)
    can_flag = eligible(punctuation, tokens)
    below = misaligned_mask(scores, can_flag, "threshold", epsilon)
    marked = below if mode == "threshold" else misaligned_mask(scores, can_flag, mode, epsilon)
    scored = [
        Word(w.text, w.start, w.end, s, m, p, n)
        for w, s, m, p, n in zip(
            words, scores.tolist(), marked.tolist(), punctuation.tolist(), tokens.tolist(), strict=True
        )
    ]
    cosine = record["cosine"]
    f_score = f_clip_score(
        torch.tensor([cosine], dtype=torch.float64),
        torch.from_numpy(scores[None]),
        torch.from_numpy(below[None]),
    )
    result = WordAlignment(
        caption=record["caption"],
        cosine=cosine,
        clipscore=record["clipscore"],
        f_clipscore=float(f_score.item()),
        words=scored,
        spans=merge_spans(record["caption"], scored),
        truncated_words=record["truncated_words"],
        mode=mode,
        epsilon=epsilon,
        tokens=[],
        unit=encoded.unit,
    )
    return {
        "id": record["id"],
        "error": None,
        **word_row(result),
        "refclipscore": record.get("refclipscore"),
        "refclipscore_clip4dm": record.get("refclipscore_clip4dm"),
    }


def derive_records(
    pairs: Sequence[tuple[MisalignmentItem, Record]], model: ClipAdapter, settings: WordSettings
) -> list[Record]:
    """Each item's cached record carried over to ``settings`` (which differ from the record's in ε or
    mode only); a failed item stays failed. Captions are tokenised in one call; nothing runs the model."""
    ok = [(item, record) for item, record in pairs if record.get("error") is None]
    encoded = model.encode_captions([item.caption for item, _ in ok], settings.template) if ok else []
    by_id = {
        item.id: rethreshold(
            record, enc.with_unit(settings.unit), epsilon=settings.epsilon, mode=settings.mode
        )
        for (item, record), enc in zip(ok, encoded, strict=True)
    }
    return [by_id.get(item.id) or {"id": item.id, "error": record["error"]} for item, record in pairs]


def _score_key(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide the word scores (all but :data:`SCORE_SETTINGS_IGNORED`), comparable
    with caches written before a setting was recorded."""
    return comparable({k: v for k, v in settings.items() if k not in SCORE_SETTINGS_IGNORED})


def sibling_caches(cache: ResultCache) -> Iterator[ResultCache]:
    """The other caches in ``cache``'s folder whose word scores are ``cache``'s: written with another ε
    or mode (an earlier ``clipalign eval``, another sweep), the same benchmark, model and other settings."""
    wanted = _score_key(cache.settings)
    for settings_file in sorted(cache.directory.glob("*.settings.json")):
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
        other = ResultCache(cache.directory, settings)
        if other.path != cache.path and _score_key(settings) == wanted:
            yield other


def _found_in(caches: Sequence[ResultCache], ids: set[str]) -> dict[str, Record]:
    """The first cached record of each id among ``caches`` (in order), records without an error first."""
    found: dict[str, Record] = {}
    failed: dict[str, Record] = {}
    for cache in caches:
        for key, record in cache.load().items():
            if key in ids and key not in found:
                (found if record.get("error") is None else failed)[key] = upgrade_record(record)
        if len(found) == len(ids):
            break
    return {**failed, **found}


def group_records(
    items: Sequence[MisalignmentItem],
    model: ClipAdapter,
    out: str | Path,
    *,
    benchmark: str,
    spec: ModelSpec,
    settings: WordSettings,
    epsilons: Sequence[float],
    progress: bool = True,
    loader: Mapping[str, str | Path | None] | None = None,
) -> GroupRecords:
    """Records of ``items`` under ``settings`` at every ε of ``epsilons`` (``settings.epsilon`` is ignored),
    each ε in ``clipalign eval``'s cache for it.

    The first ε's cache is completed first: from the other ε's caches and any sibling cache (another ε or
    mode of the same scores), then with the model for what no cache holds. Every other ε is derived from
    it. Records are appended batch by batch, so an interrupted run keeps what it wrote. ``loader`` holds
    the options the items were loaded with, keyed as ``clipalign eval`` keys them.
    """
    caches = {
        e: word_cache(out, benchmark, spec, settings.replace(epsilon=e), loader=loader) for e in epsilons
    }
    first_epsilon = epsilons[0]
    first = caches[first_epsilon]
    known = first.load()
    missing = {it.id: it for it in items if it.problem is None and it.id not in known}
    derived = 0
    if missing:
        sources = [caches[e] for e in epsilons[1:]] + list(sibling_caches(first))
        found = _found_in(sources, set(missing))
        carried = derive_records(
            [(missing[key], record) for key, record in found.items()],
            model,
            settings.replace(epsilon=first_epsilon),
        )
        if carried:
            first.append(carried)
            derived += len(carried)
    scored = len(missing) - derived
    attributor = CLIP4DM(model, settings=settings.replace(epsilon=first_epsilon))
    base = score_misalignment(items, attributor, first, progress=progress)
    records = {first_epsilon: base}
    for epsilon in epsilons[1:]:
        have = {key: upgrade_record(record) for key, record in caches[epsilon].load().items()}
        pending = [
            (it, r) for it, r in zip(items, base, strict=True) if it.problem is None and it.id not in have
        ]
        new = derive_records(pending, model, settings.replace(epsilon=epsilon))
        if new:
            caches[epsilon].append(new)
            derived += len(new)
            have.update((r["id"], r) for r in new)
        records[epsilon] = [
            have[it.id] if it.problem is None else r for it, r in zip(items, base, strict=True)
        ]
    return GroupRecords(records, {e: c.path for e, c in caches.items()}, scored, derived)


def _dig(metrics: dict[str, Any], path: Sequence[str]) -> float | None:
    value: Any = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def headline(metrics: dict[str, Any], positive: PositiveClass) -> dict[str, float]:
    """The :data:`HEADLINE` metrics present in one cell's metrics, by label."""
    out: dict[str, float] = {}
    for label, path in HEADLINE.items():
        value = _dig(metrics, [part.format(positive=positive) for part in path])
        if value is not None:
            out[label] = value
    return out


def pr_curve(
    aligned: Sequence[bool], scores: Sequence[float], positive: PositiveClass
) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of ``scores`` (higher = better aligned) for detecting ``positive`` captions,
    oriented as :func:`~clipalign.evaluation.measures.average_precision` ranks them."""
    y = np.asarray(aligned, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    truth, ranked = (y, s) if positive == "aligned" else (~y, -s)
    precision, recall, _ = precision_recall_curve(truth, ranked)
    return recall, precision


def _curves(
    items: Sequence[MisalignmentItem],
    by_layers: dict[int, list[Record]],
    positive: PositiveClass,
) -> tuple[list[Curve], float]:
    """F-CLIPScore's curve for each number of layers, then CLIPScore's (the same for every layers), and
    the share of positives among the scored items (the precision of random scores); no curves when the
    items are all aligned or all misaligned."""
    curves: list[Curve] = []
    clip: tuple[list[bool], list[float]] = ([], [])
    for layers, records in by_layers.items():
        pairs = [(it, r) for it, r in zip(items, records, strict=True) if r.get("error") is None]
        aligned = [it.aligned for it, _ in pairs]
        if not 0 < sum(aligned) < len(aligned):
            return [], math.nan
        f_scores = [r["f_clipscore"] for _, r in pairs]
        ap = average_precision(aligned, f_scores, positive)
        curves.append(
            Curve(f"F-CLIPScore, layers={layers} (AP {ap:.3f})", *pr_curve(aligned, f_scores, positive))
        )
        clip = (aligned, [r["clipscore"] for _, r in pairs])
    ap = average_precision(*clip, positive)
    curves.append(Curve(f"CLIPScore (AP {ap:.3f})", *pr_curve(*clip, positive), dashed=True))
    return curves, float(np.mean([a == (positive == "aligned") for a in clip[0]]))


def nearest(values: Sequence[float], target: float) -> float:
    """The value of ``values`` closest to ``target`` (the first on a tie)."""
    return min(values, key=lambda v: abs(v - target))


def run_sweep(
    benchmark: str,
    items: Sequence[MisalignmentItem] | Sequence[PointingItem],
    model: ClipAdapter,
    out: str | Path,
    *,
    spec: ModelSpec,
    grid: SweepGrid,
    words: WordSettings | None = None,
    progress: bool = True,
    loader: Mapping[str, str | Path | None] | None = None,
) -> SweepRun:
    """Every cell of ``grid`` on ``benchmark``'s items, through ``clipalign eval``'s cache in ``out``.

    ``words`` gives the settings not swept (mode, word unit, batch size); each cell's metrics are those
    ``clipalign eval`` reports with its settings (without the NLI score of SeeTRUE-Feedback, which needs
    a second model). PR curves are drawn at the grid's ε nearest the benchmark's default. ``loader``
    holds the options ``items`` were loaded with (``prompts=`` for Rich-HF): part of every cell's cache key.
    """
    if is_pointing(benchmark):
        raise ValueError(f"sweep applies to word-level benchmarks; {benchmark} is a pointing game")
    depth = model.num_text_layers
    too_deep = [n for n in grid.layers if n > depth]
    if too_deep:
        raise ValueError(f"--layers {too_deep}: the model has {depth} text layers (choose from 1..{depth})")
    word_items = [it for it in items if isinstance(it, MisalignmentItem)]
    base = words or WordSettings()
    protocol = AUTHORS_PROTOCOL.get(benchmark)
    positive: PositiveClass = AUTHORS_POSITIVE[protocol] if protocol else "misaligned"
    default_epsilon = default_word_settings(benchmark).get("epsilon", WordSettings().epsilon)
    pr_epsilon = nearest(grid.epsilon, default_epsilon)
    start = time.perf_counter()
    cells: list[Cell] = []
    curves: dict[str, list[Curve]] = {}
    scored = derived = 0
    with tqdm(total=grid.size, desc="cells", unit="cell", disable=not progress) as bar:
        for template in grid.template:
            at_pr_epsilon: dict[int, list[Record]] = {}
            for layers in grid.layers:
                group = group_records(
                    word_items,
                    model,
                    out,
                    benchmark=benchmark,
                    spec=spec,
                    settings=base.replace(layers=layers, template=template),
                    epsilons=grid.epsilon,
                    progress=progress,
                    loader=loader,
                )
                scored, derived = scored + group.scored, derived + group.derived
                at_pr_epsilon[layers] = group.records[pr_epsilon]
                for epsilon in grid.epsilon:
                    metrics = misalignment_metrics(
                        word_items,
                        group.records[epsilon],
                        epsilon=epsilon,
                        protocol=protocol,
                        group_by=GROUP_BY.get(benchmark),
                    )
                    cells.append(
                        Cell(
                            template,
                            layers,
                            epsilon,
                            group.caches[epsilon],
                            metrics,
                            headline(metrics, positive),
                        )
                    )
                    bar.update()
            title = f"template {template_label(template)} · ε = {epsilon_label(pr_epsilon)}"
            curves[title], chance = _curves(word_items, at_pr_epsilon, positive)
    seconds = time.perf_counter() - start
    directory = Path(out) / f"sweep-{benchmark}"
    directory.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": benchmark,
        "model": spec.name,
        "settings": {**spec.to_dict(), **{k: v for k, v in base.to_dict().items() if k in ("mode", "unit")}},
        "grid": {"epsilon": list(grid.epsilon), "layers": list(grid.layers), "template": list(grid.template)},
        "items": len(word_items),
        "positive": positive,
        "pr_epsilon": pr_epsilon,
        "scored": scored,
        "derived": derived,
        "seconds": seconds,
        "best": best_cells(cells),
        "cells": [
            {
                "template": c.template,
                "layers": c.layers,
                "epsilon": c.epsilon,
                "cache": str(c.cache.relative_to(Path(out))),
                "headline": c.headline,
                "metrics": c.metrics,
            }
            for c in cells
        ],
    }
    json_path = directory / "sweep.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    md_path = directory / "sweep.md"
    md_path.write_text(markdown(report, cells), encoding="utf-8")
    figures = write_figures(directory, cells, grid, curves, positive, chance)
    return SweepRun(cells, curves, json_path, md_path, figures, scored, derived)


SHOWN_DIGITS = 3
"""Decimals the tables print; values equal at this precision tie for best (CLIPScore's AP, for one, moves
in the last bits with the number of layers, whose attention maps the text tower returns)."""


def best_cells(cells: Sequence[Cell]) -> dict[str, dict[str, Any]]:
    """Per headline metric, its highest value and every cell that reaches it as the tables print it."""
    out: dict[str, dict[str, Any]] = {}
    for label in HEADLINE:
        having = [c for c in cells if label in c.headline]
        if having:
            top = max(c.headline[label] for c in having)
            out[label] = {
                "value": top,
                "cells": [
                    {"template": c.template, "layers": c.layers, "epsilon": c.epsilon}
                    for c in having
                    if round(c.headline[label], SHOWN_DIGITS) == round(top, SHOWN_DIGITS)
                ],
            }
    return out


def table(cells: Sequence[Cell], *, mark: Callable[[str], str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the sweep table, a cell per row; the values that are best in their column
    (every cell that reaches the best, see :func:`best_cells`) pass through ``mark``."""
    labels = [label for label in HEADLINE if any(label in c.headline for c in cells)]
    best = best_cells(cells)
    rows = []
    for c in cells:
        at = {"template": c.template, "layers": c.layers, "epsilon": c.epsilon}
        values = []
        for label in labels:
            text = f"{c.headline[label]:.{SHOWN_DIGITS}f}" if label in c.headline else "—"
            values.append(mark(text) if at in best[label]["cells"] else text)
        rows.append([template_label(c.template), str(c.layers), epsilon_label(c.epsilon), *values])
    return ["template", "layers", "ε", *labels], rows


def markdown(report: dict[str, Any], cells: Sequence[Cell]) -> str:
    """``sweep.md``: the settings, the table (each column's best values bold and ★), the figures."""
    header, rows = table(cells, mark=lambda text: f"**{text}** ★")
    settings = report["settings"]
    lines = [
        f"# Sweep: {report['benchmark']}",
        "",
        f"Model `{report['model']}` ({settings['dtype']}) · {report['items']} items · mode "
        f"`{settings['mode']}` · word unit `{settings['unit']}` · this run: {report['scored']} items "
        f"scored by the model, {report['derived']} records derived from cached word scores, "
        f"{report['seconds']:.1f} s",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["--:"] * (len(header) - 3)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "LA, ours: the lowest non-punctuation word lies inside a misaligned phrase (does not depend on ε). "
        "LA, authors': their main.py at this ε (no word below ε is a miss). "
        f"AP: {report['positive']} captions positive; F-CLIPScore ours = (1 − cos⁺)·Σ scores below ε, "
        "authors' = their protocol's; CLIPScore depends on the template only. "
        "★ (bold): best in its column, on every cell that reaches it.",
        "",
        "![ε × layers](heatmap.png)",
        "",
        f"![PR curves at ε = {epsilon_label(report['pr_epsilon'])}](pr_curves.png)",
        "",
    ]
    return "\n".join(lines)


def heatmap_values(cells: Sequence[Cell], grid: SweepGrid) -> dict[str, dict[str, np.ndarray]]:
    """Per template label and heatmap metric present, its (layers × ε) array (NaN where a cell lacks it)."""
    present = [m for m in HEATMAP_METRICS if any(m in c.headline for c in cells)]
    out: dict[str, dict[str, np.ndarray]] = {}
    for template in grid.template:
        panels = {m: np.full((len(grid.layers), len(grid.epsilon)), np.nan) for m in present}
        for c in cells:
            if c.template == template:
                i, j = grid.layers.index(c.layers), grid.epsilon.index(c.epsilon)
                for m in present:
                    panels[m][i, j] = c.headline.get(m, np.nan)
        out[template_label(template)] = panels
    return out


def write_figures(
    directory: Path,
    cells: Sequence[Cell],
    grid: SweepGrid,
    curves: dict[str, list[Curve]],
    positive: PositiveClass,
    chance: float,
) -> list[Path]:
    """``heatmap.png`` and, when the benchmark has both aligned and misaligned captions, ``pr_curves.png``."""
    from clipalign.viz.heatmap import save

    written = []
    values = heatmap_values(cells, grid)
    if next(iter(values.values())):
        written.append(save(heatmap_figure(values, grid.layers, grid.epsilon), directory / "heatmap.png"))
    if all(curves.values()):
        figure = pr_figure(curves, chance=chance, positive=positive)
        written.append(save(figure, directory / "pr_curves.png"))
    return written
