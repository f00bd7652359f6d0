"""Raw, fast access to the Kubernetes API for the few calls Sniffer makes.

Contract:
* Credentials and TLS come from `sniffer.kubecredentials`; the pooled HTTP session from
  `kubernetes.aio`. A 401 reloads the credentials once and retries, so rotated
  service-account tokens and expiring exec-plugin tokens keep working.
* What the answers mean (typed errors, pages, pods, watch events, slim or not, JSON or
  protobuf) is `sniffer.kubedecode`'s; this client chooses the wire and hands it the bytes.
  With ``slim=True``, LIST items, `get_pod`'s pod and watch objects carry only the fields
  `sniffer.podview.project` reads; `project` gives the same view for either.
* Wire: with ``wire="protobuf"`` (setting ``kube.wire``) slim LISTs, GETs and watches ask
  for the API server's protobuf encoding (``sniffer.podproto``: the same slim dicts, the
  same views) with JSON as the second choice; a 406 or 415 to that request, or a JSON
  answer, turns the client to JSON for good, logged once. Non-slim reads and every write
  are JSON.
* `watch_pods` yields one `WatchEvent` per line or protobuf frame, however long. A stream
  that is silent for ``read_timeout`` raises `WatchStalled`: a half-open connection cannot
  hang the caller. 410 Gone, at open or as an ERROR event mid-stream, raises `Gone`.
* Errors are typed (`sniffer.kubedecode.KubeError` and subclasses) and carry no
  credentials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp
from kubernetes.aio import client as kclient

from sniffer.kubecredentials import Credentials
from sniffer.kubedecode import (
    JSON,
    KubeError,
    MalformedEvent,
    Page,
    Timeout,
    WatchEvent,
    WatchStalled,
    decode_event,
    decode_event_proto,
    decode_pod,
    decode_pod_list,
    decode_pod_list_proto,
    decode_pod_proto,
    error_for,
    json_object,
    read_body,
    watch_frames,
    watch_lines,
)
from sniffer.protowire import CONTENT_TYPE as PROTOBUF
from sniffer.reauth import retry_once_unauthorized

if TYPE_CHECKING:
    from config.settings import KubeSettings

log = logging.getLogger(__name__)

_JSON = "application/json"
_PROTOBUF_FIRST = f"{PROTOBUF}, {_JSON}"  # as client-go asks: protobuf, else JSON
_REFUSED = (406, 415)  # what a server or proxy that will not speak protobuf answers


@dataclass(frozen=True, slots=True)
class _Refused:
    """An answer >= 400, its body read and the connection released."""

    status: int
    payload: bytes


def watch_query(label_selector: str, resource_version: str, timeout_seconds: int,
                send_initial_events: bool = False) -> dict[str, object]:
    """The query of a watch with bookmarks. `send_initial_events`: a WatchList stream, the
    objects that exist first (ADDED), then a bookmark annotated
    `INITIAL_EVENTS_END_ANNOTATION`, then live events; `resource_version` "" asks for a
    consistent (most recent) start."""
    query: dict[str, object] = {
        "watch": "true", "allowWatchBookmarks": "true", "resourceVersion": resource_version,
        "timeoutSeconds": timeout_seconds, "labelSelector": label_selector or None}
    if send_initial_events:
        query["sendInitialEvents"] = "true"
        query["resourceVersionMatch"] = "NotOlderThan"
    return query


class KubeClient:
    """An authenticated connection to one API server.

    Create with `await KubeClient.connect(...)` (or `from_settings`); the caller must
    `await close()`."""

    def __init__(self, credentials: Credentials, *, wire: str = "protobuf") -> None:
        self._credentials = credentials
        self._api = kclient.ApiClient(credentials.configuration)
        self._protobuf = wire == "protobuf"
        """Slim reads ask for protobuf first; False from the first refusal on (for good)."""

    @classmethod
    async def connect(cls, *, kubeconfig: str | None = None, context: str | None = None,
                      verify_tls: bool = True, pool_size: int = 32,
                      wire: str = "protobuf") -> KubeClient:
        """Load credentials (`sniffer.kubecredentials.Credentials.load`) and connect;
        unusable ones raise `CredentialsError`. `wire`: "protobuf" or "json"."""
        return cls(await Credentials.load(kubeconfig=kubeconfig, context=context,
                                          verify_tls=verify_tls, pool_size=pool_size),
                   wire=wire)

    @classmethod
    async def from_settings(cls, kube: KubeSettings, *, pool_size: int) -> KubeClient:
        """`connect` with the kubeconfig, context, TLS choice and wire of `kube` settings."""
        return await cls.connect(kubeconfig=kube.kubeconfig, context=kube.context,
                                 verify_tls=kube.verify_tls, pool_size=pool_size,
                                 wire=kube.wire)

    @property
    def wire(self) -> str:
        """The encoding slim reads ask for now: "protobuf", or "json" (chosen, or after
        a refusal)."""
        return "protobuf" if self._protobuf else "json"

    @property
    def host(self) -> str:
        return self._credentials.host

    async def close(self) -> None:
        await self._api.close()

    async def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      client_timeout: aiohttp.ClientTimeout | None = None,
                      accept: str = _JSON) -> aiohttp.ClientResponse:
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
                headers = {**await self._credentials.headers(content_type), "Accept": accept}
                resp = await self._api.rest_client.request(
                    method, url, headers=headers, body=body, _request_timeout=timeout)
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
            raise error_for(result.status, result.payload)
        return result

    async def _renew(self) -> bool:
        log.info("API server answered 401; reloading credentials")
        await self._credentials.reload()
        return True

    async def request_json(self, method: str, path: str, **kw: Any) -> JSON:
        response = await self.request(method, path, **kw)
        return json_object(await read_body(response, method, path),
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
        response, protobuf = await self._read(path, slim, query={
            "labelSelector": label_selector or None, "limit": limit,
            "continue": continue_token}, client_timeout=aiohttp.ClientTimeout(total=120))
        body = await read_body(response, "GET", path)
        return decode_pod_list_proto(body) if protobuf else decode_pod_list(body, slim=slim)

    async def get_pod(self, namespace: str, name: str, *, slim: bool = False) -> JSON:
        """One pod by name (a missing one raises `NotFound`); `slim`: as `list_pods`."""
        path = self.pods_path(namespace, name)
        response, protobuf = await self._read(path, slim)
        body, what = await read_body(response, "GET", path), f"GET {path}: response"
        return decode_pod_proto(body, what) if protobuf else decode_pod(body, slim=slim,
                                                                          what=what)

    async def watch_pods(self, namespace: str | None, *, label_selector: str,
                         resource_version: str, timeout_seconds: int, read_timeout: float,
                         slim: bool = False, send_initial_events: bool = False,
                         ) -> AsyncGenerator[WatchEvent | MalformedEvent, None]:
        """Stream watch events from `resource_version` with bookmarks.

        Ends normally when the server closes the stream (its `timeout_seconds` elapsed);
        raises `Gone` on 410, `WatchStalled` after `read_timeout` of silence and
        `KubeError` on transport errors. A malformed line is yielded as a
        `MalformedEvent` instance (not raised), so one bad line never ends the stream.
        `slim`: objects carry only what `project` reads. `send_initial_events`: a
        WatchList stream (`watch_query`)."""
        query = watch_query(label_selector, resource_version, timeout_seconds,
                            send_initial_events)
        # No total timeout: the server ends the stream; silence is caught per read.
        try:
            response, protobuf = await self._read(
                self.pods_path(namespace), slim, query=query,
                client_timeout=aiohttp.ClientTimeout(total=None, sock_connect=read_timeout,
                                                     sock_read=read_timeout))
        except Timeout as exc:
            raise WatchStalled(0, f"watch did not open within {read_timeout:g}s") from exc
        try:
            if protobuf:
                async for frame in watch_frames(response.content, read_timeout):
                    try:
                        yield decode_event_proto(frame, time.monotonic())
                    except MalformedEvent as bad:
                        yield bad
                return
            async for line in watch_lines(response.content, read_timeout):
                try:
                    yield decode_event(line, slim=slim, read_at=time.monotonic())
                except MalformedEvent as bad:
                    yield bad
        finally:
            response.release()

    async def _read(self, path: str, slim: bool, **kw: Any,
                    ) -> tuple[aiohttp.ClientResponse, bool]:
        """GET `path` (protobuf asked for first iff `slim` and the wire is protobuf): the
        open response and whether its body is protobuf. A 406/415 to protobuf is asked
        again in JSON; either refusal turns the wire to JSON (`_refused`)."""
        if not (slim and self._protobuf):
            return await self.request("GET", path, **kw), False
        try:
            response = await self.request("GET", path, accept=_PROTOBUF_FIRST, **kw)
        except KubeError as exc:
            if exc.status not in _REFUSED:
                raise
            self._refused(f"HTTP {exc.status}")
            return await self.request("GET", path, **kw), False
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith(PROTOBUF):
            return response, True
        self._refused(f"Content-Type {content_type[:80] or 'none'}")
        return response, False

    def _refused(self, answer: str) -> None:
        if self._protobuf:  # no await between check and change: logged exactly once
            self._protobuf = False
            log.warning("the API server (or a proxy) refused protobuf; using JSON from now "
                        "on", extra={"answer": answer})

    # --- jobs -----------------------------------------------------------------------

    @staticmethod
    def jobs_path(namespace: str | None, name: str | None = None) -> str:
        base = (f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs" if namespace
                else "/apis/batch/v1/jobs")
        return f"{base}/{quote(name)}" if name else base

    async def list_jobs(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None) -> Page:
        """One page of a paginated LIST of Jobs, as `list_pods` (JSON: a Job's fields are
        few beside a pod's, so there is no slim or protobuf path); raw items for
        `sniffer.jobview.project_job`."""
        path = self.jobs_path(namespace)
        response = await self.request("GET", path, query={
            "labelSelector": label_selector or None, "limit": limit,
            "continue": continue_token}, client_timeout=aiohttp.ClientTimeout(total=120))
        return decode_pod_list(await read_body(response, "GET", path))

    async def get_job(self, namespace: str, name: str) -> JSON:
        """One Job by name (a missing one raises `NotFound`)."""
        return await self.request_json("GET", self.jobs_path(namespace, name))

    async def patch_job(self, namespace: str, name: str, patch: JSON, *,
                        content_type: str = "application/strategic-merge-patch+json") -> JSON:
        return await self.request_json("PATCH", self.jobs_path(namespace, name), body=patch,
                                       content_type=content_type)

    async def patch_pod(self, namespace: str, name: str, patch: JSON | list[JSON], *,
                        content_type: str = "application/strategic-merge-patch+json") -> JSON:
        return await self.request_json("PATCH", self.pods_path(namespace, name), body=patch,
                                       content_type=content_type)
