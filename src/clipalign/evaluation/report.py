"""Benchmark reports (Markdown + JSON): beside each published number, our figure under the authors'
protocol, then our own variants in labelled columns; per-group tables; failures by reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    # CLIP4DM (arXiv 2412.18404), tables for ViT-B/32 (OpenAI) and ViT-H/14 (LAION-2B)
    "foil": {"B/32": {"LA": 0.73, "AP": 0.71}, "H/14": {"LA": 0.84, "AP": 0.81}},
    "nocaps-foil": {"B/32": {"LA": 0.60, "AP": 0.69}, "H/14": {"LA": 0.72, "AP": 0.80}},
    "hat": {"B/32": {"LA": 0.19, "AP": 0.36}, "H/14": {"LA": 0.35, "AP": 0.36}},
    "seetrue-feedback": {"B/32": {"NLI": 0.605}, "H/14": {"NLI": 0.660}},
    "richhf": {"B/32": {"F1": 0.40}, "H/14": {"F1": 0.43}},
}
"""Published headline numbers; Rich-HF F1 is at ε = −1e-5."""


@dataclass(frozen=True)
class Column:
    """One column of a report's headline table: a label, what it means, and where each metric is."""

    label: str
    legend: str
    sources: dict[str, tuple[str, ...]]


AUTHORS = "authors' protocol"
_AUTHORS_LOWEST_WORD = Column(
    AUTHORS,
    "their main.py at this ε: the lowest word below ε must equal the foil string (multi-word foils "
    "never count; no word below ε, where their run crashes, is a miss); AP of (1 − cos⁺)·Σ below ε, "
    "originals positive",
    {"LA": ("authors", "LA"), "AP": ("authors", "AP", "F-CLIPScore")},
)
_AUTHORS_MOST_NEGATIVE = Column(
    "authors, most_negative",
    "their sorted_by=most_negative: the lowest of all words; AP of (1 − cos⁺)·lowest score, "
    "originals positive",
    {"LA": ("authors_most_negative", "LA"), "AP": ("authors_most_negative", "AP", "F-CLIPScore")},
)
_OURS_FOIL = Column(
    "ours",
    "LA: the lowest non-punctuation word lies inside a foil phrase (multi-word foils count); "
    "AP of F-CLIPScore with the foil captions positive (ranked by −score)",
    {"LA": ("LA",), "AP": ("AP", "misaligned-positive", "F-CLIPScore")},
)
_FOIL_COLUMNS = (_AUTHORS_LOWEST_WORD, _AUTHORS_MOST_NEGATIVE, _OURS_FOIL)
_POINTING = (Column("ours", "pointing game", {"accuracy": ("accuracy",), "energy": ("energy",)}),)

COLUMNS: dict[str, tuple[Column, ...]] = {
    "foil": _FOIL_COLUMNS,
    "nocaps-foil": _FOIL_COLUMNS,
    "synthetic": _FOIL_COLUMNS,
    "hat": (
        Column(
            AUTHORS,
            "their main.py: adjacent words below ε merged, the span of lowest mean is a hit when its text "
            "is a substring of the hallucinated words; AP of (1 − cos⁺)·mean(lowest span), "
            "hallucinations positive",
            {"LA": ("authors", "LA"), "AP": ("authors", "AP", "F-CLIPScore")},
        ),
        Column(
            "ours",
            "LA: the lowest-mean span is exactly one hallucinated run; AP of (1 − cos⁺)·Σ below ε, "
            "hallucinations positive",
            {"LA": ("LA_span_strict",), "AP": ("AP", "misaligned-positive", "F-CLIPScore")},
        ),
        Column("ours, lowest word", "LA: the lowest word lies inside a hallucinated run", {"LA": ("LA",)}),
    ),
    "seetrue-feedback": (
        Column(
            AUTHORS,
            "P(entailment) with premise caption_misalignment (lower-cased) and the predicted spans joined "
            "by ', ' as hypothesis (0 when none)",
            {"NLI": ("authors", "NLI")},
        ),
    ),
    "richhf": (
        Column(
            AUTHORS,
            'their "index_word" matching of words below ε against misaligned prompt tokens (their code '
            "computes it but never prints it)",
            {"F1": ("authors", "PRF", "f1")},
        ),
        Column(
            "ours",
            "micro F1 over whitespace words (a word is misaligned when a misaligned token overlaps it)",
            {"F1": ("word_PRF", "f1")},
        ),
    ),
    "pointing-coco": _POINTING,
    "pointing-flickr30k": _POINTING,
    "pointing-synthetic": _POINTING,
    "hnc": _POINTING,
}
"""Per benchmark: the columns of the headline table, the authors' protocol first, then our variants."""

