"""Summaries of scan outputs: counts, failures by reason, score quantiles, frequent misaligned words."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from rich.table import Table

from clipalign.runners.output import read_manifest
from clipalign.runners.schema import METADATA_KEY

FAILURE_KINDS = (
    ("duplicate", "duplicate"),
    ("not valid UTF-8", "non-UTF-8 text"),
    ("not valid Unicode", "non-UTF-8 text"),
    ("no such file", "missing file"),
    ("caption is empty", "empty caption"),
    ("no caption", "missing caption"),
    ("caption must be a string", "caption not text"),
    ("tar data", "corrupt shard"),
    ("tar shard", "corrupt shard"),
    ("truncated or unreadable", "corrupt shard"),
    ("(aspect ", "image too thin"),
    ("MAX_IMAGE_PIXELS", "image too large"),
    ("not a regular file", "not a file"),
    ("cannot read image", "corrupt image"),
    ("truncated", "corrupt image"),
)
"""(text in an error row, its kind) in order: the first match names the kind of a failure."""


def failure_kind(error: str) -> str:
    """A coarse reason for the summary line (the full message stays in the output)."""
    return next((kind for needle, kind in FAILURE_KINDS if needle in error), "other")


@dataclass
class ScanSummary:
    """What a scan produced: counts, failures by kind, score statistics and frequent misaligned words."""

    items: int
    failed: int
    failures: dict[str, int]
    clipscore: dict[str, float]
    f_clipscore: dict[str, float]
    top_misaligned: list[tuple[str, int]]
    settings: dict[str, Any] = field(default_factory=dict)
    f_values: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def table(self) -> Table:
        """Mean and percentiles of CLIPScore and F-CLIPScore, one statistic per row (fits 80 columns;
        a cell too long for a narrower terminal folds onto a second line instead of being cut)."""
        table = Table(title=f"{self.items} items, {self.failed} failed", show_edge=False)
        table.add_column("", overflow="fold")
        for name in ("CLIPScore", "F-CLIPScore"):
            table.add_column(name, justify="right", overflow="fold")
        for stat in ("mean", "p5", "p25", "p50", "p75", "p95"):
            table.add_row(
                stat, *(f"{s.get(stat, float('nan')):.4g}" for s in (self.clipscore, self.f_clipscore))
            )
        return table

    def failure_line(self) -> str:
        reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(self.failures.items(), key=lambda kv: -kv[1]))
        return f"failed: {self.failed}" + (f" ({reasons})" if reasons else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "failed": self.failed,
            "failures": self.failures,
            "clipscore": self.clipscore,
            "f_clipscore": self.f_clipscore,
            "top_misaligned": self.top_misaligned,
            "settings": self.settings,
        }


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    p5, p25, p50, p75, p95 = np.percentile(values, [5, 25, 50, 75, 95])
    return {"mean": float(values.mean()), "p5": p5, "p25": p25, "p50": p50, "p75": p75, "p95": p95}


COLUMNS = ["clipscore", "f_clipscore", "misaligned_words", "error"]
"""What a summary reads; a Parquet file without them is not a scan output."""


def output_files(path: Path) -> list[Path]:
    """The Parquet files of a scan output: the file itself, or a directory's committed parts."""
    if not path.exists():
        raise ValueError(f"no scan output at {path}")
    if not path.is_dir():
        return [path]
    manifest = read_manifest(path)
    if manifest is not None:
        return [path / part["file"] for part in manifest["parts"]]
    files = sorted(path.glob("part-*.parquet"))
    if not files:
        raise ValueError(f"no Parquet output found at {path}")
    return files


def _open(file: Path) -> pq.ParquetFile:
    """A scan output file, or a one-line ValueError when it is unreadable or not a scan output."""
    try:
        parquet = pq.ParquetFile(file, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"cannot read {file} as Parquet: {str(exc).splitlines()[0]}") from exc
    missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(f"{file} is not a clipalign scan output (no {missing[0]!r} column)")
    return parquet


def summarize(path: str | Path, top: int = 15) -> ScanSummary:
    """Read a scan output (one Parquet file or a directory of parts) column by column, batch by batch."""
    clip: list[np.ndarray] = [np.zeros(0)]
    fclip: list[np.ndarray] = [np.zeros(0)]
    words: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    items = 0
    settings: dict[str, Any] = {}
    for file in output_files(Path(path)):
        parquet = _open(file)
        settings = json.loads((parquet.schema_arrow.metadata or {}).get(METADATA_KEY, b"{}"))
        try:
            for batch in parquet.iter_batches(columns=COLUMNS):
                data = batch.to_pydict()
                items += batch.num_rows
                kinds.update(failure_kind(e) for e in data["error"] if e is not None)
                ok = [i for i, e in enumerate(data["error"]) if e is None]
                clip.append(np.array([data["clipscore"][i] for i in ok], dtype=np.float64))
                fclip.append(np.array([data["f_clipscore"][i] for i in ok], dtype=np.float64))
                words.update(w.lower().strip(".,;:!?\"'") for i in ok for w in data["misaligned_words"][i])
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"cannot read {file}: {str(exc).splitlines()[0]}") from exc
    clip_all, f_all = np.concatenate(clip), np.concatenate(fclip)
    return ScanSummary(
        items=items,
        failed=sum(kinds.values()),
        failures=dict(kinds),
        clipscore=_stats(clip_all),
        f_clipscore=_stats(f_all),
        top_misaligned=words.most_common(top),
        settings=settings,
        f_values=f_all,
    )


def histogram(summary: ScanSummary, out: str | Path, bins: int = 50) -> Path:
    """PNG histogram of F-CLIPScore over the scored items (0 = nothing flagged; lower = worse)."""
    fig = Figure(figsize=(7, 4), dpi=110, layout="constrained")
    ax = fig.subplots()
    values = summary.f_values
    ax.hist(values, bins=bins, color="#762a83")
    ax.set_xlabel("F-CLIPScore (≤ 0, lower = more misaligned)")
    ax.set_ylabel("items")
    flagged = int((values < 0).sum())
    ax.set_title(f"{values.size} scored items, {flagged} with misaligned words")
    path = Path(out)
    fig.savefig(path, format="png")
    return path
