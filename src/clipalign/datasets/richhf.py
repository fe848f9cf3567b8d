"""Rich-HF (RichHF-18K, Liang et al., CVPR 2024): ``test.tfrecord``, every record's CRCs checked, parsed with
``tfrecord``'s ``tf.train.Example`` protobuf.

Each record holds ``filename`` (the Pick-a-Pic v1 image, ``.../<uid>.<ext>``), four float scores
``aesthetics_score``, ``artifact_score``, ``misalignment_score``, ``overall_score`` (all "higher is
better": a high ``misalignment_score`` means a well-aligned image), two PNG heatmaps ``artifact_map`` and
``misalignment_map``, and ``prompt_misalignment_label``: one ``0``/``1`` per prompt token, space-separated,
**0 = misaligned**. Prompt tokens are google-research ``richhf_18k/match_label_to_token.py``'s: the prompt
split on each of ``,.?!":;`` and the space, empty pieces dropped. The prompts themselves are not in
the file; they come from Pick-a-Pic by uid (see :func:`load_richhf`).
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from google.protobuf.message import DecodeError
from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

from clipalign.datasets._common import (
    AnnotationFormatError,
    check_limit,
    load_json,
    load_jsonl,
    unique_ids,
    word_spans,
)
from clipalign.datasets.base import MisalignmentItem

_TOKEN = re.compile(r'[^,.?!":; ]+')
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_KEY_COLUMNS = ("uid", "image_uid", "filename", "file_name")
_PROMPT_COLUMNS = ("prompt", "caption")
_SCORES = ("aesthetics_score", "artifact_score", "overall_score")


def richhf_token_spans(prompt: str) -> list[tuple[int, int]]:
    """Spans of the Rich-HF tokens of ``prompt`` (split on each of ``,.?!":;`` and space, empties dropped)."""
    return [m.span() for m in _TOKEN.finditer(prompt)]


def token_labels_to_word_labels(
    prompt: str, token_spans: list[tuple[int, int]], misaligned: list[bool]
) -> list[bool]:
    """Per whitespace word of ``prompt``: True when a misaligned token overlaps it ("dog," ← token "dog")."""
    bad = [span for span, flag in zip(token_spans, misaligned, strict=True) if flag]
    return [any(a < e and s < b for s, e in bad) for a, b in word_spans(prompt)]


def token_phrases(prompt: str, token_spans: list[tuple[int, int]], misaligned: list[bool]) -> tuple[str, ...]:
    """Maximal runs of misaligned tokens with only whitespace between them, as written in ``prompt``.

    ``'a "red" cat, dog'`` with red, cat and dog misaligned gives ``("red", "cat", "dog")``, while
    ``"red cat"`` stays one phrase.
    """
    phrases: list[list[int]] = []
    previous_bad = False
    for (start, end), flag in zip(token_spans, misaligned, strict=True):
        if flag and previous_bad and not prompt[phrases[-1][1] : start].strip():
            phrases[-1][1] = end
        elif flag:
            phrases.append([start, end])
        previous_bad = flag
    return tuple(prompt[a:b] for a, b in phrases)


def _parquet_prompts(files: list[Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    for file in files:
        names = pq.read_schema(file).names
        prompt_col = next((c for c in _PROMPT_COLUMNS if c in names), None)
        if {"image_0_uid", "image_1_uid"} <= set(names) and prompt_col:  # Pick-a-Pic itself
            table = pq.read_table(file, columns=["image_0_uid", "image_1_uid", prompt_col]).to_pydict()
            for key in ("image_0_uid", "image_1_uid"):
                out.update(zip(map(str, table[key]), table[prompt_col], strict=True))
            continue
        key_col = next((c for c in _KEY_COLUMNS if c in names), None)
        if key_col is None or prompt_col is None:
            raise AnnotationFormatError(
                file,
                f"prompt table needs a key column ({', '.join(_KEY_COLUMNS)}, or image_0_uid and "
                f"image_1_uid) and a prompt column ({', '.join(_PROMPT_COLUMNS)}); it has {names}",
            )
        table = pq.read_table(file, columns=[key_col, prompt_col]).to_pydict()
        out.update(zip(map(str, table[key_col]), table[prompt_col], strict=True))
    return out


def _record_prompts(rows: list[Any], path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, row in enumerate(rows):
        key = next((row[c] for c in _KEY_COLUMNS if isinstance(row, Mapping) and c in row), None)
        prompt = next((row[c] for c in _PROMPT_COLUMNS if isinstance(row, Mapping) and c in row), None)
        if key is None or not isinstance(prompt, str):
            raise AnnotationFormatError(
                path,
                f"row {i} needs a key ({', '.join(_KEY_COLUMNS)}) "
                f"and a prompt ({', '.join(_PROMPT_COLUMNS)})",
            )
        out[str(key)] = prompt
    return out


def load_prompts(prompts: Mapping[str, str] | str | Path) -> dict[str, str]:
    """Read a prompt table: mapping, JSON object or records, JSON lines, Parquet, or a folder of Parquet."""
    if isinstance(prompts, Mapping):
        return {str(k): v for k, v in prompts.items()}
    path = Path(prompts)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise AnnotationFormatError(path, "folder has no .parquet files")
        return _parquet_prompts(files)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_prompts([path])
    if suffix == ".jsonl":
        return _record_prompts(load_jsonl(path), path)
    data = load_json(path)
    if isinstance(data, dict):
        bad = next((k for k, v in data.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise AnnotationFormatError(path, f"prompt of {bad!r} is not a string")
        return data
    if isinstance(data, list):
        return _record_prompts(data, path)
    raise AnnotationFormatError(path, "expected a JSON object {uid: prompt} or a list of records")


def _resolve_image(images: Path, name: str) -> Path:
    """``images/name``; if absent, the first existing ``images/<stem><ext>`` for png, jpg, jpeg, webp."""
    direct = images / name
    if direct.exists():
        return direct
    stem = Path(name).stem
    for suffix in _IMAGE_SUFFIXES:
        candidate = images / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return direct


def _records(path: Path) -> Iterator[tuple[int, bytes]]:
    """(index, payload) of each record, with the framing and both masked CRC-32Cs of each checked.

    ``tfrecord``'s reader checks no CRC, so a flipped byte would change a label silently; the framing is
    8 bytes of length, its CRC, the payload and the payload's CRC.
    """
    with path.open("rb") as f:
        index = 0
        while header := f.read(12):
            if len(header) < 12:
                raise AnnotationFormatError(path, f"record {index}: truncated file (in its length header)")
            if TFRecordWriter.masked_crc(header[:8]) != header[8:]:
                hint = " (not a TFRecord file?)" if index == 0 else " (corrupt record length)"
                raise AnnotationFormatError(path, f"record {index}: length CRC mismatch{hint}")
            (length,) = struct.unpack("<Q", header[:8])
            payload, footer = f.read(length), f.read(4)
            if len(payload) < length or len(footer) < 4:
                raise AnnotationFormatError(
                    path, f"record {index}: truncated file ({len(payload)} of {length} bytes)"
                )
            if TFRecordWriter.masked_crc(payload) != footer:
                raise AnnotationFormatError(path, f"record {index}: data CRC mismatch (corrupt file)")
            yield index, payload
            index += 1


def _read_examples(path: Path) -> Iterator[dict[str, list[Any]]]:
    """Yield each record's ``{feature: list of bytes | float | int}``; a bad file → AnnotationFormatError."""
    for index, payload in _records(path):
        try:
            example = example_pb2.Example.FromString(payload)
        except DecodeError as e:
            raise AnnotationFormatError(path, f"record {index} is not a tf.train.Example ({e})") from None
        features: dict[str, list[Any]] = {}
        for key, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            if kind is None:
                raise AnnotationFormatError(path, f"record {index}: a feature holds no value list ({key!r})")
            features[key] = list(getattr(feature, kind).value)
        yield features


def _one(features: dict[str, list[Any]], key: str, kind: type, path: Path, where: str) -> Any:
    values = features.get(key)
    if not values:
        raise AnnotationFormatError(path, f"{where} has no {key!r}")
    value = values[0]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise AnnotationFormatError(path, f"{where}: {key!r} is not a {kind.__name__} feature")
    return value


def load_richhf(
    annotations: str | Path,
    images: str | Path,
    limit: int | None = None,
    *,
    prompts: Mapping[str, str] | str | Path | None = None,
    skip_unmatched: bool = False,
) -> list[MisalignmentItem]:
    """Load Rich-HF: one item per record in file order; id = uid (the file name's stem).

    ``prompts`` gives each image's Pick-a-Pic prompt, looked up by file name, base name, then uid:
    a ``{key: prompt}`` mapping; a JSON object of the same; a JSON list / JSON-lines / Parquet table
    with a key column (``uid``, ``image_uid``, ``filename`` or ``file_name``) and a ``prompt`` or
    ``caption`` column; Pick-a-Pic v1's own Parquet shards (``image_0_uid``, ``image_1_uid``,
    ``caption``; only those columns are read); or a folder of Parquet files. ``None`` reads a
    ``<uid>.txt`` next to each image in ``images`` (stripped). The image is ``images/<base name>``, or
    ``images/<uid>.{png,jpg,jpeg,webp}`` when that exists instead.

    ``word_labels`` are per whitespace word (True when a misaligned token overlaps the word);
    ``misaligned_phrases`` are runs of misaligned tokens separated only by whitespace, as written;
    ``misalignment_score`` is the record's (higher = better aligned). ``meta`` keeps ``tokens``,
    ``token_labels`` (the original ints, 0 = misaligned), the other scores, both heatmaps (PNG bytes) and
    ``clip4dm_target`` (the authors' "index_token" strings of the misaligned tokens, lower-cased).
    A record without a prompt raises ``ValueError``; one whose label count differs from its prompt's
    token count becomes an item with ``problem`` set (reported as a failure, not scored). With
    ``skip_unmatched=True`` both are skipped instead, with one warning. A file that is
    truncated, not a TFRecord file, or holds a record that is not a ``tf.train.Example`` raises
    ``ValueError`` naming it; record data CRCs are not verified.
    """
    check_limit(limit)
    path, images = Path(annotations), Path(images)
    table = load_prompts(prompts) if prompts is not None else None
    items: list[MisalignmentItem] = []
    skipped: list[str] = []
    for index, features in enumerate(_read_examples(path)):
        if limit is not None and len(items) >= limit:
            break
        where = f"record {index}"
        filename = _one(features, "filename", bytes, path, where).decode("utf-8", "replace")
        uid = Path(filename).stem
        where = f"record {index} ({filename})"
        raw_labels = _one(features, "prompt_misalignment_label", bytes, path, where).decode(
            "ascii", "replace"
        )
        pieces = raw_labels.split()
        if any(p not in ("0", "1") for p in pieces):
            raise AnnotationFormatError(
                path, f"{where}: prompt_misalignment_label {raw_labels!r:.80} is not 0/1s"
            )
        token_labels = [int(p) for p in pieces]
        image = _resolve_image(images, Path(filename).name)
        if table is not None:
            prompt = next((table[k] for k in (filename, Path(filename).name, uid) if k in table), None)
        else:
            sidecar = images / f"{uid}.txt"
            prompt = sidecar.read_text(encoding="utf-8").strip() if sidecar.exists() else None
        if prompt is None:
            if not skip_unmatched:
                raise AnnotationFormatError(
                    path,
                    f"{where}: no prompt for uid {uid!r}"
                    + ("" if table is not None else f" ({images / (uid + '.txt')} not found)"),
                )
            skipped.append(uid)
            continue
        spans = richhf_token_spans(prompt)
        if len(spans) != len(token_labels):
            if skip_unmatched:
                skipped.append(uid)
                continue
            problem = f"{where}: {len(token_labels)} labels but {len(spans)} prompt tokens in {prompt!r:.80}"
            items.append(
                MisalignmentItem(
                    id=uid,
                    image=image,
                    caption=prompt,
                    aligned=all(label == 1 for label in token_labels),
                    meta={"filename": filename, "record": index, "token_labels": tuple(token_labels)},
                    problem=problem,
                )
            )
            continue
        misaligned = [label == 0 for label in token_labels]
        meta: dict[str, Any] = {
            "filename": filename,
            "record": index,
            "tokens": tuple(prompt[a:b] for a, b in spans),
            "token_labels": tuple(token_labels),
            # the authors' ground truth: "index_token" of each misaligned token, lower-cased
            "clip4dm_target": " ".join(
                f"{i}_{prompt[a:b]}" for i, (a, b) in enumerate(spans) if misaligned[i]
            ).lower(),
        }
        for key in _SCORES:
            if features.get(key):
                meta[key] = float(features[key][0])
        for key in ("artifact_map", "misalignment_map"):
            if features.get(key):
                meta[key] = features[key][0]
        score = features.get("misalignment_score")
        items.append(
            MisalignmentItem(
                id=uid,
                image=image,
                caption=prompt,
                aligned=not any(misaligned),
                misaligned_phrases=token_phrases(prompt, spans, misaligned),
                word_labels=tuple(token_labels_to_word_labels(prompt, spans, misaligned)),
                misalignment_score=float(score[0]) if score else None,
                meta=meta,
            )
        )
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} record(s) without a prompt or with a token/label count "
            f"mismatch (first: {skipped[:3]})",
            stacklevel=2,
        )
    return unique_ids(items)
