"""Helpers shared by the benchmark loaders: format errors, field access, ids, words and phrases."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar


class _Identified(Protocol):
    """A dataclass item with an ``id``, which :func:`unique_ids` may replace."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @property
    def id(self) -> str: ...


T = TypeVar("T")
Item = TypeVar("Item", bound=_Identified)

_WORD = re.compile(r"\S+")


class AnnotationFormatError(ValueError):
    """An annotation file does not have the expected format; the message starts with the file's path."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


def check_limit(limit: int | None) -> None:
    """Raise ``ValueError`` unless ``limit`` is None or a non-negative int."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")


def load_json(path: Path) -> Any:
    """Parse a JSON file, turning a syntax error into an :class:`AnnotationFormatError`."""
    with path.open(encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise AnnotationFormatError(path, f"not valid JSON ({e})") from None


def load_json_list(path: Path) -> list[Any]:
    """Parse a JSON file whose top level must be a list of entries (HAT, nocaps-FOIL)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise AnnotationFormatError(path, f"expected a JSON list of entries, got {type(data).__name__}")
    return data


def load_jsonl(path: Path) -> list[Any]:
    """Parse a JSON-lines file (blank lines ignored)."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise AnnotationFormatError(path, f"line {n} is not valid JSON ({e})") from None
    return rows


def type_name(types: type | tuple[type, ...]) -> str:
    """``str`` or ``str or list`` for error messages."""
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__


def field(
    entry: Any,
    key: str,
    types: type | tuple[type, ...],
    path: Path,
    where: str,
    *,
    default: Any = ...,
) -> Any:
    """``entry[key]`` checked to be of ``types``; missing or mistyped → :class:`AnnotationFormatError`.

    With ``default`` given, a missing key (or a null value) gives ``default`` instead of an error.
    """
    if not isinstance(entry, Mapping):
        raise AnnotationFormatError(path, f"{where} is a {type(entry).__name__}, expected an object")
    if key not in entry or (entry[key] is None and default is not ...):
        if default is not ...:
            return default
        raise AnnotationFormatError(path, f"{where} has no {key!r}")
    value = entry[key]
    bad_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
    if not isinstance(value, types) or bad_bool:
        raise AnnotationFormatError(
            path, f"{where}: {key!r} is {type(value).__name__} {value!r:.60}, expected {type_name(types)}"
        )
    return value


def str_list(value: Any, path: Path, where: str) -> tuple[str, ...]:
    """A list of strings as a tuple (for ``references``)."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise AnnotationFormatError(path, f"{where} must be a list of strings, got {value!r:.60}")
    return tuple(value)


def unique_ids(items: Sequence[Item]) -> list[Item]:
    """Make ``item.id`` unique in order: the 2nd, 3rd... repeat of an id gets ``#2``, ``#3``...

    An item's id depends only on the items before it, so ids do not change with ``limit``.
    """
    seen: set[str] = set()
    counts: dict[str, int] = {}
    out: list[Item] = []
    for item in items:
        base = item.id
        new = base
        while new in seen:
            counts[base] = counts.get(base, 1) + 1
            new = f"{base}#{counts[base]}"
        seen.add(new)
        out.append(item if new == base else dataclasses.replace(item, id=new))
    return out


def take(items: Iterable[T], limit: int | None) -> list[T]:
    """The first ``limit`` items (all when None)."""
    out: list[T] = []
    for item in items:
        if limit is not None and len(out) >= limit:
            break
        out.append(item)
    return out


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-delimited words of ``text``."""
    return [m.span() for m in _WORD.finditer(text)]


def _phrase_pattern(phrase: str, whole_words: bool) -> re.Pattern[str] | None:
    words = phrase.split()
    if not words:
        return None
    body = r"\s+".join(re.escape(w) for w in words)
    if whole_words:
        body = rf"(?<!\w){body}(?!\w)"
    return re.compile(body, re.IGNORECASE)


def find_phrase_spans(text: str, phrase: str) -> list[tuple[int, int]]:
    """Spans of ``phrase`` in ``text``, case-insensitive, any whitespace between its words.

    Whole-word matches are preferred ("car" is not found in "cars"); when there is none, plain
    substring matches are returned.
    """
    for whole_words in (True, False):
        pattern = _phrase_pattern(phrase, whole_words)
        if pattern is None:
            return []
        spans = [m.span() for m in pattern.finditer(text)]
        if spans:
            return spans
    return []


def phrase_in_text(text: str, phrase: str) -> tuple[str, tuple[int, int] | None]:
    """``phrase`` as written in ``text`` (first match, see :func:`find_phrase_spans`) and its span.

    When it is not found, the phrase itself (stripped) and None.
    """
    spans = find_phrase_spans(text, phrase)
    if not spans:
        return phrase.strip(), None
    start, end = spans[0]
    return text[start:end], (start, end)


def runs(labels: Sequence[bool]) -> list[tuple[int, int]]:
    """Maximal runs of True as ``(first, last)`` index pairs (inclusive)."""
    out: list[tuple[int, int]] = []
    start = None
    for i, flag in enumerate(labels):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i - 1))
            start = None
    if start is not None:
        out.append((start, len(labels) - 1))
    return out


def phrases_from_spans(
    text: str, spans: Sequence[tuple[int, int]], labels: Sequence[bool]
) -> tuple[str, ...]:
    """Maximal runs of labelled spans as the substrings of ``text`` they cover (first start to last end)."""
    return tuple(text[spans[a][0] : spans[b][1]] for a, b in runs(labels))
