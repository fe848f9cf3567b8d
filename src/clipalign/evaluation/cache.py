"""Per-item results on disk, keyed by item id and a hash of the settings, so runs resume.

Records are appended as JSON lines and flushed batch by batch; a line cut by an interrupted run is
ignored (its item is recomputed). Changing any setting that affects results changes the file name.

A failure to read an item's image file (missing, unreadable, truncated) is not a result: the file may be
added or fixed before the next run, so such records are neither written nor read back, and the next run
tries the item again. Every other failure (a caption the model cannot take, an image too wide) is
deterministic and stays cached like a result, so it is not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipalign.images.loading import READ_FAILURE
from clipalign.settings import comparable

_READ_FAILURE = f": {READ_FAILURE}: "


def is_retried(record: dict[str, Any]) -> bool:
    """Whether ``record`` is a failure to read its image file, which the next run tries again."""
    error = record.get("error")
    return isinstance(error, str) and _READ_FAILURE in error


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings that determine per-item results.

    Hashed in :func:`~clipalign.settings.comparable` form, so a cache written before a setting was
    recorded keeps its name for runs that use that setting's old implicit value.
    """
    blob = json.dumps(comparable(settings), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ResultCache:
    """An append-only JSONL file of ``{"id": ..., ...}`` records for one benchmark and one setting."""

    def __init__(self, directory: str | Path, settings: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.settings = settings
        self.path = self.directory / f"{settings_key(settings)}.jsonl"

    def load(self) -> dict[str, dict[str, Any]]:
        """Every complete record written so far, by id (the last one wins); image read failures, which
        older versions wrote, are left out so that their items are tried again."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "id" in record and not is_retried(record):
                    records[str(record["id"])] = record
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write records durably (flush + fsync) so a killed run loses at most the batch in flight;
        image read failures are not written (:func:`is_retried`)."""
        kept = [r for r in records if not is_retried(r)]
        if not kept:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        settings_file = self.path.with_suffix(".settings.json")
        if not settings_file.exists():
            settings_file.write_text(json.dumps(self.settings, indent=2, sort_keys=True, default=str))
        with self.path.open("a", encoding="utf-8") as f:
            if f.tell() > 0:
                f.write("\n")  # a previous run may have died mid-line: start clean
            f.write("\n".join(json.dumps(r, ensure_ascii=False) for r in kept))
            f.flush()
            os.fsync(f.fileno())
