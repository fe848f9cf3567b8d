"""Shared by the benchmark scripts: paths, the two seeded random CLIP models, machine info, load average.

Both models are built from configs with the real CLIP tokenizer from ``../shared/data``: a tiny one
(``tiny_clip_config()``) and one with the ``openai/clip-vit-base-patch32`` architecture. Speed and memory
depend on the architecture, not on the weights.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import CLIPConfig

import clipalign
from clipalign import load_model
from clipalign.models.base import ClipAdapter
from clipalign.testing import cpu_model, save_random_clip, tiny_clip_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TOKENIZER_DIR = SHARED / "clip-tokenizer"
B32_CONFIG_DIR = SHARED / "configs" / "clip-vit-base-patch32"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

SEED = 0
TINY = "tiny"
B32 = "vit-b32-sized"


def require_shared_data() -> None:
    """Exit with a clear message when the tokenizer or the B/32 config is missing."""
    missing = [p for p in (TOKENIZER_DIR, B32_CONFIG_DIR) if not p.exists()]
    if missing:
        sys.exit(f"shared data not found: {', '.join(map(str, missing))} (needed by this benchmark)")


def model_configs() -> dict[str, CLIPConfig]:
    """The benchmarked architectures by name: the tiny test model and the ViT-B/32-sized one."""
    return {TINY: tiny_clip_config(), B32: CLIPConfig.from_pretrained(B32_CONFIG_DIR)}


def save_model(config: CLIPConfig, workdir: Path) -> Path:
    """Write a seeded random model from ``config`` (with the real tokenizer) to ``workdir``."""
    return save_random_clip(workdir, config, TOKENIZER_DIR, seed=SEED)


def load_cpu_model(model_dir: Path) -> ClipAdapter:
    """Load a saved model on CPU in fp32."""
    return load_model(model_dir, device="cpu")


def load_average_1min() -> float:
    """The 1-minute load average: how busy the machine was around a measurement."""
    return os.getloadavg()[0]


def machine_info() -> dict[str, Any]:
    """CPU, threads, library versions and the date (UTC) of this run."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "clipalign": clipalign.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_line(report: dict[str, Any]) -> str:
    """A results file's opening words: the command, the date, clipalign's version and commit."""
    code, machine = report["code"], report["machine"]
    dirty = ", uncommitted changes" if code["dirty"] else ""
    return (
        f"`{report['command']}` · {machine['date'][:10]} · clipalign {machine['clipalign']} "
        f"(commit {code['commit'][:10]}{dirty}) · "
    )


def goal_text(value: float, goal: float, at_least: bool, fmt: str = ".2f") -> str:
    """A ratio and whether it meets its goal, e.g. ``2.10× (misses ≥ 5×)``; ``fmt`` formats the ratio."""
    met = value >= goal if at_least else value <= goal
    return f"{value:{fmt}}× ({'meets' if met else 'misses'} {'≥' if at_least else '≤'} {goal:g}×)"


def write_results(stem: str, report: dict[str, Any], table: str) -> None:
    """Write ``results/<stem>.json`` (everything measured) and ``results/<stem>.md`` (the table); print it."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (RESULTS_DIR / f"{stem}.md").write_text(table)
    print(table)
