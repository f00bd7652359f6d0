"""The protobuf wire as the Kubernetes API server speaks it: a table-driven decoder that
keeps only chosen fields, the ``k8s\\0`` envelope and the watch stream's framing.

Contract:

* A `Table` names, per field key (`field(number, wire type)`), the JSON name to keep it as
  and its kind (`STR`, `MSGS`, `TIME`, `MSG`, `NAME`, `STRS`, `MAP`, `INT`, `BOOL`); a
  field absent from the table is skipped by its wire type, never materialised. `strict`
  makes a kept field sent with another wire type an error; `with_defaults` gives a
  message the Go zero values JSON never omits.
* `decode(buf, i, end, table)` gives the kept fields of one message as Go's JSON encoding
  of it would carry them: an empty string reads as absent, an empty or zero ``Time`` as
  null, times as RFC 3339 at whole seconds, strings as UTF-8 with bad bytes replaced,
  varints as Go's int32/int64, a repeated non-repeated message merged as Go merges it.
* `unwrap(body, kinds)` opens the ``k8s\\0`` + runtime.Unknown envelope and gives the
  kind and raw bytes of the object inside; `raw_field` the bytes of a bytes field.
* `FrameSplitter` cuts a ``;stream=watch`` byte stream into frames (4-byte big-endian
  length, then the frame); a frame longer than its limit raises before it is buffered.
* Bytes that are not what was expected (a bad envelope, another kind, a truncated or
  overlong field, a kept field with the wrong wire type) raise `ProtoError`, a
  ValueError, naming what was wrong; for any bytes nothing else escapes
  (tests/test_fuzz_proto.py).
* Pure: no I/O, no logging. Knows no pod: the pod schema is `sniffer.podproto`'s.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
WATCH_CONTENT_TYPE = CONTENT_TYPE + ";stream=watch"
MAGIC = b"k8s\x00"  # runtime/serializer/protobuf: the prefix before a runtime.Unknown
_ZERO_TIME = -62_135_596_800  # Go's zero time.Time (year 1) in Unix seconds: JSON null


class ProtoError(ValueError):
    """The bytes are not the protobuf object expected; the message says what is wrong."""


# --- tables: for each message, the fields kept ----------------------------------------
# A table maps a field's key byte(s) (field number << 3 | wire type) to (JSON name, kind,
# sub-table: a Table for MSG/MSGS, the wanted keys as bytes for MAP, else None).

# (The kinds of length-delimited fields first: `_message` tells them apart by one compare.)
STR, MSGS, TIME, MSG, NAME, STRS, MAP, INT, BOOL, _BAD, _DEFAULT = range(11)
VARINT, LEN = 0, 2
Table = dict[int, tuple[str, int, Any]]
_DEFAULTS = -1  # the key of a table's defaults: no key read off the wire is negative


def field(number: int, wire: int) -> int:
    """The key of field `number` sent with `wire` type."""
    return number << 3 | wire


def strict(*tables: Table) -> None:
    """A kept field sent with another wire type is an error, not a field to skip."""
    for table in tables:
        for key, (name, _, _) in list(table.items()):
            if key >= 0:
                for wire in (0, 1, 2, 5):
                    table.setdefault(key & ~7 | wire, (name, _BAD, None))


def with_defaults(table: Table, *defaults: tuple[str, Any]) -> None:
    """Fields a decoded `table` message always has (the value when the wire has none)."""
    table[_DEFAULTS] = ("", _DEFAULT, defaults)


_TYPE_META: Table = {field(2, LEN): ("kind", STR, None)}
_UNKNOWN: Table = {field(1, LEN): ("typeMeta", MSG, _TYPE_META),
                   field(3, LEN): ("contentEncoding", STR, None)}
strict(_TYPE_META, _UNKNOWN)


# --- the wire -------------------------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """The varint at `i` and the offset after it (at most 10 bytes)."""
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise ProtoError(f"varint longer than 10 bytes at offset {i}")


def _signed(value: int) -> int:
    """A varint as Go's int32/int64 (negative numbers are sent as 64-bit two's complement)."""
    value &= 0xFFFF_FFFF_FFFF_FFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(buf: bytes, i: int, j: int) -> str:
    return buf[i:j].decode("utf-8", "replace")


@lru_cache(maxsize=4096)
def rfc3339(seconds: int) -> str:
    """Seconds since the epoch as Go's metav1.Time writes them in JSON. Cached: pods
    stamped in the same second share the text."""
    t = time.gmtime(seconds)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}Z")


@lru_cache(maxsize=4096)
def _time(buf: bytes) -> str | None:
    """A metav1.Time message (seconds = 1, nanos = 2, ignored as the server ignores it).
    Cached by its bytes: most pods share their timestamps with others."""
    i, end = 0, len(buf)
    if i == end:
        return None  # Go writes the zero time as an empty message; JSON says null
    seconds = 0
    while i < end:
        key, i = _varint(buf, i)
        if key == 0x08:
            raw, i = _varint(buf, i)
            seconds = _signed(raw)
        else:
            i = _skip(buf, i, key)
    if i != end:
        raise ProtoError("metav1.Time overruns its length")
    if seconds == _ZERO_TIME:
        return None
    try:
        return rfc3339(seconds)
    except (OverflowError, OSError, ValueError):
        raise ProtoError(f"metav1.Time out of range: {seconds} s") from None


def _skip(buf: bytes, i: int, key: int) -> int:
    """The offset after the value of a field not kept, by its wire type."""
    wire = key & 7
    if wire == VARINT:
        return _varint(buf, i)[1]
    if wire == LEN:
        n, i = _varint(buf, i)
        return i + n
    if wire == 5:
        return i + 4
    if wire == 1:
        return i + 8
    raise ProtoError(f"unsupported wire type {wire} (field {key >> 3})")


def _map_entry(buf: bytes, i: int, end: int) -> tuple[str, str]:
    key = value = ""
    while i < end:
        tag, i = _varint(buf, i)
        if tag in (0x0A, 0x12):
            n, i = _varint(buf, i)
            if i + n > end:
                raise ProtoError("map entry overruns its length")
            if tag == 0x0A:
                key = _text(buf, i, i + n)
            else:
                value = _text(buf, i, i + n)
            i += n
        else:
            i = _skip(buf, i, tag)
    if i != end:
        raise ProtoError("map entry overruns its length")
    return key, value


def _message(buf: bytes, i: int, end: int, table: Table,  # noqa: C901 (one hot loop: see below)
             out: dict[str, Any] | None = None) -> dict[str, Any]:
    """The kept fields of the message in buf[i:end] (merged into `out` if given, as a
    repeated non-repeated message field merges in Go)."""
    # The hot loop of every decode, one function on purpose: a call per field or per kind
    # costs a third more decode time (bench/decode.py). Varints of one or two bytes
    # (nearly all keys and lengths) are read inline; only longer ones call `_varint`.
    if out is None:
        out = {}
    get = table.get
    while i < end:
        key = buf[i]
        i += 1
        if key >= 0x80:  # fields 16 to 2047 have two-byte keys
            if buf[i] < 0x80:
                key = key & 0x7F | buf[i] << 7
                i += 1
            else:
                key, i = _varint(buf, i - 1)
        field = get(key)
        if field is None:  # not kept: skip it by its wire type
            wire = key & 7
            if wire == LEN:
                n = buf[i]
                if n < 0x80:
                    i += n + 1
                elif buf[i + 1] < 0x80:
                    i += (n & 0x7F | buf[i + 1] << 7) + 2
                else:
                    n, i = _varint(buf, i)
                    i += n
            elif wire == VARINT:
                while buf[i] >= 0x80:
                    i += 1
                i += 1
            else:
                i = _skip(buf, i, key)
            continue
        name, kind, sub = field
        if kind >= INT:  # the varint kinds, and a kept field sent with a wrong wire type
            if kind == _BAD:
                raise ProtoError(f"field {name!r} has wire type {key & 7}")
            raw = buf[i]
            if raw < 0x80:
                i += 1
            else:
                raw, i = _varint(buf, i)
                raw = _signed(raw)
            out[name] = raw if kind == INT else raw != 0
            continue
        n = buf[i]
        if n < 0x80:
            i += 1
        elif buf[i + 1] < 0x80:
            n = n & 0x7F | buf[i + 1] << 7
            i += 2
        else:
            n, i = _varint(buf, i)
        j = i + n
        if j > end:
            raise ProtoError(f"field {name!r} overruns its message ({n} bytes)")
        if kind == STR:
            if n:
                out[name] = buf[i:j].decode("utf-8", "replace")
            else:
                out.pop(name, None)
        elif kind == MSGS:
            items = out.get(name)
            if items is None:
                items = out[name] = []
            items.append(_message(buf, i, j, sub))
        elif kind == TIME:
            out[name] = _time(buf[i:j])
        elif kind == MSG:
            prior = out.get(name)
            out[name] = _message(buf, i, j, sub, prior if isinstance(prior, dict) else None)
        elif kind == NAME:
            items = out.get(name)
            if items is None:
                items = out[name] = []
            items.append(_first_name(buf, i, j))
        elif kind == STRS:
            strings = out.get(name)
            if strings is None:
                strings = out[name] = []
            strings.append(buf[i:j].decode("utf-8", "replace"))
        else:  # MAP: only the wanted keys are kept
            entries = out.get(name)
            if entries is None:
                entries = out[name] = {}
            # An entry is `0a <len> key 12 <len> value`: look at the key's bytes first.
            if buf[i] == 0x0A and buf[i + 1] < 0x80 and buf[i + 2:i + 2 + buf[i + 1]] not in sub:
                i = j
                continue
            k, v = _map_entry(buf, i, j)
            if k.encode() in sub:
                entries[k] = v
        i = j
    if i != end:
        raise ProtoError("a field overruns its message")
    defaults = get(_DEFAULTS)
    if defaults:
        for name, value in defaults[2]:
            out.setdefault(name, value)
    return out


def _first_name(buf: bytes, i: int, end: int) -> dict[str, Any]:
    """A main container of the spec: only its name (field 1, which Go writes first), the
    rest not even scanned (`project` needs no more of it)."""
    while i < end:
        key, i = _varint(buf, i)
        if key == 0x0A:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ProtoError("container name overruns its message")
            return {"name": buf[i:i + n].decode("utf-8", "replace")} if n else {}
        i = _skip(buf, i, key)
    if i != end:
        raise ProtoError("a field overruns its message")
    return {}


def decode(buf: bytes, i: int, end: int, table: Table) -> dict[str, Any]:
    """`_message` with every low-level failure (a truncated buffer) as a ProtoError."""
    try:
        return _message(buf, i, end, table)
    except IndexError:
        raise ProtoError("truncated message") from None


def unwrap(body: bytes, kinds: frozenset[str]) -> tuple[str, bytes]:
    """The kind and raw bytes of the runtime.Unknown behind the ``k8s\\0`` prefix."""
    if not body.startswith(MAGIC):
        raise ProtoError("no k8s protobuf envelope (the body does not start with k8s\\0)")
    envelope = decode(body, len(MAGIC), len(body), _UNKNOWN)
    if envelope.get("contentEncoding"):
        raise ProtoError(f"unsupported content encoding {envelope['contentEncoding']!r}")
    kind = envelope.get("typeMeta", {}).get("kind", "")
    if kind not in kinds:
        raise ProtoError(f"expected {' or '.join(sorted(kinds))}, got kind {kind[:40]!r}")
    raw = raw_field(body, len(MAGIC), len(body), 2)
    return kind, raw


def raw_field(buf: bytes, i: int, end: int, number: int) -> bytes:
    """The bytes of the last length-delimited field `number` (a bytes field)."""
    found = b""
    want = field(number, LEN)
    try:
        while i < end:
            key, i = _varint(buf, i)
            if key == want:
                n, i = _varint(buf, i)
                if i + n > end:
                    raise ProtoError(f"field {number} overruns its message")
                found = buf[i:i + n]
                i += n
            else:
                i = _skip(buf, i, key)
    except IndexError:
        raise ProtoError("truncated message") from None
    if i != end:
        raise ProtoError("a field overruns its message")
    return found


class FrameSplitter:
    """Cuts a ``;stream=watch`` byte stream into frames.

    Feed every chunk in order to `feed`, which returns the frames it completed; `pending`
    is the count of bytes of an incomplete frame (a stream that ends with it nonzero was
    cut mid-frame)."""

    def __init__(self, max_frame: int) -> None:
        self._max = max_frame
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The frames completed by `chunk`; a length over the limit raises `ProtoError`."""
        buf = self._buf
        buf += chunk
        frames: list[bytes] = []
        start = 0
        while len(buf) - start >= 4:
            n = int.from_bytes(buf[start:start + 4], "big")
            if n > self._max:
                raise ProtoError(f"watch frame of {n} bytes is over the {self._max}-byte limit")
            if len(buf) - start - 4 < n:
                break
            frames.append(bytes(buf[start + 4:start + 4 + n]))
            start += 4 + n
        if start:
            del buf[:start]
        return frames
