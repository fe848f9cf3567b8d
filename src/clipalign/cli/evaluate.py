"""``clipalign eval BENCHMARK --annotations FILE --images DIR``: a paper benchmark, cached and resumable."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from rich.console import Console
from rich.table import Table

from clipalign.attribution.interactions import TokenPatchInteractions
from clipalign.attribution.words import CLIP4DM
from clipalign.cli.common import add_model_options, open_model, stderr
from clipalign.datasets import BENCHMARKS
from clipalign.evaluation.cache import ResultCache
from clipalign.evaluation.report import write_report
from clipalign.evaluation.runner import (
    misalignment_metrics,
    pointing_metrics,
    resolve_images,
    score_misalignment,
    score_pointing,
    timed,
)

DEFAULT_EPSILON = {"richhf": -1e-5}
"""Benchmarks the authors evaluate at another ε than −5e-5."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate on a paper benchmark (FOIL, nocaps-FOIL, HAT, ...)")
    p.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument(
        "--annotations", required=True, help="annotation file (or directory) in its original format"
    )
    p.add_argument("--images", required=True, help="directory of the benchmark's images")
    p.add_argument("--out", default="eval-results", help="reports and per-item cache go to OUT/BENCHMARK/")
    p.add_argument("--limit", type=int, help="only the first N items, for a quick look")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per forward/backward")
    p.add_argument("--layers", type=int, default=3, help="CLIP4DM: last text layers averaged")
    p.add_argument("--epsilon", type=float, help="CLIP4DM threshold (default −5e-5; −1e-5 for richhf)")
    p.add_argument("--steps", type=int, default=10, help="pointing games: quadrature nodes")
    p.add_argument(
        "--nli-model", default=None, help="SeeTRUE-Feedback: NLI classifier (default bart-large-mnli)"
    )
    p.add_argument("--prompts", help="richhf: Pick-a-Pic prompts file (see clipalign.datasets)")
    p.add_argument("--instances", help="pointing-coco: COCO instances_*.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    p.set_defaults(func=run)


def _load_items(args: argparse.Namespace) -> list:
    loader = BENCHMARKS[args.benchmark]
    accepted = inspect.signature(loader).parameters
    extra = {k: getattr(args, k) for k in ("prompts", "instances") if getattr(args, k) and k in accepted}
    for name in ("prompts", "instances"):
        if getattr(args, name) and name not in accepted:
            raise ValueError(f"--{name} does not apply to {args.benchmark}")
    return loader(args.annotations, resolve_images(args.images), limit=args.limit, **extra)


def run(args: argparse.Namespace) -> int:
    items = _load_items(args)
    if not items:
        raise ValueError(f"no items in {args.annotations}")
    model = open_model(args)
    out = Path(args.out) / args.benchmark
    pointing = args.benchmark.startswith("pointing")
    settings: dict = {"benchmark": args.benchmark, "model": model.name, "dtype": args.dtype}
    if pointing:
        settings.update(steps=args.steps, template="")
        method = TokenPatchInteractions(model, steps=args.steps)
        cache = ResultCache(out / "cache", settings)
        before = len(cache.load())
        records, seconds = timed(lambda: score_pointing(items, method, cache, progress=not args.no_progress))
        metrics = pointing_metrics(records)
    else:
        epsilon = args.epsilon if args.epsilon is not None else DEFAULT_EPSILON.get(args.benchmark, -5e-5)
        settings.update(layers=args.layers, epsilon=epsilon, template=args.template)
        attributor = CLIP4DM(model, layers=args.layers, template=args.template, epsilon=epsilon)
        cache = ResultCache(out / "cache", settings)
        before = len(cache.load())
        records, seconds = timed(
            lambda: score_misalignment(
                items, attributor, cache, args.batch_size, progress=not args.no_progress
            )
        )
        nli = None
        if any(it.feedback is not None for it in items):
            from clipalign.evaluation.nli import DEFAULT_NLI_MODEL, NLIScorer

            nli = NLIScorer(args.nli_model or DEFAULT_NLI_MODEL, device=args.device)
        metrics = misalignment_metrics(items, records, nli)
    scored = len(cache.load()) - before
    json_path, md_path = write_report(out, args.benchmark, metrics, settings, seconds, scored)
    _print(metrics, json_path, md_path)
    return 0


def _print(metrics: dict, json_path: Path, md_path: Path) -> None:
    table = Table(show_header=False, show_edge=False)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    if metrics.get("failed"):
        stderr.print(f"[yellow]{metrics['failed']} item(s) failed; reasons are in the cache file[/]")
    Console().print(f"wrote {md_path} and {json_path}")
