"""Benchmark reports: our numbers beside the published ones for the same backbone (Markdown + JSON)."""

from __future__ import annotations

import json
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

HEADLINE_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    # which of our metrics corresponds to each published column, per benchmark (the authors' conventions)
    "foil": {"LA": ("LA",), "AP": ("AP", "aligned-positive", "F-CLIPScore (lowest word)")},
    "nocaps-foil": {"LA": ("LA",), "AP": ("AP", "aligned-positive", "F-CLIPScore (lowest word)")},
    "hat": {"LA": ("LA_span_lenient",), "AP": ("AP", "misaligned-positive", "F-CLIPScore")},
    "seetrue-feedback": {"NLI": ("NLI",)},
    "richhf": {"F1": ("word_PRF", "f1")},
    "synthetic": {"LA": ("LA",), "AP": ("AP", "aligned-positive", "F-CLIPScore")},
    "pointing-coco": {"accuracy": ("accuracy",), "energy": ("energy",)},
    "pointing-flickr30k": {"accuracy": ("accuracy",), "energy": ("energy",)},
    "pointing-synthetic": {"accuracy": ("accuracy",), "energy": ("energy",)},
}


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
    return float(value)


def headline(benchmark: str, metrics: dict[str, Any]) -> dict[str, float | None]:
    return {name: _lookup(metrics, path) for name, path in HEADLINE_SOURCES.get(benchmark, {}).items()}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def write_report(
    out_dir: str | Path,
    benchmark: str,
    metrics: dict[str, Any],
    settings: dict[str, Any],
    seconds: float,
    scored: int,
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = backbone_of(str(settings.get("model", "")))
    published = PUBLISHED.get(benchmark, {}).get(backbone or "", {})
    ours = headline(benchmark, metrics)
    throughput = scored / seconds if seconds > 0 and scored else None
    report = {
        "benchmark": benchmark,
        "settings": settings,
        "backbone": backbone,
        "headline": ours,
        "published": published,
        "metrics": metrics,
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
        "| metric | ours | published (" + (backbone or "no matching backbone") + ") |",
        "|---|--:|--:|",
    ]
    for name, value in ours.items():
        lines.append(f"| {name} | {_fmt(value)} | {_fmt(published.get(name))} |")
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
