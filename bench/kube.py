"""The harness's own Kubernetes client: the few calls a load generator needs, raw JSON.

Contract:

* One `Kube` holds one aiohttp session to one API server as its admin, with at most
  `concurrency` requests in flight; `close()` must be awaited.
* Every call returns the decoded JSON answer or raises `KubeCallError` carrying the status
  and the body's message; nothing retries (a benchmark load that fails must say so).
* It never watches: what the systems under test see comes from their own watches.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from testbed.apiserver import ApiServer

JSON = dict[str, Any]
_SMP = "application/strategic-merge-patch+json"


class KubeCallError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} answered {status}: {body[:300]}")
        self.status = status


class Kube:
    """A minimal async client of one API server (pods and namespaces)."""

    def __init__(self, api: ApiServer, *, concurrency: int = 64) -> None:
        self.api = api
        self._ssl = api.ssl_context()
        self._headers = {**api.headers(), "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None
        self._concurrency = concurrency
        self.calls = 0

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._concurrency),
                timeout=aiohttp.ClientTimeout(total=120))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, body: Any = None, *,
                   content_type: str = "application/json", ok: tuple[int, ...] = (200, 201),
                   ) -> JSON:
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        self.calls += 1
        async with self._open().request(method, self.api.url + path, data=data,
                                        headers=headers) as response:
            raw = await response.read()
            if response.status not in ok:
                raise KubeCallError(method, path, response.status, raw.decode(errors="replace"))
            return json.loads(raw) if raw else {}

    async def ensure_namespace(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        await self.call("POST", "/api/v1/namespaces", body, ok=(201, 409))

    async def create_pod(self, pod: JSON) -> JSON:
        ns = pod["metadata"]["namespace"]
        return await self.call("POST", f"/api/v1/namespaces/{quote(ns)}/pods", pod)

    async def patch_status(self, namespace: str, name: str, status: JSON) -> JSON:
        return await self.call(
            "PATCH", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/status",
            {"status": status}, content_type=_SMP)

    async def count_pods(self, namespace: str) -> int:
        """Pods in `namespace` (a paged, metadata-light count)."""
        total, token = 0, ""
        while True:
            query = "limit=5000" + (f"&continue={quote(token)}" if token else "")
            page = await self.call("GET", f"/api/v1/namespaces/{quote(namespace)}/pods?{query}")
            total += len(page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return total

    async def delete_pods(self, namespace: str) -> None:
        """Delete every pod of `namespace` at once (grace 0); finalizers may keep some."""
        await self.call("DELETE", f"/api/v1/namespaces/{quote(namespace)}/pods"
                        "?gracePeriodSeconds=0", ok=(200,))
