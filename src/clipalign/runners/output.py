"""A scan's output on disk: Parquet parts, their manifest, one writer at a time, the merged file.

``out`` is a directory of ``part-<first index>.parquet`` files, or a ``.parquet`` file whose parts
live in ``<out>.parts/`` until :meth:`PartWriter.finish` merges them. Beside the parts, the manifest
``_clipalign.json`` records the run's settings, every committed part (file, first index, rows,
sha256) and whether the output is complete. A part is written to a temporary file, synced and
renamed; then the manifest is rewritten the same way. A part the manifest does not list was never
committed and is discarded.

Resume trusts the manifest, not file names: every listed part must be present with its checksum and
the parts contiguous from 0, or the run refuses. The single file is merged and renamed into place
before the manifest says "complete", and parts are deleted only after that, so a run interrupted in
its clean-up leaves a complete output, which a rerun treats like any complete output: with the same
settings there is nothing to score (:class:`OutputComplete`), with others it is refused, each
differing setting named.

Parts written by clipalign 0.1 (no manifest) are adopted when they are contiguous from 0 and match
the settings; a gap is refused. ``--overwrite`` deletes only files named as clipalign names them;
a directory holding other files and no manifest is refused. One writer per output: ``fcntl.flock``
on ``.clipalign.lock`` in a directory output, ``.<name>.lock`` beside a single file (the OS releases
it when the process dies).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from clipalign.runners.schema import METADATA_KEY, SCHEMA, Row
from clipalign.settings import LEGACY_DEFAULTS, ScanSettings, comparable

MANIFEST = "_clipalign.json"
DIR_LOCK = ".clipalign.lock"
TMP_PREFIX = ".clipalign-"
PART = re.compile(r"part-(\d{12})\.parquet")
LEGACY_TMP = re.compile(r"part-\d{12}\.tmp")
"""A temporary part of clipalign 0.1, left by a killed run."""

COMPLETE = "already exists and is complete: use --overwrite to score again"


class OutputComplete(ValueError):
    """The output is already complete, written with the same settings: there is nothing to score.

    A ValueError (the library refuses to write it again); ``clipalign scan`` reports the finished
    output instead and succeeds.
    """

    def __init__(self, out: Path) -> None:
        super().__init__(f"{out} {COMPLETE}")
        self.out = out


def setting_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Each setting that differs between a recorded run (``old``) and this one, as ``name: old → new``.

    A setting the old run did not record counts as its :data:`~clipalign.settings.LEGACY_DEFAULTS`
    value (or "not recorded"), as :func:`~clipalign.settings.comparable` does.
    """
    missing = object()
    changes = []
    for key in sorted(comparable(old).keys() | comparable(new).keys()):
        before = old.get(key, LEGACY_DEFAULTS.get(key, missing))
        after = new.get(key, LEGACY_DEFAULTS.get(key, missing))
        if before != after:
            shown = ["not recorded" if v is missing else json.dumps(v) for v in (before, after)]
            changes.append(f"{key}: {shown[0]} → {shown[1]}")
    return changes


def owned(name: str) -> bool:
    """Whether a file in a parts directory has a name clipalign gives (part, manifest, lock, temporary)."""
    if name in (MANIFEST, DIR_LOCK) or PART.fullmatch(name) or LEGACY_TMP.fullmatch(name):
        return True
    return name.startswith(TMP_PREFIX) and name.endswith(".tmp")


def is_output_file(path: Path) -> bool:
    """Whether ``path`` is a Parquet file whose schema carries clipalign's settings."""
    try:
        return METADATA_KEY in (pq.read_schema(path).metadata or {})
    except (pa.ArrowException, OSError):
        return False


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a parts directory, or None when it has none."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest: dict[str, Any] = json.loads(path.read_bytes())
        return manifest
    except ValueError as exc:
        raise ValueError(f"{path} is unreadable ({exc}): use --overwrite to start again") from exc


def _recorded(path: Path) -> dict[str, Any]:
    """The settings a Parquet output file or part records in its schema."""
    recorded: dict[str, Any] = json.loads((pq.read_schema(path).metadata or {}).get(METADATA_KEY, b"{}"))
    return recorded


