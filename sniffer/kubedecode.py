"""What the Kubernetes API's answers mean: typed errors, LIST pages, pods and watch events
decoded from JSON or protobuf bytes, and watch streams cut into lines or frames.

Contract:
* Errors are typed (`KubeError` and subclasses, by HTTP status: `error_for`) and carry no
  credentials; an error answer's message is read from its JSON or protobuf Status.
* Bodies are plain ``json.loads`` dicts, never generated models (those are ~25x slower).
  With ``slim=True`` the JSON decoders give slim dicts with only the fields
  `sniffer.podview.project` reads, decoded by msgspec straight from the bytes
  (`sniffer.podwire`); the ``*_proto`` decoders give the same slim dicts from protobuf
  (`sniffer.podproto`). Bytes the slim schema refuses are decoded the general way, so
  errors are found and reported as without it. A body that is not the object expected
  raises `KubeError` naming what was wrong.
* `decode_event`/`decode_event_proto` judge one watch line or frame: ERROR events raise
  (`Gone` for 410), a malformed one raises `MalformedEvent` (the stream is still usable);
  nothing else escapes.
* `watch_lines` and `watch_frames` cut a watch stream into lines or protobuf frames of any
  length (aiohttp's ``readline`` stops at 128 KiB; pods with big annotations exceed it), up
  to 64 MiB. Silence for ``read_timeout`` raises `WatchStalled`, a broken stream
  `KubeError`: a half-open connection cannot hang the caller.
* No state, no logging; the only I/O is reading the response or stream it is given.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from sniffer.podproto import proto_event, proto_list, proto_pod, proto_status
from sniffer.podwire import slim_event, slim_list, slim_pod
from sniffer.protowire import MAGIC, FrameSplitter, ProtoError

JSON = dict[str, Any]
_MAX_LINE = 64 * 1024 * 1024  # A watch line (or frame) beyond this is hostile, not a pod.


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 for transport errors)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"kubernetes API: {status} {message}" if status else message)
        self.status = status
        self.message = message


class Gone(KubeError):
    """410: the requested resourceVersion is too old (compacted); relist."""


class Unauthorized(KubeError):
    """401 even after reloading credentials."""


class Conflict(KubeError):
    """409: the object changed (resourceVersion precondition) or already exists."""


class NotFound(KubeError):
    """404: the object does not exist."""


class UidChanged(KubeError):
    """422 for a patch's uid precondition: the name belongs to another object now."""


class Timeout(KubeError):
    """The API server did not answer in time (connect, headers or body)."""


class WatchStalled(Timeout):
    """A watch was silent for longer than the read timeout (a half-open connection)."""


class MalformedEvent(KubeError):
    """A watch line that is not a well-formed event; the stream itself is still usable."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One decoded watch line: ADDED, MODIFIED, DELETED, BOOKMARK (or ERROR, raised)."""

    type: str
    object: JSON
    read_at: float = 0.0
    """Monotonic time its bytes were framed off the stream (0: not stamped); the start of
    the watch-delivery histogram."""


@dataclass(frozen=True, slots=True)
class Page:
    """One LIST page: raw items, the list's resourceVersion and the continue token."""

    items: list[JSON]
    resource_version: str
    continue_token: str | None


def error_for(status: int, body: bytes | str) -> KubeError:
    message = ""
    try:
        # An answer to a protobuf request carries its Status in protobuf.
        if isinstance(body, bytes) and body.startswith(MAGIC):
            data: object = proto_status(body)
        else:
            data = json.loads(body) if body else {}
        if isinstance(data, dict):
            message = str(data.get("message") or data.get("reason") or "")
    except ValueError:  # ProtoError is one
        message = (body[:200].decode(errors="replace") if isinstance(body, bytes)
                   else body[:200])
    cls = {410: Gone, 401: Unauthorized, 409: Conflict, 404: NotFound}.get(status, KubeError)
    if status == 422 and "metadata.uid" in message:
        cls = UidChanged  # the API server's answer to a uid that is not the object's
    return cls(status, message or "error")


async def read_body(response: aiohttp.ClientResponse, method: str, path: str) -> bytes:
    """The whole body of `response`, which is released; transport errors are typed."""
    try:
        return await response.read()
    except TimeoutError as exc:
        raise Timeout(0, f"{method} {path}: the body did not arrive in time") from exc
    except aiohttp.ClientError as exc:  # the connection broke while the body was read
        raise KubeError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
    finally:
        response.release()


def decode_pod_list(body: bytes, *, slim: bool = False) -> Page:
    """Decode a LIST response (`slim`: items carry only what `project` reads); a body
    that is not a JSON object with a list of items raises `KubeError`."""
    data = slim_list(body) if slim else None
    if data is None:  # not slim, or refused by the slim schema: the general way
        data = json_object(body, "LIST response")
    return _page(data)


def decode_pod_list_proto(body: bytes) -> Page:
    """Decode a protobuf LIST response (slim items); bytes that are not one raise
    `KubeError` naming what was wrong."""
    try:
        return _page(proto_list(body))
    except ProtoError as exc:
        raise KubeError(200, f"LIST response: {exc}") from exc


