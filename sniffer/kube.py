"""Raw, fast access to the Kubernetes API for the few calls Sniffer makes.

Contract:
* Credentials and TLS come from `sniffer.kubecredentials`; the pooled HTTP session from
  `kubernetes.aio`. A 401 reloads the credentials once and retries, so rotated
  service-account tokens and expiring exec-plugin tokens keep working.
* Bodies are plain ``json.loads`` dicts, never generated models (those are ~25x slower).
  With ``slim=True``, LIST items, `get_pod`'s pod and watch objects are slim dicts with
  only the fields `sniffer.podview.project` reads, decoded by msgspec straight from the
  bytes (`sniffer.podwire`); `project` gives the same view for either. Bytes that schema
  refuses are decoded the general way, so errors are found and reported as without it.
* `watch_pods` yields one `WatchEvent` per line, however long the line (aiohttp's
  ``readline`` stops at 128 KiB; pods with big annotations exceed it). A stream that is
  silent for ``read_timeout`` raises `WatchStalled`: a half-open connection cannot hang
  the caller. 410 Gone, at open or as an ERROR event mid-stream, raises `Gone`.
* Errors are typed (`KubeError` and subclasses) and carry no credentials.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp
from kubernetes.aio import client as kclient

from sniffer.kubecredentials import Credentials
from sniffer.podwire import slim_event, slim_list, slim_pod
from sniffer.reauth import retry_once_unauthorized

if TYPE_CHECKING:
    from config.settings import KubeSettings

log = logging.getLogger(__name__)

JSON = dict[str, Any]
_MAX_LINE = 64 * 1024 * 1024  # A watch line beyond this is hostile, not a pod.


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


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One decoded watch line: ADDED, MODIFIED, DELETED, BOOKMARK (or ERROR, raised)."""

    type: str
    object: JSON


@dataclass(frozen=True, slots=True)
class Page:
    """One LIST page: raw items, the list's resourceVersion and the continue token."""

    items: list[JSON]
    resource_version: str
    continue_token: str | None


@dataclass(frozen=True, slots=True)
class _Refused:
    """An answer >= 400, its body read and the connection released."""

    status: int
    payload: bytes


def _error_for(status: int, body: bytes | str) -> KubeError:
    message = ""
    try:
        data = json.loads(body) if body else {}
        if isinstance(data, dict):
            message = str(data.get("message") or data.get("reason") or "")
    except ValueError:
        message = (body[:200].decode(errors="replace") if isinstance(body, bytes)
                   else body[:200])
    cls = {410: Gone, 401: Unauthorized, 409: Conflict, 404: NotFound}.get(status, KubeError)
    if status == 422 and "metadata.uid" in message:
        cls = UidChanged  # the API server's answer to a uid that is not the object's
    return cls(status, message or "error")


