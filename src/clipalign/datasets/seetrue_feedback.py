"""SeeTRUE-Feedback (Mismatch Quest, Gordon et al., 2024): the HF dataset ``mismatch-quest/SeeTRUE-Feedback``.

Its ``test`` split has the columns ``image``, ``image_caption``, ``human_feedback`` (the textual
explanation of the misalignment), ``caption_misalignment`` (the cue: the contradictory part of the
caption), ``visual_misalignment`` (the label of the visual box), ``bbox_GroundingDino``, ``bbox_PaLI``,
``dataset_source`` and ``id_in_source_dataset``. Every row is a misaligned pair.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from clipalign.datasets._common import (
    AnnotationFormatError,
    check_limit,
    field,
    load_json,
    load_jsonl,
    phrase_in_text,
    take,
    unique_ids,
)
from clipalign.datasets.base import MisalignmentItem

HUB_ID = "mismatch-quest/SeeTRUE-Feedback"
_HUB_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
_KNOWN = {"image", "file_name", "image_caption", "human_feedback", "caption_misalignment"}
_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def _image_suffix(data: bytes) -> str:
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def materialise_image(data: bytes, images: Path) -> Path:
    """Write image bytes once to ``images/seetrue-<sha256[:16]><ext>`` (atomically); return the path."""
    target = images / f"seetrue-{hashlib.sha256(data).hexdigest()[:16]}{_image_suffix(data)}"
    if target.exists() and target.stat().st_size == len(data):
        return target
    images.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=images, prefix=".seetrue-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _image_path(value: Any, images: Path, path: Path, where: str) -> tuple[Path, str | None]:
    """A row's image file and original name, from a file name, ``{"bytes", "path"}``, bytes or PIL image."""
    if isinstance(value, str) and value:
        return images / value, value
    if isinstance(value, Mapping):
        data, name = value.get("bytes"), value.get("path")
        if isinstance(data, bytes | bytearray) and data:
            return materialise_image(bytes(data), images), name
        if isinstance(name, str) and name:
            return images / name, name
    if isinstance(value, bytes | bytearray) and value:
        return materialise_image(bytes(value), images), None
    if hasattr(value, "save") and hasattr(value, "mode"):  # a decoded PIL image
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return materialise_image(buf.getvalue(), images), getattr(value, "filename", None) or None
    raise AnnotationFormatError(
        path,
        f"{where}: 'image' must be a file name, {{'bytes', 'path'}}, bytes or an image; got {value!r:.60}",
    )


def _feedbacks(value: Any, path: Path, where: str) -> tuple[str, ...]:
    """``human_feedback`` as a tuple: from a string, a list of strings, or a string holding such a list."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                parsed = None
            if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
                return tuple(v for v in parsed if v.strip())
        return (value,) if text else ()
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v.strip())
    raise AnnotationFormatError(
        path, f"{where}: 'human_feedback' must be text or a list of texts, got {value!r:.60}"
    )


def _rows_from_file(path: Path) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises ArrowInvalid (a ValueError) and others
            raise AnnotationFormatError(path, f"not a readable Parquet file ({e})") from None
    if suffix == ".jsonl":
        return load_jsonl(path)
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if suffix == ".json":
        data = load_json(path)
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            data = data["rows"]
        if not isinstance(data, list):
            raise AnnotationFormatError(path, f"expected a JSON list of rows, got {type(data).__name__}")
        return data
    raise AnnotationFormatError(path, "expected a .parquet, .jsonl, .json or .csv file, or a hub dataset id")


def _rows_from_hub(repo_id: str, split: str) -> Iterable[Any]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"loading {repo_id!r} from the Hugging Face hub needs the `datasets` package "
            "(pip install datasets); or pass a local .parquet/.jsonl/.json export"
        ) from e
    ds = datasets.load_dataset(repo_id, split=split)
    if "image" in ds.column_names:  # keep the encoded bytes rather than decoding to PIL and re-encoding
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def load_seetrue_feedback(
    annotations: str | Path,
    images: str | Path,
    limit: int | None = None,
    *,
    split: str = "test",
) -> list[MisalignmentItem]:
    """Load SeeTRUE-Feedback: one misaligned item per row, in row order.

    ``annotations`` is a local export (Parquet, JSON list, JSON lines or CSV) of the dataset's columns,
    or, when no such file exists, a hub id such as ``"mismatch-quest/SeeTRUE-Feedback"`` (read with
    ``datasets.load_dataset(annotations, split=split)``, imported only then). ``image`` (or ImageFolder's
    ``file_name``) is a file name under ``images``; when a row embeds the image instead (bytes,
    ``{"bytes", "path"}``, a PIL image) it is written once to ``images/seetrue-<sha256[:16]>.<ext>``, so
    that every item's ``image`` is a real file like every other benchmark's (idempotent, atomic).

    ``misaligned_phrases`` = ``caption_misalignment`` as written in the caption (case-insensitive) or as
    given; ``feedback`` = the first ``human_feedback`` (all of them in ``meta["feedbacks"]``);
    ``meta["clip4dm_target"]`` = ``caption_misalignment`` stripped and lower-cased (the NLI premise). Ids:
    ``<dataset_source>/<id_in_source_dataset>`` when both are present, else ``row-<index>``.
    """
    check_limit(limit)
    images = Path(images)
    path = Path(annotations)
    is_hub_id = (
        isinstance(annotations, str)
        and _HUB_PATTERN.match(annotations) is not None
        and path.suffix.lower() not in _FILE_SUFFIXES
    )
    if path.exists() or not is_hub_id:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file (and not a hub dataset id like {HUB_ID!r})")
        if path.is_dir():
            raise AnnotationFormatError(path, "is a folder; pass the .parquet/.jsonl/.json/.csv file")
        rows: Iterable[Any] = _rows_from_file(path)
    else:
        rows = _rows_from_hub(str(annotations), split)

    def items() -> Iterator[MisalignmentItem]:
        for i, row in enumerate(rows):
            where = f"row {i}"
            caption = field(row, "image_caption", str, path, where)
            cue = field(row, "caption_misalignment", str, path, where, default="")
            image_value = row.get("image") if row.get("image") is not None else row.get("file_name")
            image, original = _image_path(image_value, images, path, where)
            feedbacks = _feedbacks(row.get("human_feedback"), path, where)
            phrases = (phrase_in_text(caption, cue.strip(" \"'"))[0],) if cue.strip(" \"'") else ()
            meta = {k: v for k, v in row.items() if k not in _KNOWN}
            meta.update(index=i, caption_misalignment=cue, feedbacks=feedbacks, image_name=original)
            meta["clip4dm_target"] = cue.strip().lower()
            source, source_id = row.get("dataset_source"), row.get("id_in_source_dataset")
            item_id = (
                f"{source}/{source_id}"
                if source not in (None, "") and source_id not in (None, "")
                else f"row-{i}"
            )
            yield MisalignmentItem(
                id=item_id,
                image=image,
                caption=caption,
                aligned=False,
                misaligned_phrases=phrases,
                feedback=feedbacks[0] if feedbacks else None,
                meta=meta,
            )

    return unique_ids(take(items(), limit))