FAILURE_KINDS = (("labels but", "label/token count mismatch"), ("no prompt", "missing prompt"))
"""Evaluation-only failure kinds, tried before the scan's (:func:`clipalign.runners.summary.failure_kind`)."""


def backbone_of(model_name: str) -> str | None:
    """The papers' backbone label for a checkpoint name, when it is one of theirs."""
    name = model_name.lower()
    if "vit-base-patch32" in name or "vit-b-32" in name:
        return "B/32"
    if "vit-h-14" in name:
        return "H/14"
    return None


def _lookup(metrics: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def headline(benchmark: str, metrics: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{column label: {metric: value}} for the benchmark's headline columns."""
    return {
        column.label: {name: _lookup(metrics, path) for name, path in column.sources.items()}
        for column in COLUMNS.get(benchmark, ())
    }


def format_value(value: float | None) -> str:
    """A metric as reports print it: three decimals, or a dash where there is none."""
    return "—" if value is None else f"{value:.3f}"


def headline_table(
    benchmark: str, metrics: dict[str, Any], backbone: str | None
) -> tuple[list[str], list[list[str]]]:
    """Header and rows: each metric with the published number, then each column's figure beside it."""
    published = PUBLISHED.get(benchmark, {}).get(backbone or "", {})
    columns = COLUMNS.get(benchmark, ())
    names = list(dict.fromkeys(name for column in columns for name in column.sources))
    header = ["metric", f"published ({backbone or 'no matching backbone'})", *(c.label for c in columns)]
    rows = [
        [
            name,
            format_value(published.get(name)),
            *(format_value(_lookup(metrics, c.sources[name])) if name in c.sources else "" for c in columns),
        ]
        for name in names
    ]
    return header, rows


def group_table(benchmark: str, metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """One row per group (nocaps-FOIL domain, SeeTRUE source) with every headline figure, or None."""
    groups = metrics.get("groups")
    if not groups:
        return None
    cells = [
        (f"{name} · {column.label}", path)
        for column in COLUMNS.get(benchmark, ())
        for name, path in column.sources.items()
        if any(_lookup(row, path) is not None for row in groups["rows"].values())
    ]
    header = [groups["by"], "items", "failed", *(label for label, _ in cells)]
    rows = [
        [
            group,
            str(row["items"]),
            str(row["failed"]),
            *(format_value(_lookup(row, path)) for _, path in cells),
        ]
        for group, row in groups["rows"].items()
    ]
    return header, rows


def methods_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """One row per pointing-game method (``eval pointing-* --method a,b``), sorted by energy, or None."""
    methods = metrics.get("methods")
    if not methods:
        return None
    header = ["method", "items", "failed", "accuracy", "energy"]
    ranked = sorted(methods.items(), key=lambda kv: -(kv[1].get("energy") or float("-inf")))
    rows = [
        [
            name,
            str(m["items"]),
            str(m["failed"]),
            format_value(m.get("accuracy")),
            format_value(m.get("energy")),
        ]
        for name, m in ranked
    ]
    return header, rows


PER_CLASS_CHART = "per_class.png"
"""The bar chart of ``--per-class``, written beside report.md."""


def per_class_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """One row per class of ``--per-class`` (already sorted by energy, highest first), or None."""
    per_class = metrics.get("per_class")
    if not per_class:
        return None
    header = [per_class["by"], "items", "failed", "accuracy", "energy", "uniform energy"]
    rows = [
        [
            name,
            str(m["items"]),
            str(m["failed"]),
            format_value(m.get("accuracy")),
            format_value(m.get("energy")),
            format_value(m.get("uniform_energy")),
        ]
        for name, m in per_class["rows"].items()
    ]
    return header, rows


def failure_kind(error: str) -> str:
    """A coarse reason for a failed item (its full message stays in the failure list)."""
    from clipalign.runners.summary import failure_kind as scan_kind

    return next((kind for needle, kind in FAILURE_KINDS if needle in error), None) or scan_kind(error)


def failures_by_kind(failures: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Failed records grouped by :func:`failure_kind`, the most frequent kind first."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for record in failures:
        kinds.setdefault(failure_kind(str(record.get("error"))), []).append(record)
    return dict(sorted(kinds.items(), key=lambda kv: -len(kv[1])))


def markdown_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """A Markdown table; every column after the first right-aligned when ``numeric``."""
    aligns = ["---"] + ["--:" if numeric else "---"] * (len(header) - 1)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(aligns) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


EXAMPLES = 3
"""Failed items shown per reason in report.md (all of them are in the failure list)."""


def write_report(
    out_dir: str | Path,
    benchmark: str,
    metrics: dict[str, Any],
    settings: dict[str, Any],
    seconds: float,
    scored: int,
    *,
    failures: Sequence[dict[str, Any]] = (),
    failures_path: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md``; returns their paths.

    ``failures`` are the failed items' records (``id``, ``error``), listed by reason in ``report.md``;
    ``failures_path`` is the file that lists them all.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = backbone_of(str(settings.get("model", "")))
    published = PUBLISHED.get(benchmark, {}).get(backbone or "", {})
    throughput = scored / seconds if seconds > 0 and scored else None
    by_kind = failures_by_kind(failures)
    report = {
        "benchmark": benchmark,
        "settings": settings,
        "backbone": backbone,
        "headline": headline(benchmark, metrics),
        "published": published,
        "metrics": metrics,
        "failures": {kind: len(records) for kind, records in by_kind.items()},
        "failures_file": None if failures_path is None else str(failures_path),
        "seconds": seconds,
        "newly_scored": scored,
        "pairs_per_second": throughput,
    }
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    lines = [
        f"# {benchmark}",
        "",
        f"Items: {metrics.get('items', 0)} · failed: {metrics.get('failed', 0)} · "
        + (
            f"newly scored: {scored} in {seconds:.1f} s ({throughput:.1f} pairs/s)"
            if throughput
            else "all from cache"
        ),
        "",
        *markdown_table(*headline_table(benchmark, metrics, backbone)),
        "",
        *(f"- **{c.label}**: {c.legend}" for c in COLUMNS.get(benchmark, ())),
    ]
    methods = methods_table(metrics)
    if methods is not None:
        lines += ["", "## Methods", "", *markdown_table(*methods)]
    per_class = per_class_table(metrics)
    if per_class is not None:
        lines += ["", f"## Per {metrics['per_class']['by']}", "", *markdown_table(*per_class)]
        lines += ["", f"Sorted by energy; chart: `{PER_CLASS_CHART}`."]
    groups = group_table(benchmark, metrics)
    if groups is not None:
        lines += ["", f"## By {metrics['groups']['by']}", "", *markdown_table(*groups)]
        lines += [
            "",
            "The authors' per-group AP always ranks with the originals positive, as their code does.",
        ]
    if by_kind:
        lines += ["", "## Failures", ""]
        if failures_path is not None:
            lines += [f"All {len(failures)} failed items, one JSON line each: `{failures_path}`", ""]
        rows = [
            [kind, str(len(records)), "; ".join(f"`{r['id']}`: {r['error']}" for r in records[:EXAMPLES])]
            for kind, records in by_kind.items()
        ]
        lines += markdown_table(["reason", "count", "examples"], rows, numeric=False)
    lines += [
        "",
        "## All metrics",
        "",
        "```json",
        json.dumps(metrics, indent=2),
        "```",
        "",
        "## Settings",
        "",
    ]
    lines += [f"- {k}: `{v}`" for k, v in sorted(settings.items())]
    md_path = out / "report.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