class KubeClient:
    """An authenticated connection to one API server.

    Create with `await KubeClient.connect(...)` (or `from_settings`); the caller must
    `await close()`."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._api = kclient.ApiClient(credentials.configuration)

    @classmethod
    async def connect(cls, *, kubeconfig: str | None = None, context: str | None = None,
                      verify_tls: bool = True, pool_size: int = 32) -> KubeClient:
        """Load credentials (`sniffer.kubecredentials.Credentials.load`) and connect;
        unusable ones raise `CredentialsError`."""
        return cls(await Credentials.load(kubeconfig=kubeconfig, context=context,
                                          verify_tls=verify_tls, pool_size=pool_size))

    @classmethod
    async def from_settings(cls, kube: KubeSettings, *, pool_size: int) -> KubeClient:
        """`connect` with the kubeconfig, context and TLS choice of `kube` settings."""
        return await cls.connect(kubeconfig=kube.kubeconfig, context=kube.context,
                                 verify_tls=kube.verify_tls, pool_size=pool_size)

    @property
    def host(self) -> str:
        return self._credentials.host

    async def close(self) -> None:
        await self._api.close()

    async def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      client_timeout: aiohttp.ClientTimeout | None = None,
                      ) -> aiohttp.ClientResponse:
        """Send one request and return the open response (status < 400).

        Caller duty: read or release the response. Raises a `KubeError` subclass for
        any status >= 400, after one credential reload on 401."""
        url = self.host + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        timeout = client_timeout or aiohttp.ClientTimeout(total=60)

        async def attempt() -> aiohttp.ClientResponse | _Refused:
            # The REST client serialises JSON bodies itself (for any *json content type).
            try:
                resp = await self._api.rest_client.request(
                    method, url, headers=await self._credentials.headers(content_type),
                    body=body, _request_timeout=timeout)
            except TimeoutError as exc:  # aiohttp's socket/connect timeouts subclass it
                raise Timeout(0, f"{method} {path}: {type(exc).__name__}") from exc
            except aiohttp.ClientError as exc:
                raise KubeError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            response: aiohttp.ClientResponse = resp.response
            if response.status < 400:
                return response
            try:
                payload = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                # The message is a nicety; the status alone decides what the caller does.
                payload = b""
            finally:
                response.release()
            return _Refused(response.status, payload)

        result = await retry_once_unauthorized(
            attempt, lambda r: isinstance(r, _Refused) and r.status == 401, self._renew)
        if isinstance(result, _Refused):
            raise _error_for(result.status, result.payload)
        return result

    async def _renew(self) -> bool:
        log.info("API server answered 401; reloading credentials")
        await self._credentials.reload()
        return True

    async def request_json(self, method: str, path: str, **kw: Any) -> JSON:
        response = await self.request(method, path, **kw)
        return _json_object(await _body(response, method, path),
                            f"{method} {path}: response", response.status)

    # --- pods -----------------------------------------------------------------------

    @staticmethod
    def pods_path(namespace: str | None, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{quote(namespace)}/pods" if namespace else "/api/v1/pods"
        return f"{base}/{quote(name)}" if name else base

    async def list_pods(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None, slim: bool = False) -> Page:
        """One page of a paginated LIST. The first page is served from etcd (a consistent
        read), later pages from the same snapshot via the continue token; an expired
        token raises `Gone`. `slim`: items carry only what `project` reads."""
        path = self.pods_path(namespace)
        response = await self.request("GET", path, query={
            "labelSelector": label_selector or None, "limit": limit,
            "continue": continue_token}, client_timeout=aiohttp.ClientTimeout(total=120))
        return decode_pod_list(await _body(response, "GET", path), slim=slim)

    async def get_pod(self, namespace: str, name: str, *, slim: bool = False) -> JSON:
        """One pod by name (a missing one raises `NotFound`); `slim`: as `list_pods`."""
        path = self.pods_path(namespace, name)
        response = await self.request("GET", path)
        return decode_pod(await _body(response, "GET", path), slim=slim,
                          what=f"GET {path}: response")

    async def watch_pods(self, namespace: str | None, *, label_selector: str,
                         resource_version: str, timeout_seconds: int, read_timeout: float,
                         slim: bool = False) -> AsyncGenerator[WatchEvent | MalformedEvent, None]:
        """Stream watch events from `resource_version` with bookmarks.

        Ends normally when the server closes the stream (its `timeout_seconds` elapsed);
        raises `Gone` on 410, `WatchStalled` after `read_timeout` of silence and
        `KubeError` on transport errors. A malformed line is yielded as a
        `MalformedEvent` instance (not raised), so one bad line never ends the stream.
        `slim`: objects carry only what `project` reads."""
        query = {"watch": "true", "allowWatchBookmarks": "true",
                 "resourceVersion": resource_version, "timeoutSeconds": timeout_seconds,
                 "labelSelector": label_selector or None}
        # No total timeout: the server ends the stream; silence is caught per read.
        try:
            response = await self.request(
                "GET", self.pods_path(namespace), query=query,
                client_timeout=aiohttp.ClientTimeout(total=None, sock_connect=read_timeout,
                                                     sock_read=read_timeout))
        except Timeout as exc:
            raise WatchStalled(0, f"watch did not open within {read_timeout:g}s") from exc
        try:
            async for line in _lines(response.content, read_timeout):
                try:
                    yield decode_event(line, slim=slim)
                except MalformedEvent as bad:
                    yield bad
        finally:
            response.release()

    async def patch_pod(self, namespace: str, name: str, patch: JSON | list[JSON], *,
                        content_type: str = "application/strategic-merge-patch+json") -> JSON:
        return await self.request_json("PATCH", self.pods_path(namespace, name), body=patch,
                                       content_type=content_type)


class MalformedEvent(KubeError):
    """A watch line that is not a well-formed event; the stream itself is still usable."""


async def _body(response: aiohttp.ClientResponse, method: str, path: str) -> bytes:
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
        data = _json_object(body, "LIST response")
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
    return _json_object(body, what) if data is None else data


def _json_object(body: bytes, what: str, status: int = 200) -> JSON:
    """`body` decoded the general way (`json.loads`); anything but a JSON object raises
    `KubeError` naming `what`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise KubeError(status, f"{what} is not JSON") from exc
    if not isinstance(data, dict):
        raise KubeError(status, f"{what} is not an object")
    return data


def decode_event(line: bytes, *, slim: bool = False) -> WatchEvent:
    """Decode one watch line (`slim`: the object carries only what `project` reads).
    ERROR events raise (`Gone` for 410), malformed lines raise `MalformedEvent`; nothing
    else escapes."""
    data = slim_event(line) if slim else None
    if data is None:  # not slim, or refused by the slim schema: the general way
        try:
            data = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise MalformedEvent(0, f"watch line is not JSON ({len(line)} bytes)") from exc
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
    return WatchEvent(kind, obj)


async def _lines(stream: aiohttp.StreamReader, read_timeout: float) -> AsyncIterator[bytes]:
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


async def _chunk(stream: aiohttp.StreamReader, read_timeout: float) -> bytes:
    """The next bytes of the stream (b"" at its end); silence and breaks are typed."""
    try:
        return await stream.readany()
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise WatchStalled(0, f"watch stream silent for {read_timeout:g}s") from exc
    except aiohttp.ClientError as exc:
        raise KubeError(0, f"watch stream broke: {type(exc).__name__}: {exc}") from exc
