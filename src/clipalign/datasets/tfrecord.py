"""Read TFRecord files of ``tf.train.Example`` without TensorFlow or protobuf.

TFRecord framing, per record: ``uint64 length``, ``uint32 masked_crc32c(length bytes)``, ``data``,
``uint32 masked_crc32c(data)``, all little-endian. ``data`` is a serialized ``tf.train.Example``:
``Example{Features features = 1}``, ``Features{map<string, Feature> feature = 1}``,
``Feature{oneof BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3}``, each
list holding ``repeated <type> value = 1`` (numbers packed or not).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from clipalign.datasets._common import AnnotationFormatError

FeatureValue = list[bytes] | list[float] | list[int]


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_table()


def crc32c_python(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data`` in pure Python (about 5-10 MB/s)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_crc32c() -> Callable[[bytes], int] | None:
    """The C implementation of ``google-crc32c`` when it is installed (optional; same results, ~1 GB/s)."""
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if google_crc32c.implementation == "c" else None


crc32c: Callable[[bytes], int] = _fast_crc32c() or crc32c_python
"""CRC-32C of bytes; ``crc32c(b"123456789") == 0xE3069283``."""


def masked_crc32c(data: bytes) -> int:
    """The masked CRC that TFRecord stores: rotate right by 15 bits and add ``0xA282EAD8``."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str | Path, *, check_crc: bool = True) -> Iterator[bytes]:
    """Yield the records of a TFRecord file; a bad length, CRC or truncation → :class:`AnnotationFormatError`.

    The length's CRC is always checked; ``check_crc=False`` skips the data CRC (pure Python, slow, unless
    ``google-crc32c`` is installed).
    """
    path = Path(path)
    with path.open("rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise AnnotationFormatError(path, f"record {index}: truncated header ({len(header)} bytes)")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                raise AnnotationFormatError(
                    path, f"record {index}: length CRC mismatch (not a TFRecord file?)"
                )
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise AnnotationFormatError(path, f"record {index}: truncated (expected {length} bytes)")
            if check_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise AnnotationFormatError(path, f"record {index}: data CRC mismatch")
            yield data
            index += 1


class _ProtoError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _ProtoError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)``: int for varints, bytes for the others."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value = buf[pos : pos + size]
            if len(value) < size:
                raise _ProtoError("truncated fixed-size field")
            pos += size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value = buf[pos : pos + size]
            if len(value) < size:
                raise _ProtoError("truncated length-delimited field")
            pos += size
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature(buf: bytes) -> FeatureValue:
    out: FeatureValue = []
    for number, _, body in _fields(buf):
        if not isinstance(body, bytes) or number not in (1, 2, 3):
            continue
        values: list = []
        for inner, wire, value in _fields(body):
            if inner != 1:
                continue
            if number == 1:
                if wire != 2:
                    raise _ProtoError("bytes_list value is not length-delimited")
                values.append(value)
            elif number == 2:
                if wire == 5:
                    values.append(struct.unpack("<f", value)[0])
                elif wire == 2 and isinstance(value, bytes) and len(value) % 4 == 0:
                    values.extend(struct.unpack(f"<{len(value) // 4}f", value))
                else:
                    raise _ProtoError("malformed float_list")
            elif wire == 0:
                values.append(_signed64(value))  # type: ignore[arg-type]
            elif wire == 2 and isinstance(value, bytes):
                pos = 0
                while pos < len(value):
                    v, pos = _varint(value, pos)
                    values.append(_signed64(v))
            else:
                raise _ProtoError("malformed int64_list")
        out = values
    return out


def parse_example(data: bytes) -> dict[str, FeatureValue]:
    """Parse a serialized ``tf.train.Example`` into ``{feature name: list of bytes | float | int}``.

    Raises ``ValueError`` on malformed bytes.
    """
    features: dict[str, FeatureValue] = {}
    for number, wire, body in _fields(data):
        if number != 1 or wire != 2:
            continue
        for fnum, fwire, entry in _fields(body):  # type: ignore[arg-type]
            if fnum != 1 or fwire != 2:
                continue
            key, value = None, b""
            for enum, ewire, part in _fields(entry):  # type: ignore[arg-type]
                if enum == 1 and ewire == 2:
                    try:
                        key = part.decode("utf-8")  # type: ignore[union-attr]
                    except UnicodeDecodeError:
                        raise _ProtoError("feature name is not UTF-8") from None
                elif enum == 2 and ewire == 2:
                    value = part  # type: ignore[assignment]
            if key is None:
                raise _ProtoError("feature map entry without a name")
            features[key] = _feature(value)
    return features


def read_examples(path: str | Path, *, check_crc: bool = True) -> Iterator[dict[str, FeatureValue]]:
    """Yield each record of a TFRecord file parsed by :func:`parse_example`."""
    for index, record in enumerate(read_records(path, check_crc=check_crc)):
        try:
            yield parse_example(record)
        except ValueError as e:
            raise AnnotationFormatError(path, f"record {index} is not a tf.train.Example ({e})") from None
