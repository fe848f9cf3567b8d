"""``clipalign models``: the model families clipalign supports, what each needs, and what is cached locally.

Only argparse is imported at start-up; the registry (torch, transformers) and huggingface_hub load when
the command runs. The cache listing reads files only (``config.json`` of each cached model): it is
offline and never asks the Hub.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipalign.cli.common import print_json

if TYPE_CHECKING:
    from huggingface_hub import CachedRepoInfo, CachedRevisionInfo

SAFE_WEIGHTS = (".safetensors", ".safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="the model families clipalign supports, what each needs, and the loadable models in the local "
        "Hugging Face cache",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument(
        "--cache-dir",
        help="the Hugging Face hub cache to list (default: $HF_HUB_CACHE, else ~/.cache/huggingface/hub)",
    )
    p.set_defaults(func=run)


@dataclass(frozen=True)
class CachedModel:
    """One model repository in the local Hugging Face cache and whether clipalign can load it."""

    repo_id: str
    model_type: str | None
    loadable: bool
    status: str
    """``loadable``, ``loadable with --allow-pickle``, or why not (no weights, unsupported, remote code)."""
    size_bytes: int
    revision: str


def _revision(repo: CachedRepoInfo) -> CachedRevisionInfo:
    """The revision ``main`` points at, else the most recently modified one."""
    revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
    return next((r for r in revisions if "main" in r.refs), revisions[0])


def describe_cached(repo: CachedRepoInfo, supported: Collection[str]) -> CachedModel:
    """Read the chosen revision's ``config.json`` and weight file names: can clipalign load this model?"""
    from clipalign.models.errors import CONFIG_FILE, unsupported_reason

    revision = _revision(repo)
    files = {f.file_name: f.file_path for f in revision.files}
    model_type: str | None = None

    def entry(loadable: bool, status: str) -> CachedModel:
        return CachedModel(
            repo.repo_id, model_type, loadable, status, repo.size_on_disk, revision.commit_hash
        )

    if CONFIG_FILE not in files:
        return entry(False, f"no {CONFIG_FILE} (not in Hugging Face transformers format)")
    try:
        config = json.loads(Path(files[CONFIG_FILE]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return entry(False, f"unreadable {CONFIG_FILE} ({exc})")
    if not isinstance(config, dict):
        return entry(False, f"{CONFIG_FILE} is not a JSON object")
    model_type = config["model_type"] if isinstance(config.get("model_type"), str) else None
    reason = unsupported_reason(config, supported)
    if reason is not None:
        return entry(False, reason)
    if any(name.endswith(SAFE_WEIGHTS) for name in files):
        return entry(True, "loadable")
    if any(name in PICKLE_WEIGHTS for name in files):
        return entry(True, "loadable with --allow-pickle (pickle weights only)")
    return entry(False, "no weights downloaded")


def cached_models(cache_dir: str | Path | None, supported: Collection[str]) -> tuple[str, list[CachedModel]]:
    """The hub cache's path and its model repositories, sorted by name (none when it does not exist)."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    path = str(Path(cache_dir).expanduser()) if cache_dir else constants.HF_HUB_CACHE
    try:
        info = scan_cache_dir(path)
    except CacheNotFound:
        return path, []
    repos = [r for r in info.repos if r.repo_type == "model" and r.revisions]
    return path, [describe_cached(r, supported) for r in sorted(repos, key=lambda r: r.repo_id.lower())]


def _size(n_bytes: int) -> str:
    """A size on disk in decimal units, as ``hf cache`` prints them: ``23 B``, ``605 MB``."""
    size = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def run(args: argparse.Namespace) -> int:
    from clipalign.models.registry import MODEL_ALIASES, families

    described = families()
    cache, cached = cached_models(args.cache_dir, [f.model_type for f in described])
    report: dict[str, Any] = {
        "families": [asdict(f) for f in described],
        "aliases": {name: str(path) for name, path in MODEL_ALIASES.items()},
        "cache_dir": cache,
        "cached": [asdict(m) for m in cached],
    }
    if args.json:
        print_json(report)
        return 0
    lines = ["Supported families (config.json model_type → adapter):"]
    for f in described:
        lines += [f"  {f.model_type}: {f.adapter}", f"    needs: {f.needs}"]
    lines.append(
        "  Not supported: checkpoints that need remote code (config.json auto_map, trust_remote_code: "
        "jina-clip and the like), and open_clip or original-format checkpoints until converted to HF format."
    )
    lines.append("Shipped with clipalign, offline (pass the name as --model):")
    lines += [f"  {name}: {path}" for name, path in report["aliases"].items()]
    lines.append(f"Local Hugging Face cache ({cache}):")
    if not cached:
        lines.append("  no models cached")
    for m in cached:
        mark = "✓" if m.loadable else "✗"
        lines.append(
            f"  {mark} {m.repo_id} ({m.model_type or 'no model_type'}, {_size(m.size_bytes)}): {m.status}"
        )
    print("\n".join(lines))
    return 0
