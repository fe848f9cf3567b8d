"""Fetch the images of the benchmarks whose authors download them by script (nocaps-FOIL, Rich-HF).

Every file is written to a temporary name in its final folder and renamed into place only once it is
complete and verified (its MD5 when one is known, otherwise that Pillow decodes it fully), so a file
under its final name is always whole: a rerun skips those (after checking them again) and fetches the
rest. Downloads run in a small thread pool with retries and exponential backoff; a file that cannot be
fetched becomes a failure row with a one-line reason instead of stopping the others.

Where the URLs come from, as in the authors' ``misc/download_*_image.py``:

- nocaps: each ``image_path`` of ``nocaps-val-foil.json`` is looked up by ``file_name`` in the
  ``images`` of nocaps' ``nocaps_val_4500_captions.json``, whose ``coco_url`` is the download URL.
  Neither file carries a checksum.
- Rich-HF: each record's ``filename`` in ``test.tfrecord`` names a Pick-a-Pic v1 image by uid; its
  bytes (``jpg_0``/``jpg_1``) or, in the image-less copy, its URL (``image_0_url``/``image_1_url``)
  are found by ``image_0_uid``/``image_1_uid`` in Pick-a-Pic's Parquet files, with the ``caption``
  that is the record's prompt. Pick-a-Pic publishes no checksum either.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from clipalign import __version__
from clipalign.datasets._common import AnnotationFormatError, check_limit, load_json
from clipalign.datasets._common import field as entry_field

Status = Literal["ok", "skipped", "failed"]

USER_AGENT = f"clipalign/{__version__} (benchmark image download)"
_CHUNK = 1 << 16
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class DownloadError(Exception):
    """One attempt at one file failed; ``retry`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C) while this file was being written."""


@dataclass(frozen=True)
class FileTask:
    """One file to put at ``out/name``: fetched from ``url``, or written from ``data`` already in hand.

    ``md5`` (hex), when known, must match the bytes; otherwise, with image verification on, the file
    must decode with Pillow.
    """

    name: str
    url: str | None = None
    data: bytes | None = field(default=None, repr=False)
    md5: str | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.data is None):
            raise ValueError(f"{self.name}: give exactly one of url and data")
        if self.md5 is not None and not _MD5.match(self.md5):
            raise ValueError(f"{self.name}: md5 must be 32 hex digits, got {self.md5!r}")


@dataclass(frozen=True)
class FileResult:
    """What happened to one file: ``ok`` (written now), ``skipped`` (already complete) or ``failed``."""

    name: str
    status: Status
    error: str | None = None
    url: str | None = None

    def row(self) -> dict[str, str | None]:
        """The failures-file row: name, url, error."""
        return {"name": self.name, "url": self.url, "error": self.error}


@dataclass
class DownloadSummary:
    """Counts of a run and its failures, in the order they happened."""

    ok: int = 0
    skipped: int = 0
    failures: list[FileResult] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def add(self, result: FileResult) -> None:
        if result.status == "ok":
            self.ok += 1
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failures.append(result)


@dataclass(frozen=True)
class DownloadOptions:
    """How files are fetched: parallel ``workers``, ``retries`` after the first attempt with
    ``backoff · 2^k`` seconds between them, the per-request ``timeout``, and whether a file without a
    known MD5 must decode as an image (``verify_image``)."""

    workers: int = 8
    retries: int = 3
    backoff: float = 1.0
    timeout: float = 60.0
    verify_image: bool = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.retries < 0:
            raise ValueError(f"retries must be at least 0, got {self.retries}")
        if not (self.backoff >= 0 and self.timeout > 0):
            raise ValueError("backoff must be >= 0 and timeout > 0")


def safe_name(name: str) -> str | None:
    """``name`` as a relative path that stays inside the output folder, or None when it would not."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name.strip() or path.is_absolute() or any(part in ("..", "") for part in path.parts):
        return None
    return path.as_posix()


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path, md5: str | None, *, verify_image: bool) -> str | None:
    """Why ``path`` is not a complete copy (MD5 mismatch, empty, not a decodable image), or None."""
    if md5 is not None:
        actual = _md5_of(path)
        return None if actual == md5.lower() else f"MD5 mismatch (expected {md5.lower()}, got {actual})"
    if path.stat().st_size == 0:
        return "empty file"
    if not verify_image:
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... for bad data
        return f"not a decodable image ({type(exc).__name__}: {exc})"
    return None


def _stream(url: str, dest: Path, timeout: float, stop: threading.Event | None) -> None:
    """Write the body at ``url`` to ``dest``; a short body, HTTP error or network error raises."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as f:
            expected = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read1(_CHUNK):  # what has arrived, so a stop is seen soon
                if stop is not None and stop.is_set():
                    raise Interrupted("interrupted")
                f.write(chunk)
                received += len(chunk)
    except urllib.error.HTTPError as exc:
        retry = exc.code in (408, 429) or exc.code >= 500
        raise DownloadError(f"HTTP {exc.code} {exc.reason}", retry=retry) from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot reach {url}: {exc.reason}", retry=True) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, cut chunked bodies
        raise DownloadError(f"transfer failed ({type(exc).__name__}: {exc})", retry=True) from None
    if expected is not None and expected.isdigit() and received != int(expected):
        raise DownloadError(f"truncated: got {received} of {expected} bytes", retry=True)


def _attempt(task: FileTask, dest: Path, options: DownloadOptions, stop: threading.Event | None) -> None:
    """One attempt: write to a temporary file beside ``dest``, verify, rename into place."""
    fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        if task.data is not None:
            with os.fdopen(fd, "wb") as f:
                f.write(task.data)
        else:
            os.close(fd)
            assert task.url is not None
            _stream(task.url, temp, options.timeout, stop)
        problem = check_file(temp, task.md5, verify_image=options.verify_image)
        if problem is not None:
            raise DownloadError(problem, retry=task.data is None)
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)


def fetch_one(
    task: FileTask,
    out: str | Path,
    options: DownloadOptions | None = None,
    *,
    stop: threading.Event | None = None,
) -> FileResult:
    """Put ``task`` at ``out/task.name`` unless a complete copy is already there; never raises for the file.

    An existing file that fails its check is fetched again (and replaced only by a verified copy).
    """
    options = options or DownloadOptions()
    name = safe_name(task.name)
    if name is None:
        return FileResult(task.name, "failed", "unsafe file name (absolute or with '..')", task.url)
    dest = Path(out) / name
    if dest.is_file() and check_file(dest, task.md5, verify_image=options.verify_image) is None:
        return FileResult(name, "skipped", url=task.url)
    error = "not attempted"
    for attempt in range(options.retries + 1):
        if stop is not None and stop.is_set():
            return FileResult(name, "failed", "interrupted", task.url)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            _attempt(task, dest, options, stop)
            return FileResult(name, "ok", url=task.url)
        except Interrupted:
            return FileResult(name, "failed", "interrupted", task.url)
        except DownloadError as exc:
            error = str(exc)
            if not exc.retry:
                break
        except OSError as exc:  # writing locally: disk full, permission denied
            return FileResult(name, "failed", f"cannot write {dest}: {exc.strerror or exc}", task.url)
        if attempt < options.retries and options.backoff > 0:
            time.sleep(options.backoff * 2**attempt)
    return FileResult(name, "failed", error, task.url)


def download_all(
    tasks: Iterable[FileTask | FileResult],
    out: str | Path,
    options: DownloadOptions | None = None,
    *,
    on_result: Callable[[FileResult], None] | None = None,
) -> DownloadSummary:
    """Fetch ``tasks`` into ``out`` with ``options.workers`` threads; results already decided (a
    :class:`FileResult`, e.g. an image missing from the metadata) are counted as they are.

    At most twice as many tasks as workers are in flight, so a lazy ``tasks`` holding image bytes
    is read as it is consumed. On Ctrl-C the workers stop between chunks, remove their temporary
    files, and the KeyboardInterrupt is raised again.
    """
    options = options or DownloadOptions()
    Path(out).mkdir(parents=True, exist_ok=True)
    summary = DownloadSummary()
    stop = threading.Event()

    def record(result: FileResult) -> None:
        summary.add(result)
        if on_result is not None:
            on_result(result)

    pending: set[Future[FileResult]] = set()
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="download") as pool:
        try:
            for task in tasks:
                if isinstance(task, FileResult):
                    record(task)
                    continue
                pending.add(pool.submit(fetch_one, task, out, options, stop=stop))
                if len(pending) >= 2 * options.workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        record(future.result())
            for future in as_completed(pending):
                record(future.result())
        except KeyboardInterrupt:
            stop.set()
            for future in pending:
                future.cancel()
            raise
    return summary


def write_failures(path: str | Path, failures: list[FileResult]) -> None:
    """Write one JSON line per failure (name, url, error), atomically; an empty list removes the file."""
    target = Path(path)
    if not failures:
        target.unlink(missing_ok=True)
        return
    temp = target.with_name(f".{target.name}.part")
    with temp.open("w", encoding="utf-8") as f:
        for failure in failures:
            f.write(json.dumps(failure.row(), ensure_ascii=False) + "\n")
    os.replace(temp, target)


def read_checksums(path: str | Path) -> dict[str, str]:
    """``md5sum`` output (``<32 hex digits>  <name>``, ``*`` before binary names) as name → MD5."""
    source = Path(path)
    out: dict[str, str] = {}
    for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*")
        if not _MD5.match(digest) or not name:
            raise AnnotationFormatError(source, f"line {n} is not '<md5>  <file name>': {line!r:.80}")
        out[name] = digest.lower()
    return out


# -------------------- nocaps


def nocaps_tasks(
    annotations: str | Path,
    meta: str | Path,
    *,
    limit: int | None = None,
    checksums: dict[str, str] | None = None,
) -> list[FileTask | FileResult]:
    """One task per distinct ``image_path`` of nocaps-FOIL, in file order, with its ``coco_url``.

    ``meta`` is ``nocaps_val_4500_captions.json``; an image it does not list becomes a failed result.
    ``limit`` keeps the first N images; ``checksums`` (file name → MD5) adds MD5s.
    """
    check_limit(limit)
    foil_path, meta_path = Path(annotations), Path(meta)
    entries = load_json(foil_path)
    if not isinstance(entries, list):
        raise AnnotationFormatError(foil_path, "expected the nocaps-FOIL JSON list of entries")
    meta_images = entry_field(load_json(meta_path), "images", list, meta_path, "the file")
    urls: dict[str, str] = {}
    for i, image in enumerate(meta_images):
        where = f"images[{i}]"
        urls[entry_field(image, "file_name", str, meta_path, where)] = entry_field(
            image, "coco_url", str, meta_path, where
        )
    out: list[FileTask | FileResult] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if limit is not None and len(out) >= limit:
            break
        name = entry_field(entry, "image_path", str, foil_path, f"entry {i}")
        if name in seen:
            continue
        seen.add(name)
        if name not in urls:
            out.append(FileResult(name, "failed", f"not listed in {meta_path.name}"))
            continue
        out.append(FileTask(name, url=urls[name], md5=(checksums or {}).get(name)))
    return out


# -------------------- Rich-HF / Pick-a-Pic


def richhf_uids(annotations: str | Path, *, limit: int | None = None) -> list[str]:
    """The distinct image uids (``filename`` stems) of a Rich-HF TFRecord file, in record order."""
    from clipalign.datasets.richhf import _read_examples

    check_limit(limit)
    path = Path(annotations)
    uids: dict[str, None] = {}
    for index, features in enumerate(_read_examples(path)):
        if limit is not None and len(uids) >= limit:
            break
        names = features.get("filename")
        if not names or not isinstance(names[0], bytes):
            raise AnnotationFormatError(path, f"record {index} has no 'filename'")
        uids.setdefault(PurePosixPath(names[0].decode("utf-8", "replace")).stem)
    return list(uids)


def _image_suffix(data: bytes) -> str:
    """The file suffix of image bytes by their signature (PNG, JPEG, WebP); ``.png`` otherwise."""
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".png"


def _url_suffix(url: str) -> str:
    suffix = PurePosixPath(urllib.parse.urlparse(url).path).suffix.lower()
    return suffix if suffix in _IMAGE_SUFFIXES else ".png"


def _parquet_files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(source.rglob("*.parquet"))
        if not files:
            raise AnnotationFormatError(source, "folder has no .parquet files")
        return files
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file or folder")
    return [source]


class PickAPicImages:
    """Tasks for the Rich-HF images found in Pick-a-Pic Parquet files (a file or a folder of them).

    Iterating reads each row group's uid columns and, only where a wanted uid occurs, its image
    column: bytes (``jpg_0``/``jpg_1``) become tasks with ``data`` (no network needed), URLs
    (``image_0_url``/``image_1_url``, the image-less copy) tasks with ``url``. A uid never found is a
    failed result at the end. :attr:`prompts` collects each found uid's ``caption``.
    """

    def __init__(
        self, uids: list[str], pickapic: str | Path, *, checksums: dict[str, str] | None = None
    ) -> None:
        self.uids = uids
        self.files = _parquet_files(Path(pickapic))
        self.checksums = checksums or {}
        self.prompts: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.uids)

    def __iter__(self) -> Iterator[FileTask | FileResult]:
        import pyarrow.parquet as pq

        wanted = set(self.uids)
        for file in self.files:
            parquet = pq.ParquetFile(file)
            names = set(parquet.schema_arrow.names)
            keys = [f"image_{s}_uid" for s in "01"]
            if not set(keys) <= names or "caption" not in names:
                raise AnnotationFormatError(
                    file,
                    f"not a Pick-a-Pic table (needs image_0_uid, image_1_uid, caption): {sorted(names)}",
                )
            embedded = {f"jpg_{s}" for s in "01"} <= names
            if not embedded and not {f"image_{s}_url" for s in "01"} <= names:
                raise AnnotationFormatError(
                    file, "has neither jpg_0/jpg_1 (image bytes) nor image_0_url/image_1_url"
                )
            for group in range(parquet.num_row_groups):
                if not wanted:
                    return
                yield from self._row_group(parquet, group, keys, embedded, wanted)
        for uid in self.uids:
            if uid in wanted:
                yield FileResult(uid, "failed", "uid not found in the Pick-a-Pic tables")

    def _row_group(
        self, parquet: Any, group: int, keys: list[str], embedded: bool, wanted: set[str]
    ) -> Iterator[FileTask]:
        ids = parquet.read_row_group(group, columns=keys).to_pydict()
        rows = [(r, s) for s in (0, 1) for r, uid in enumerate(ids[keys[s]]) if str(uid) in wanted]
        if not rows:
            return
        columns = ["caption"] + [f"jpg_{s}" if embedded else f"image_{s}_url" for s in "01"]
        table = parquet.read_row_group(group, columns=keys + columns).to_pydict()
        for r, s in sorted(rows):
            uid = str(table[keys[s]][r])
            value = table[columns[1 + s]][r]
            if uid not in wanted or value is None:
                continue
            wanted.discard(uid)
            self.prompts[uid] = str(table["caption"][r])
            if embedded:
                data = bytes(value)
                name = uid + _image_suffix(data)
                yield FileTask(name, data=data, md5=self.checksums.get(name))
            else:
                name = uid + _url_suffix(str(value))
                yield FileTask(name, url=str(value), md5=self.checksums.get(name))