def _page(data: JSON) -> Page:
    meta = data.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    items = data.get("items") or []
    if not isinstance(items, list):
        raise KubeError(200, "LIST response: items is not a list")
    token = meta.get("continue")
    return Page(items=items, resource_version=str(meta.get("resourceVersion") or ""),
                continue_token=str(token) if token else None)


def decode_pod(body: bytes, *, slim: bool = False, what: str = "GET pod response") -> JSON:
    """Decode one pod (`slim`: only what `project` reads); not a JSON object: `KubeError`."""
    data = slim_pod(body) if slim else None  # None: refused by the slim schema, or not slim
    return json_object(body, what) if data is None else data


def decode_pod_proto(body: bytes, what: str = "GET pod response") -> JSON:
    """Decode one protobuf pod (slim); bytes that are not one raise `KubeError`."""
    try:
        return proto_pod(body)
    except ProtoError as exc:
        raise KubeError(200, f"{what}: {exc}") from exc


def json_object(body: bytes, what: str, status: int = 200) -> JSON:
    """`body` decoded the general way (`json.loads`); anything but a JSON object raises
    `KubeError` naming `what`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise KubeError(status, f"{what} is not JSON") from exc
    if not isinstance(data, dict):
        raise KubeError(status, f"{what} is not an object")
    return data


def decode_event(line: bytes, *, slim: bool = False, read_at: float = 0.0) -> WatchEvent:
    """Decode one watch line (`slim`: the object carries only what `project` reads).
    ERROR events raise (`Gone` for 410), malformed lines raise `MalformedEvent`; nothing
    else escapes."""
    data = slim_event(line) if slim else None
    if data is None:  # not slim, or refused by the slim schema: the general way
        try:
            data = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise MalformedEvent(0, f"watch line is not JSON ({len(line)} bytes)") from exc
    return _event(data, read_at)


def decode_event_proto(frame: bytes, read_at: float = 0.0) -> WatchEvent:
    """Decode one protobuf watch frame (slim object), judged as `decode_event` judges a
    line: ERROR events raise, malformed frames raise `MalformedEvent`."""
    try:
        data = proto_event(frame)
    except ProtoError as exc:
        raise MalformedEvent(0, f"watch frame of {len(frame)} bytes: {exc}") from exc
    return _event(data, read_at)


def _event(data: object, read_at: float = 0.0) -> WatchEvent:
    if not isinstance(data, dict):
        raise MalformedEvent(0, "watch line is not an object")
    kind = data.get("type")
    obj = data.get("object")
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise MalformedEvent(0, "watch event without type or object")
    if kind == "ERROR":
        code = obj.get("code")
        message = str(obj.get("message") or obj.get("reason") or "watch error")
        if code == 410 or obj.get("reason") in ("Expired", "Gone"):
            raise Gone(410, message)
        raise KubeError(code if isinstance(code, int) else 0, message)
    return WatchEvent(kind, obj, read_at)


async def watch_lines(stream: aiohttp.StreamReader, read_timeout: float) -> AsyncIterator[bytes]:
    """Split a byte stream into lines of any length (aiohttp's readline caps at 128 KiB).

    Partial lines are kept as a list of chunks, so a multi-megabyte line costs one join."""
    parts: list[bytes] = []
    pending = 0
    while True:
        chunk = await _chunk(stream, read_timeout)
        if not chunk:
            tail = b"".join(parts)
            if tail.strip():
                yield tail
            return
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if parts:
                parts.append(chunk[start:end])
                line = b"".join(parts)
                parts.clear()
                pending = 0
            else:
                line = chunk[start:end]
            if line:
                yield line
            start = end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
            pending += len(chunk) - start
            if pending > _MAX_LINE:
                raise KubeError(0, f"watch line longer than {_MAX_LINE} bytes")


async def watch_frames(stream: aiohttp.StreamReader, read_timeout: float) -> AsyncIterator[bytes]:
    """Split a ``;stream=watch`` protobuf stream into its length-delimited frames. A
    length over the limit, or a stream that ends inside a frame, is a broken stream
    (`KubeError`): the framing cannot be found again after it."""
    splitter = FrameSplitter(_MAX_LINE)
    while chunk := await _chunk(stream, read_timeout):
        try:
            frames = splitter.feed(chunk)
        except ProtoError as exc:
            raise KubeError(0, f"watch stream broke: {exc}") from exc
        for frame in frames:
            yield frame
    if splitter.pending:
        raise KubeError(0, f"watch stream ended inside a frame ({splitter.pending} bytes)")


async def _chunk(stream: aiohttp.StreamReader, read_timeout: float) -> bytes:
    """The next bytes of the stream (b"" at its end); silence and breaks are typed."""
    try:
        return await stream.readany()
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise WatchStalled(0, f"watch stream silent for {read_timeout:g}s") from exc
    except aiohttp.ClientError as exc:
        raise KubeError(0, f"watch stream broke: {type(exc).__name__}: {exc}") from exc