def _sync(path: Path) -> None:
    """Flush a file (or directory entry changes) to disk, so a rename after it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _replace(tmp: Path, path: Path) -> None:
    """Atomically put a written temporary file in place, durably."""
    _sync(tmp)
    os.replace(tmp, path)
    _sync(path.parent)


def _acquire(path: Path, out: Path) -> IO[bytes]:
    """An exclusive lock on ``path``, or a ValueError naming the scan that holds it.

    The file is checked to still be the one at ``path`` after locking: a writer that is done deletes
    its lock file, and a lock taken on the deleted file would guard nothing.
    """
    while True:
        try:
            handle = path.open("a+b")
        except OSError as exc:
            raise ValueError(f"cannot write to {path.parent}: {exc.strerror}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(32).decode(errors="replace").strip() or "unknown"
            handle.close()
            raise ValueError(f"{out} is being written by another scan (pid {holder})") from None
        if path.exists() and os.path.samestat(os.fstat(handle.fileno()), path.stat()):
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n".encode())
            handle.flush()
            return handle
        handle.close()


class PartWriter:
    """The output of one scan: checked, locked, resumed from its manifest, written part by part.

    Opening it checks the paths, takes the lock and works out where to resume (or, with
    ``options.overwrite``, deletes clipalign's earlier files). :meth:`add` buffers rows and writes a
    part every ``options.part_size`` rows, then calls ``on_part`` with its path; :meth:`finish`
    writes the rest and completes the output; :meth:`close` (or the ``with`` block) releases the lock.
    """

    def __init__(
        self,
        out: str | Path,
        metadata: dict[str, Any],
        options: ScanSettings,
        on_part: Callable[[Path], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.single_file = self.out.suffix == ".parquet"
        self.directory = self.out.with_name(self.out.name + ".parts") if self.single_file else self.out
        self.metadata = metadata
        self.part_size = options.part_size
        self.on_part = on_part
        self.pending: list[Row] = []
        self.schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
        absolute = Path(os.path.abspath(self.out))  # "." has no name to put beside
        self.merged_tmp = absolute.with_name(f"{TMP_PREFIX}{absolute.name}.tmp")
        self._lock_path = (
            self.out.with_name(f".{self.out.name}.lock") if self.single_file else self.out / DIR_LOCK
        )
        self._lock: IO[bytes] | None = None
        self._check_paths()
        self._lock = _acquire(self._lock_path, self.out)
        try:
            self.parts = self._open(options.overwrite)
        except BaseException:
            self.close()
            raise

    def _check_paths(self) -> None:
        """Refuse, before anything is scored, an ``out`` that cannot be written or is someone else's file."""
        if self.single_file:
            if self.out.is_dir():
                raise ValueError(f"{self.out} is a directory: a .parquet --out names one file")
            if self.out.exists() and not is_output_file(self.out):
                raise ValueError(
                    f"{self.out} exists and is not a clipalign scan output: choose another --out"
                )
            if self.directory.exists() and not self.directory.is_dir():
                raise ValueError(f"{self.directory} exists and is not a directory: choose another --out")
            base = self.out.parent
        elif self.out.exists() and not self.out.is_dir():
            raise ValueError(f"{self.out} is a file: --out names a directory of parts or a .parquet file")
        else:
            base = self.out
        try:
            base.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise ValueError(f"cannot create {base}: part of that path is a file") from exc
        except OSError as exc:
            raise ValueError(f"cannot create {base}: {exc.strerror}") from exc
        if not os.access(base, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write to {base}: permission denied")

    def _open(self, overwrite: bool) -> list[dict[str, Any]]:
        """The committed parts to resume after, once the output's state is checked (see the module doc)."""
        has_manifest = (self.directory / MANIFEST).exists()
        if self.directory.is_dir() and not has_manifest:
            foreign = sorted(name for name in os.listdir(self.directory) if not owned(name))
            if foreign:
                raise ValueError(
                    f"{self.directory} holds files clipalign did not write ({foreign[0]}): "
                    "choose another --out"
                )
        if overwrite:
            self._discard()
            return []
        manifest = read_manifest(self.directory)
        present = sorted(self.directory.glob("part-*.parquet")) if self.directory.is_dir() else []
        if manifest is None:
            if self.single_file and self.out.exists():
                if present:
                    raise ValueError(
                        f"{self.out} has leftover parts in {self.directory} (an older clipalign's): "
                        f"delete {self.directory} to keep {self.out}, or use --overwrite"
                    )
                self._check_settings(_recorded(self.out), self.out)
                raise OutputComplete(self.out)
            parts = self._adopt(present)
        else:
            self._check_settings(manifest.get("settings", {}), self.directory / MANIFEST)
            if manifest.get("complete"):
                if self.single_file:
                    self._finish_clean_up(sum(p["rows"] for p in manifest["parts"]))
                raise OutputComplete(self.out)
            parts = self._verify(manifest["parts"])
        listed = {p["file"] for p in parts}
        for name in os.listdir(self.directory) if self.directory.is_dir() else []:
            if owned(name) and name not in listed and name not in (MANIFEST, DIR_LOCK):
                os.remove(self.directory / name)  # uncommitted: a part or temporary of a killed run
        self.merged_tmp.unlink(missing_ok=True)
        return parts

    def _finish_clean_up(self, rows: int) -> None:
        """Complete the clean-up of a merged output that was interrupted, once the file is checked."""
        if not (self.out.exists() and pq.ParquetFile(self.out).metadata.num_rows == rows):
            raise ValueError(
                f"{self.directory} says the scan is complete but {self.out} is not: use --overwrite"
            )
        self._clean_up()

    def _check_settings(self, settings: dict[str, Any], where: Path) -> None:
        """Refuse output written with other settings, naming each; a setting it predates counts as its
        old value."""
        changes = setting_changes(settings, self.metadata)
        if changes:
            raise ValueError(
                f"{where} was written with other settings ({'; '.join(changes)}): "
                "use --overwrite to start again or another --out"
            )

    def _verify(self, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The manifest's parts, each checked present, unchanged and following the one before."""
        expected = 0
        for part in parts:
            path = self.directory / part["file"]
            if part["first"] != expected or not path.exists():
                raise ValueError(
                    f"{self.out} has a gap at index {expected} ({path.name} is missing): "
                    "use --overwrite to start again"
                )
            if _sha256(path) != part["sha256"]:
                raise ValueError(f"{path} does not match its checksum in the manifest: use --overwrite")
            expected += part["rows"]
        return parts

    def _adopt(self, present: list[Path]) -> list[dict[str, Any]]:
        """Parts written before the manifest existed: accepted when contiguous from 0 with our settings."""
        parts: list[dict[str, Any]] = []
        expected = 0
        for path in present:
            self._check_settings(_recorded(path), path)
            first = int(path.stem.split("-")[1])
            if first != expected:
                raise ValueError(
                    f"{self.out} has a gap at index {expected} (parts without a manifest): use --overwrite"
                )
            rows = pq.ParquetFile(path).metadata.num_rows
            parts.append({"file": path.name, "first": first, "rows": rows, "sha256": _sha256(path)})
            expected += rows
        return parts

    def _discard(self) -> None:
        """Delete what clipalign wrote here before (for --overwrite), and nothing else."""
        if self.single_file:
            self.out.unlink(missing_ok=True)
        self.merged_tmp.unlink(missing_ok=True)
        if self.directory.is_dir():
            self._clean_up()

    def _clean_up(self) -> None:
        """Delete the parts, then the manifest (an interruption keeps it), then an empty parts directory."""
        names = [n for n in os.listdir(self.directory) if owned(n) and n not in (MANIFEST, DIR_LOCK)]
        for name in [*sorted(names), MANIFEST]:
            (self.directory / name).unlink(missing_ok=True)
        if self.single_file and not os.listdir(self.directory):
            self.directory.rmdir()

    def _save(self, complete: bool = False) -> None:
        """Rewrite the manifest atomically."""
        manifest = {"settings": self.metadata, "parts": self.parts, "complete": complete}
        tmp = self.directory / f"{TMP_PREFIX}{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _replace(tmp, self.directory / MANIFEST)

    def completed(self) -> int:
        """How many input samples the committed parts cover (they are contiguous from 0)."""
        return sum(p["rows"] for p in self.parts)

    def write(self, rows: list[Row]) -> Path:
        """Write one part named after its first input index, then commit it to the manifest."""
        self.directory.mkdir(exist_ok=True)
        first = rows[0]["index"]
        path = self.directory / f"part-{first:012d}.parquet"
        tmp = self.directory / f"{TMP_PREFIX}{path.name}.tmp"
        pq.write_table(pa.Table.from_pylist(rows, schema=self.schema), tmp, write_page_checksum=True)
        _replace(tmp, path)
        self.parts.append({"file": path.name, "first": first, "rows": len(rows), "sha256": _sha256(path)})
        self._save()
        return path

    def add(self, rows: list[Row]) -> None:
        """Buffer rows (in input order); write a part once ``part_size`` rows are waiting."""
        self.pending.extend(rows)
        if len(self.pending) >= self.part_size:
            path = self.write(self.pending)
            self.pending = []
            if self.on_part:
                self.on_part(path)

    def finish(self) -> None:
        """Write the rows still buffered and mark the output complete, merging the single file first."""
        if self.pending:
            self.write(self.pending)
            self.pending = []
        if self.single_file:
            merge_parts([self.directory / p["file"] for p in self.parts], self.out, self.schema)
            if self.directory.is_dir():
                self._save(complete=True)
                self._clean_up()
        else:
            self.directory.mkdir(exist_ok=True)
            self._save(complete=True)

    def close(self) -> None:
        """Release the lock (and delete its file) so that another scan may write here."""
        if self._lock is not None:
            self._lock_path.unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self.close()


@contextmanager
def writing(
    out: str | Path | PartWriter,
    metadata: dict[str, Any],
    options: ScanSettings,
    on_part: Callable[[Path], None] | None = None,
) -> Iterator[PartWriter]:
    """``out`` if it is an open writer (its opener closes it), else a writer opened and closed here."""
    if isinstance(out, PartWriter):
        yield out
        return
    with PartWriter(out, metadata, options, on_part) as writer:
        yield writer


def merge_parts(parts: list[Path], out: Path, schema: pa.Schema) -> None:
    """Concatenate parts into one Parquet file, one part in memory at a time, replacing ``out`` atomically."""
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}.tmp")
    with pq.ParquetWriter(tmp, schema, write_page_checksum=True) as merged:
        for part in parts:
            merged.write_table(pq.read_table(part, schema=schema))
    _replace(tmp, out)
