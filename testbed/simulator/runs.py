"""The platform side of the simulation: creating runs and cancelling them, as users do.

Contract:

* `RunsClient.create` is ``POST /api/v1/runs`` (kind, pod namespace, pod name, our run id),
  sending the pod's ``traceparent`` header; `cancel` is ``POST /api/v1/runs/{id}/cancel``;
  `state` reads a run's state (one ``GET``, not retried).
  `create` and `cancel` return an `Accepted` timed like the Kubernetes calls (resource
  version None).
* The bearer token is read from the token file, and read again once after a 401 (the token
  may have been rotated).
* 429, 5xx, connection resets and timeouts are retried with jittered backoff, honouring
  ``Retry-After`` (seconds, decimal allowed); after ``attempts`` tries `PlatformError` is
  raised. A create answered 409 ``already_exists`` after a retry counts as created.
* At most as many requests are in flight as the shared semaphore allows.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

from testbed.simulator.kubeapi import Accepted, Counters, backoff

RETRYABLE = frozenset({429, 500, 502, 503, 504})


class PlatformError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"platform API: {status} {message}" if status else message)
        self.status = status


class RunsClient:
    """Run calls over one aiohttp session (the caller owns and closes it)."""

    def __init__(self, url: str, token_file: Path, session: aiohttp.ClientSession,
                 limit: asyncio.Semaphore, *, counters: Counters | None = None,
                 attempts: int = 8) -> None:
        self._url = url.rstrip("/")
        self._token_file = Path(token_file)
        self._token = self._read_token()
        self._session = session
        self._limit = limit
        self.counters = counters or Counters()
        self._attempts = attempts

    def _read_token(self) -> str:
        try:
            return self._token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise PlatformError(0, f"cannot read the platform token file: {e}") from e

    async def _post(self, path: str, body: dict[str, object] | None, *,
                    traceparent: str | None = None, ok: tuple[int, ...] = (200, 201),
                    repeat_ok: tuple[int, ...] = ()) -> Accepted:
        reloaded = False
        error = PlatformError(0, "no attempt made")
        for attempt in range(self._attempts):
            delay = None
            async with self._limit:
                headers = {"Authorization": f"Bearer {self._token}"}
                if traceparent:
                    headers["traceparent"] = traceparent
                sent = time.time()
                self.counters.platform_requests += 1
                try:
                    async with self._session.post(self._url + path, json=body,
                                                  headers=headers) as resp:
                        await resp.read()
                        status, retry_after = resp.status, resp.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError) as e:
                    status, retry_after = 0, None
                    error = PlatformError(0, f"POST {path}: {type(e).__name__}: {e}")
            if status in ok or (attempt > 0 and status in repeat_ok):
                return Accepted(None, sent, time.time())
            if status == 401 and not reloaded:
                self._token, reloaded = self._read_token(), True
                continue
            if status and status not in RETRYABLE:
                raise PlatformError(status, f"POST {path} refused")
            if status:
                error = PlatformError(status, f"POST {path}")
                delay = _seconds(retry_after)
            if attempt < self._attempts - 1:
                self.counters.retries += 1
                await asyncio.sleep(delay if delay is not None else backoff(attempt))
        raise error

    async def create(self, run_id: str, *, kind: str, namespace: str, pod_name: str,
                     traceparent: str | None) -> Accepted:
        return await self._post("/api/v1/runs", {"id": run_id, "kind": kind,
                                                 "pod_namespace": namespace,
                                                 "pod_name": pod_name},
                                traceparent=traceparent, ok=(201,), repeat_ok=(409,))

    async def cancel(self, run_id: str) -> Accepted:
        return await self._post(f"/api/v1/runs/{quote(run_id, safe='')}/cancel", None)

    async def state(self, run_id: str) -> str | None:
        """The run's state as the platform holds it now (None if it has no such run);
        one plain GET: the caller polls, and transport errors propagate."""
        async with self._limit:
            self.counters.platform_requests += 1
            async with self._session.get(
                    f"{self._url}/api/v1/runs/{quote(run_id, safe='')}",
                    headers={"Authorization": f"Bearer {self._token}"}) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise PlatformError(resp.status, f"GET run {run_id}")
                body = await resp.json()
        state = body.get("state") if isinstance(body, dict) else None
        return str(state) if state is not None else None


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), 30.0)
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff
