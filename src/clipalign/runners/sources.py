"""Streaming sources of (key, image, caption) samples for dataset-scale scans.

Every source yields samples lazily in a deterministic order, so memory stays bounded and a resumed
run can skip exactly the samples already written. A sample that cannot be read (undecodable text, no
image member, duplicate key) is yielded with ``error`` set instead of being dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow.parquet as pq
from braceexpand import braceexpand

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One pair to score: ``image`` is a path or the encoded bytes (tar shards)."""

    index: int
    key: str
    image: Path | bytes | None
    caption: str | None
    error: str | None = None


@dataclass(frozen=True)
class Columns:
    """Column names of table inputs (JSONL, CSV, Parquet) and of caption JSON in tar shards."""

    image: str = "image"
    caption: str = "caption"
    key: str | None = None
    """Unique id column; without one, the image path is the key and repeated (image, caption) pairs
    are the duplicates."""


class _SeenKeys:
    """Remembers keys as 8-byte digests (not strings) to flag duplicates at scale."""

    def __init__(self) -> None:
        self._digests: set[int] = set()

    def add(self, key: str) -> bool:
        """Record ``key``; False when it was seen before."""
        digest = int.from_bytes(
            hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
        )
        if digest in self._digests:
            return False
        self._digests.add(digest)
        return True


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"caption is not valid UTF-8 ({exc.reason} at byte {exc.start})"


def _rows_jsonl(path: Path) -> Iterator[dict | str]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            text, error = _decode(raw)
            if error:
                yield f"line {number}: {error}"
                continue
            try:
                row = json.loads(text)  # type: ignore[arg-type]
            except json.JSONDecodeError as exc:
                yield f"line {number}: invalid JSON ({exc.msg})"
                continue
            yield row if isinstance(row, dict) else f"line {number}: not a JSON object"


def _rows_csv(path: Path) -> Iterator[dict | str]:
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        for row in csv.DictReader(text):
            bad = [
                k for k, v in row.items() if isinstance(v, str) and any("\udc80" <= c <= "\udcff" for c in v)
            ]
            yield f"column {bad[0]!r} is not valid UTF-8" if bad else row


def _rows_parquet(path: Path) -> Iterator[dict | str]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def table_samples(path: str | Path, columns: Columns, base_dir: str | Path | None = None) -> Iterator[Sample]:
    """Samples from a JSONL, CSV or Parquet table; relative image paths resolve against ``base_dir``
    (default: the table's directory)."""
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else path.parent
    readers = {".jsonl": _rows_jsonl, ".json": _rows_jsonl, ".csv": _rows_csv, ".parquet": _rows_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unsupported table format (use .jsonl, .csv or .parquet)")
    seen = _SeenKeys()
    for index, row in enumerate(reader(path)):
        if isinstance(row, str):
            yield Sample(index, f"#{index}", None, None, row)
            continue
        image, caption = row.get(columns.image), row.get(columns.caption)
        has_key = columns.key is not None and row.get(columns.key) is not None
        key = str(row.get(columns.key)) if has_key else str(image)
        # without a key column an image may carry several captions: only a repeated pair is a duplicate
        identity = key if has_key else f"{image}\x00{caption}"
        error = None
        if image is None:
            error = f"no {columns.image!r} column"
        elif not seen.add(identity):
            error = f"duplicate key {key!r}" if has_key else f"duplicate pair (image {key!r}, same caption)"
        image_path = base / str(image) if image is not None else None
        yield Sample(index, key, image_path, None if caption is None else str(caption), error)


def _caption_from_json(raw: bytes, field: str) -> tuple[str | None, str | None]:
    text, error = _decode(raw)
    if error:
        return None, error
    try:
        value = json.loads(text)  # type: ignore[arg-type]
    except json.JSONDecodeError as exc:
        return None, f"caption JSON is invalid ({exc.msg})"
    caption = value.get(field) if isinstance(value, dict) else None
    return (str(caption), None) if caption is not None else (None, f"caption JSON has no {field!r} field")


def tar_samples(pattern: str, columns: Columns) -> Iterator[Sample]:
    """Samples from webdataset / img2dataset tar shards ("shards/{00000..00099}.tar").

    Members are grouped by key (the name up to the first dot); the image is the member with an image
    extension, the caption the ``.txt`` member or the ``columns.caption`` field of the ``.json`` one.
    A missing shard fails before the first sample (the pattern is likely wrong); a damaged or unreadable
    shard gives error samples and reading goes on, so the stream is the same on every run.
    """
    shards = list(braceexpand(pattern))
    missing = [shard for shard in shards if not Path(shard).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"tar shard not found: {missing[0]}{more}")
    index = 0
    seen = _SeenKeys()
    for shard in shards:
        for key, content in _shard_groups(shard):
            if isinstance(content, str):
                yield Sample(index, key, None, None, content)
            else:
                yield _tar_sample(index, key, content, columns, seen)
            index += 1


_Info = TypeVar("_Info", bound=tarfile.TarInfo)
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError)
_BAD_HEADER_ERRORS: tuple[type[tarfile.HeaderError], ...] = tuple(
    vars(tarfile)[name] for name in ("InvalidHeaderError", "TruncatedHeaderError")
)
"""A garbled or cut-off member header (not in tarfile's typed API; zero blocks and EOF are fine)."""
_MAX_SKIPPED_BYTES = 64 << 20
"""Unreadable bytes to scan for the next valid tar header before giving up on the rest of a shard."""


class _Damage:
    """Header blocks that tarfile skipped as unreadable (``ignore_zeros``) since the last good member."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.end = 0
        self.reason = ""

    def note(self, start: int, end: int, reason: str) -> None:
        """Record a bad header at bytes ``start``–``end``; give up once too much in a row is unreadable."""
        if self.start is None:
            self.start, self.reason = start, reason
        self.end = end
        if self.end - self.start > _MAX_SKIPPED_BYTES:
            raise tarfile.ReadError(f"no valid tar header in {_MAX_SKIPPED_BYTES >> 20} MiB; rest skipped")

    def take(self, shard: str) -> tuple[str, str] | None:
        """The pending damage as an error item (key, message), clearing it; None when there is none."""
        if self.start is None:
            return None
        item = (
            f"{shard}@{self.start}",
            f"{shard}: unreadable tar data at bytes {self.start}–{self.end} ({self.reason})",
        )
        self.start = None
        return item


def _recording_tarinfo(damage: _Damage) -> type[tarfile.TarInfo]:
    """A TarInfo class that reports unreadable header blocks to ``damage`` (tarfile skips them silently)."""

    class RecordingTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls: type[_Info], tar: tarfile.TarFile) -> _Info:
            assert tar.fileobj is not None, "an open archive has a file object"
            start = tar.fileobj.tell()
            try:
                return super().fromtarfile(tar)
            except _BAD_HEADER_ERRORS as exc:
                damage.note(start, tar.fileobj.tell(), str(exc))
                raise

    return RecordingTarInfo


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _shard_groups(shard: str) -> Iterator[tuple[str, dict[str, bytes] | str]]:
    """(key, members by extension) per sample of one shard in archive order, or (key, error message)
    for a member cut short, a damaged stretch (skipped up to the next readable header) or a shard that
    cannot be opened at all."""
    damage = _Damage()
    group: dict[str, bytes] = {}
    current: str | None = None
    try:
        with tarfile.open(shard, mode="r|*", ignore_zeros=True, tarinfo=_recording_tarinfo(damage)) as tar:
            for member in tar:
                skipped = damage.take(shard)
                if skipped is not None:
                    if current is not None:
                        yield current, group
                    group, current = {}, None
                    yield skipped
                if not member.isfile():
                    continue
                base = Path(member.name)
                key = str(base.parent / base.name.split(".", 1)[0])
                if current is not None and key != current:
                    yield current, group
                    group = {}
                current = key
                try:
                    extracted = tar.extractfile(member)
                    data = extracted.read() if extracted else b""
                except _TAR_ERRORS as exc:
                    yield key, f"{shard}: member {member.name} is truncated or unreadable ({_reason(exc)})"
                    return
                group[base.name.split(".", 1)[1].lower() if "." in base.name else ""] = data
    except _TAR_ERRORS as exc:
        if current is not None:
            yield current, group
        skipped = damage.take(shard)
        yield (skipped[0] if skipped else shard), f"{shard}: cannot read tar shard ({_reason(exc)})"
        return
    if current is not None:
        yield current, group
    skipped = damage.take(shard)
    if skipped is not None:
        yield skipped


def _tar_sample(index: int, key: str, group: dict[str, bytes], columns: Columns, seen: _SeenKeys) -> Sample:
    image = next((group[e] for e in group if f".{e}" in IMAGE_EXTENSIONS), None)
    caption, error = None, None
    if "txt" in group:
        caption, error = _decode(group["txt"])
    elif "json" in group:
        caption, error = _caption_from_json(group["json"], columns.caption)
    else:
        error = "no .txt or .json caption member"
    if image is None:
        error = error or "no image member"
    if not seen.add(key):
        error = f"duplicate key {key!r}"
    return Sample(index, key, image, caption, error)


def directory_samples(images_dir: str | Path, captions: str | Path) -> Iterator[Sample]:
    """Samples from an image directory and a captions JSON: {file name: caption} or a list of
    {"file_name"/"image": ..., "caption": ...}; images without a caption are reported."""
    directory = Path(images_dir)
    data = json.loads(Path(captions).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        pairs: Sequence[tuple[str, object]] = list(data.items())
    elif isinstance(data, list):
        pairs = [
            (str(d.get("file_name", d.get("image"))), d.get("caption")) for d in data if isinstance(d, dict)
        ]
    else:
        raise ValueError(f"{captions}: expected an object {{file: caption}} or a list of records")
    captioned = {name for name, _ in pairs}
    index = 0
    seen = _SeenKeys()
    for name, caption in pairs:
        error = None if seen.add(name) else f"duplicate key {name!r}"
        yield Sample(index, name, directory / name, None if caption is None else str(caption), error)
        index += 1
    for path in sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        name = str(path.relative_to(directory))
        if name not in captioned:
            yield Sample(index, name, path, None, "no caption for this image")
            index += 1


def open_source(
    source: str, columns: Columns, captions: str | None = None, base_dir: str | None = None
) -> Iterator[Sample]:
    """Pick the reader for a path: a table file, tar shards (braces allowed), or an image directory."""
    if captions is not None:
        return directory_samples(source, captions)
    if source.endswith(".tar") or ("{" in source and ".tar" in source):
        return tar_samples(source, columns)
    path = Path(source)
    if path.is_dir():
        raise ValueError(f"{source} is a directory: give --captions FILE to pair its images with captions")
    if not path.exists():
        raise ValueError(f"input not found: {source}")
    return table_samples(path, columns, base_dir)
