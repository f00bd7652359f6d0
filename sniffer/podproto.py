"""Pods off the wire in the API server's protobuf encoding, decoded straight into slim dicts.

Contract:

* `proto_list(body)`, `proto_pod(body)` and `proto_event(frame)` decode the bytes of an
  ``application/vnd.kubernetes.protobuf`` LIST response, GET response and watch frame
  (one length-delimited frame of a ``;stream=watch`` response, without its length) into
  the dicts `sniffer.podwire` gives for the JSON of the same object: only the fields
  `sniffer.podview.project` reads, every other field skipped, never materialised (a
  main container of the spec carries only its name: its restartPolicy is read for init
  containers alone).
* For any pod the API server sends, `project(proto_pod(pb))` equals
  `project(slim_pod(json))`, value for value (tests/test_podproto.py checks it against a
  real kube-apiserver). The values are what Go's JSON encoding of the decoded object
  would carry: an empty string reads as absent (every string field `project` reads is
  ``omitempty`` or required non-empty), an empty ``Time`` as null, a missing
  ``exitCode`` as 0 (never omitted in JSON), times as RFC 3339 at whole seconds (the
  server sends seconds only), strings as UTF-8 with bad bytes replaced, as Go's JSON does.
* Bytes that are not that (a bad ``k8s\\0`` envelope, another kind, a truncated or
  overlong field, a known field with the wrong wire type, an unknown event type) raise
  `ProtoError`, a ValueError, naming what was wrong; for any bytes nothing else escapes
  (tests/test_fuzz_proto.py). Judging the values (a bad run id, a missing name) is left
  to `project`, as on the JSON path.
* ERROR events carry their Status as ``{"kind": "Status", "code", "reason", "message"}``
  so the caller judges them as it judges JSON ones; `proto_status(body)` reads the
  Status of an error answer (the server encodes errors as it would have the object).
* `FrameSplitter` cuts a watch stream's bytes into frames (4-byte big-endian length, then
  the frame); a frame longer than its limit raises `ProtoError` before it is buffered.
* Pure: no I/O, no logging.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from sniffer.podview import (
    CANCEL_ANNOTATION,
    KIND_LABEL,
    RUN_ID_LABEL,
    TRACEPARENT_ANNOTATION,
)

__all__ = ["CONTENT_TYPE", "MAGIC", "WATCH_CONTENT_TYPE", "FrameSplitter", "ProtoError",
           "proto_event", "proto_list", "proto_pod", "proto_status"]

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
WATCH_CONTENT_TYPE = CONTENT_TYPE + ";stream=watch"
MAGIC = b"k8s\x00"  # runtime/serializer/protobuf: the prefix before a runtime.Unknown
_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})
_ZERO_TIME = -62_135_596_800  # Go's zero time.Time (year 1) in Unix seconds: JSON null


class ProtoError(ValueError):
    """The bytes are not the protobuf object expected; the message says what is wrong."""


# --- the schema: for each message, the fields kept ------------------------------------
# A table maps a field's key byte(s) (field number << 3 | wire type) to (JSON name, kind,
# sub-table). Field numbers are k8s.io/api core/v1 and apimachinery meta/v1 generated.proto
# (v0.36). A key absent from a table is skipped by its wire type, whatever its number.

# (The kinds of length-delimited fields first: `_message` tells them apart by one compare.)
_STR, _MSGS, _TIME, _MSG, _NAME, _STRS, _MAP, _INT, _BOOL, _BAD = range(10)
_VARINT, _LEN = 0, 2
Table = dict[int, tuple[str, int, Any]]


def _f(number: int, wire: int) -> int:
    return number << 3 | wire


_WAITING: Table = {_f(1, _LEN): ("reason", _STR, None), _f(2, _LEN): ("message", _STR, None)}
_RUNNING: Table = {_f(1, _LEN): ("startedAt", _TIME, None)}
_TERMINATED: Table = {
    _f(1, _VARINT): ("exitCode", _INT, None), _f(3, _LEN): ("reason", _STR, None),
    _f(4, _LEN): ("message", _STR, None), _f(5, _LEN): ("startedAt", _TIME, None),
    _f(6, _LEN): ("finishedAt", _TIME, None)}
_STATE: Table = {_f(1, _LEN): ("waiting", _MSG, _WAITING),
                 _f(2, _LEN): ("running", _MSG, _RUNNING),
                 _f(3, _LEN): ("terminated", _MSG, _TERMINATED)}
_CONTAINER_STATUS: Table = {
    _f(1, _LEN): ("name", _STR, None), _f(2, _LEN): ("state", _MSG, _STATE),
    _f(3, _LEN): ("lastState", _MSG, _STATE), _f(5, _VARINT): ("restartCount", _INT, None),
    _f(9, _VARINT): ("started", _BOOL, None)}
_CONDITION: Table = {
    _f(1, _LEN): ("type", _STR, None), _f(2, _LEN): ("status", _STR, None),
    _f(4, _LEN): ("lastTransitionTime", _TIME, None), _f(5, _LEN): ("reason", _STR, None),
    _f(6, _LEN): ("message", _STR, None)}
_STATUS: Table = {
    _f(1, _LEN): ("phase", _STR, None), _f(2, _LEN): ("conditions", _MSGS, _CONDITION),
    _f(3, _LEN): ("message", _STR, None), _f(4, _LEN): ("reason", _STR, None),
    _f(7, _LEN): ("startTime", _TIME, None),
    _f(8, _LEN): ("containerStatuses", _MSGS, _CONTAINER_STATUS),
    _f(10, _LEN): ("initContainerStatuses", _MSGS, _CONTAINER_STATUS)}
_CONTAINER: Table = {_f(1, _LEN): ("name", _STR, None),
                     _f(24, _LEN): ("restartPolicy", _STR, None)}
_SPEC: Table = {_f(2, _LEN): ("containers", _NAME, None),
                _f(20, _LEN): ("initContainers", _MSGS, _CONTAINER)}
_METADATA: Table = {
    _f(1, _LEN): ("name", _STR, None), _f(3, _LEN): ("namespace", _STR, None),
    _f(5, _LEN): ("uid", _STR, None), _f(6, _LEN): ("resourceVersion", _STR, None),
    _f(8, _LEN): ("creationTimestamp", _TIME, None),
    _f(9, _LEN): ("deletionTimestamp", _TIME, None),
    _f(10, _VARINT): ("deletionGracePeriodSeconds", _INT, None),
    _f(11, _LEN): ("labels", _MAP, frozenset({RUN_ID_LABEL.encode(), KIND_LABEL.encode()})),
    _f(12, _LEN): ("annotations", _MAP, frozenset({CANCEL_ANNOTATION.encode(),
                                                    TRACEPARENT_ANNOTATION.encode()})),
    _f(14, _LEN): ("finalizers", _STRS, None)}
_POD: Table = {_f(1, _LEN): ("metadata", _MSG, _METADATA), _f(2, _LEN): ("spec", _MSG, _SPEC),
               _f(3, _LEN): ("status", _MSG, _STATUS)}
_LIST_META: Table = {_f(2, _LEN): ("resourceVersion", _STR, None),
                     _f(3, _LEN): ("continue", _STR, None)}
_POD_LIST: Table = {_f(1, _LEN): ("metadata", _MSG, _LIST_META),
                    _f(2, _LEN): ("items", _MSGS, _POD)}
_STATUS_OBJECT: Table = {  # metav1.Status, the object of an ERROR event
    _f(3, _LEN): ("message", _STR, None), _f(4, _LEN): ("reason", _STR, None),
    _f(6, _VARINT): ("code", _INT, None)}
_TYPE_META: Table = {_f(2, _LEN): ("kind", _STR, None)}
_UNKNOWN: Table = {_f(1, _LEN): ("typeMeta", _MSG, _TYPE_META),
                   _f(3, _LEN): ("contentEncoding", _STR, None)}
_WATCH_EVENT: Table = {_f(1, _LEN): ("type", _STR, None)}


def _strict(table: Table) -> None:
    """A kept field sent with another wire type is an error, not a field to skip."""
    for key, (name, _, _) in list(table.items()):
        for wire in (0, 1, 2, 5):
            table.setdefault(key & ~7 | wire, (name, _BAD, None))


for _table in (_WAITING, _RUNNING, _TERMINATED, _STATE, _CONTAINER_STATUS, _CONDITION,
               _STATUS, _CONTAINER, _SPEC, _METADATA, _POD, _LIST_META, _POD_LIST,
               _STATUS_OBJECT, _TYPE_META, _UNKNOWN, _WATCH_EVENT):
    _strict(_table)
# Go zero values JSON never omits: a terminated state always has its exit code.
_DEFAULTS = {id(_TERMINATED): (("exitCode", 0),)}


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
def _rfc3339(seconds: int) -> str:
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
        return _rfc3339(seconds)
    except (OverflowError, OSError, ValueError):
        raise ProtoError(f"metav1.Time out of range: {seconds} s") from None


def _skip(buf: bytes, i: int, key: int) -> int:
    """The offset after the value of a field not kept, by its wire type."""
    wire = key & 7
    if wire == _VARINT:
        return _varint(buf, i)[1]
    if wire == _LEN:
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
            if wire == _LEN:
                n = buf[i]
                if n < 0x80:
                    i += n + 1
                elif buf[i + 1] < 0x80:
                    i += (n & 0x7F | buf[i + 1] << 7) + 2
                else:
                    n, i = _varint(buf, i)
                    i += n
            elif wire == _VARINT:
                while buf[i] >= 0x80:
                    i += 1
                i += 1
            else:
                i = _skip(buf, i, key)
            continue
        name, kind, sub = field
        if kind >= _INT:  # the varint kinds, and a kept field sent with a wrong wire type
            if kind == _BAD:
                raise ProtoError(f"field {name!r} has wire type {key & 7}")
            raw = buf[i]
            if raw < 0x80:
                i += 1
            else:
                raw, i = _varint(buf, i)
                raw = _signed(raw)
            out[name] = raw if kind == _INT else raw != 0
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
        if kind == _STR:
            if n:
                out[name] = buf[i:j].decode("utf-8", "replace")
            else:
                out.pop(name, None)
        elif kind == _MSGS:
            items = out.get(name)
            if items is None:
                items = out[name] = []
            items.append(_message(buf, i, j, sub))
        elif kind == _TIME:
            out[name] = _time(buf[i:j])
        elif kind == _MSG:
            prior = out.get(name)
            out[name] = _message(buf, i, j, sub, prior if isinstance(prior, dict) else None)
        elif kind == _NAME:
            items = out.get(name)
            if items is None:
                items = out[name] = []
            items.append(_first_name(buf, i, j))
        elif kind == _STRS:
            strings = out.get(name)
            if strings is None:
                strings = out[name] = []
            strings.append(buf[i:j].decode("utf-8", "replace"))
        else:  # _MAP: only the wanted keys are kept
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
    defaults = _DEFAULTS.get(id(table))
    if defaults:
        for name, value in defaults:
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


def _decode(buf: bytes, i: int, end: int, table: Table) -> dict[str, Any]:
    """`_message` with every low-level failure (a truncated buffer) as a ProtoError."""
    try:
        return _message(buf, i, end, table)
    except IndexError:
        raise ProtoError("truncated message") from None


def _unwrap(body: bytes, kinds: frozenset[str]) -> tuple[str, bytes]:
    """The kind and raw bytes of the runtime.Unknown behind the ``k8s\\0`` prefix."""
    if not body.startswith(MAGIC):
        raise ProtoError("no k8s protobuf envelope (the body does not start with k8s\\0)")
    envelope = _decode(body, len(MAGIC), len(body), _UNKNOWN)
    if envelope.get("contentEncoding"):
        raise ProtoError(f"unsupported content encoding {envelope['contentEncoding']!r}")
    kind = envelope.get("typeMeta", {}).get("kind", "")
    if kind not in kinds:
        raise ProtoError(f"expected {' or '.join(sorted(kinds))}, got kind {kind[:40]!r}")
    raw = _raw(body, len(MAGIC), len(body), 2)
    return kind, raw


def _raw(buf: bytes, i: int, end: int, number: int) -> bytes:
    """The bytes of the last length-delimited field `number` (a bytes field)."""
    found = b""
    want = _f(number, _LEN)
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


_STATUS_KINDS = frozenset({"Status"})
_POD_KINDS = frozenset({"Pod"})
_LIST_KINDS = frozenset({"PodList"})
_EVENT_KINDS = frozenset({"Pod", "Status"})


def proto_list(body: bytes) -> dict[str, Any]:
    """A LIST response: ``{"metadata": {resourceVersion, continue}, "items": [pods]}``."""
    _, raw = _unwrap(body, _LIST_KINDS)
    return _decode(raw, 0, len(raw), _POD_LIST)


def proto_pod(body: bytes) -> dict[str, Any]:
    """One pod (a GET response), slim."""
    _, raw = _unwrap(body, _POD_KINDS)
    return _decode(raw, 0, len(raw), _POD)


def proto_status(body: bytes) -> dict[str, Any]:
    """An error answer's metav1.Status: ``{"code", "reason", "message"}`` (those present)."""
    _, raw = _unwrap(body, _STATUS_KINDS)
    return _decode(raw, 0, len(raw), _STATUS_OBJECT)


def proto_event(frame: bytes) -> dict[str, Any]:
    """One watch frame: a metav1.WatchEvent (not enveloped) whose RawExtension holds the
    enveloped Pod (or, for ERROR, Status): ``{"type": ..., "object": {...}}``."""
    head = _decode(frame, 0, len(frame), _WATCH_EVENT)
    kind = head.get("type", "")
    if kind not in _EVENT_TYPES:
        raise ProtoError(f"unknown watch event type {kind[:40]!r}")
    extension = _raw(frame, 0, len(frame), 2)
    raw = _raw(extension, 0, len(extension), 1)
    obj_kind, obj = _unwrap(raw, _EVENT_KINDS)
    if obj_kind == "Status":
        status = _decode(obj, 0, len(obj), _STATUS_OBJECT)
        status["kind"] = "Status"
        if kind != "ERROR":
            raise ProtoError(f"a {kind} event carries a Status, not a Pod")
        return {"type": kind, "object": status}
    if kind == "ERROR":
        raise ProtoError("an ERROR event carries a Pod, not a Status")
    return {"type": kind, "object": _decode(obj, 0, len(obj), _POD)}


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
