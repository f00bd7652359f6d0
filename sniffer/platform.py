"""Async client for the Platform API (the contract is docs/platform-api.yaml).

Contract:

* The constructor starts nothing; the pooled aiohttp session opens on the first call.
  Use ``async with PlatformClient(...)`` or ``await client.close()``; a closed client
  refuses further calls with ``RuntimeError``.
* The client never retries and never sleeps: it reports, the caller's work queue decides.
  Every call either returns a typed result or raises a :class:`PlatformError`:

  - :class:`PlatformUnavailable` — retryable: 408, 429, 5xx, timeouts, connection errors
    and resets, bodies cut short. ``retry_after`` comes from ``Retry-After`` (seconds,
    decimal seconds or an HTTP-date), else None.
  - :class:`PlatformRejected` — not retryable as is: 400, 401 (after one token re-read),
    403, 428, any other unexpected status, and any response whose body is not the JSON
    the contract promises (``code == "malformed_response"``). A bad body never escapes as
    ``ValueError``/``KeyError``: one bad reply must not kill the caller's loop.

* State updates map each documented answer to one :class:`Outcome`, in one place
  (:meth:`PlatformClient.update_state`): 200 applied → ``APPLIED`` (a state change, or a
  same-state update that raised a Job-backed run's ``attempts``); 200 not applied →
  ``UNCHANGED`` (the run already had that state); 409 → ``CONFLICT`` (``code`` is
  ``"conflict"`` — the run is further along or terminal — or ``"pod_mismatch"``);
  412 → ``PRECONDITION_FAILED``; 404 → ``NOT_FOUND``. Except for ``NOT_FOUND`` the result
  carries the run as the server has it now.
* The bearer token is read from ``token_file`` and re-read whenever the file's inode,
  size or mtime changes, and once more after a 401 (a rotated Secret mount). It never
  appears in a log record, an exception message or a ``repr``.
* Each request carries W3C trace context (``opentelemetry.propagate.inject``) and runs in
  a client span; both are no-ops until a tracer provider is configured. Each request's
  duration and status (or transport error) and each update's `Outcome` are reported to
  an optional :class:`PlatformMetrics`.
* ``timeout`` bounds one exchange (connect, send, the whole answer) from the moment one of
  the ``max_connections`` slots is held; waiting for a free slot does not count.
* TLS certificates are verified unless ``verify_tls=False`` (logged as a warning);
  ``ca_file`` adds a CA bundle.

The values and errors the client takes and returns (`Run`, `StateUpdate`, `Outcome`,
`UpdateResult`, `PlatformError` and its subclasses) live in `sniffer.platform_model`, the
token file in `sniffer.platform_token`: import them from there. This module exports only
`PlatformClient` and `PlatformMetrics`.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
from opentelemetry import propagate, trace

from sniffer.nullmetrics import NULL_METRICS
from sniffer.platform_model import (
    STATES,
    Outcome,
    PlatformRejected,
    PlatformUnavailable,
    Run,
    StateUpdate,
    UpdateResult,
    error_code,
    error_text,
    parse_retry_after,
    read_field,
    read_run,
    rejection,
)
from sniffer.platform_token import TokenFile
from sniffer.reauth import retry_once_unauthorized

if TYPE_CHECKING:
    from config.settings import PlatformSettings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

API_PREFIX = "/api/v1"


class PlatformMetrics(Protocol):
    """What the client reports; `sniffer.telemetry` implements it."""

    def request(self, method: str, route: str, status: int | None, error: str | None,
                seconds: float) -> None:
        """One HTTP exchange ended: `status` None with `error` set for a timeout or a
        transport failure."""

    def update(self, outcome: str) -> None:
        """A state update ended with this `Outcome` value."""


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


# -- the client --------------------------------------------------------------------------

class PlatformClient:
    """Talks to one Platform API server. See the module docstring for the guarantees.

    Invariant: ``_session`` is not None iff ``_state`` is OPEN.
    """

    def __init__(
        self,
        base_url: str,
        token_file: Path | str,
        *,
        timeout: float = 10,
        max_connections: int = 100,
        verify_tls: bool = True,
        ca_file: Path | str | None = None,
        metrics: PlatformMetrics | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if base.endswith(API_PREFIX):
            base = base[: -len(API_PREFIX)]
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0 or max_connections < 1:
            raise ValueError("timeout must be > 0 and max_connections >= 1")
        self._base = base
        self._token = TokenFile(Path(token_file))
        self._timeout = timeout
        self._max_connections = max_connections
        self._verify_tls = verify_tls
        self._ca_file = Path(ca_file) if ca_file is not None else None
        self._session: aiohttp.ClientSession | None = None
        self._state = _State.NEW
        # One slot per pooled connection; the timeout starts once a slot is held, so
        # waiting for a free connection never counts against a request's time budget.
        self._slots = asyncio.Semaphore(max_connections)
        self._metrics: PlatformMetrics = metrics or NULL_METRICS
        parts = urlsplit(base)
        self._server: dict[str, str | int] = {
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80)}

    @classmethod
    def from_settings(cls, platform: PlatformSettings, *,
                      metrics: PlatformMetrics | None = None) -> PlatformClient:
        """A client for the server, token file, timeout, pool and TLS of `platform`
        settings."""
        return cls(platform.url, Path(platform.token_file), timeout=platform.timeout_s,
                   max_connections=platform.max_connections, verify_tls=platform.verify_tls,
                   ca_file=Path(platform.ca_file) if platform.ca_file else None,
                   metrics=metrics)

    def __repr__(self) -> str:
        return f"PlatformClient({self._base!r}, state={self._state.value})"

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connections. Idempotent."""
        session, self._session = self._session, None
        self._state = _State.CLOSED
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._state is _State.CLOSED:
            raise RuntimeError("PlatformClient is closed")
        if self._session is None:
            ssl_option: ssl.SSLContext | bool = True
            if not self._verify_tls:
                log.warning("TLS certificate verification is OFF for the platform at %s",
                            self._base)
                ssl_option = False
            elif self._ca_file is not None:
                ssl_option = ssl.create_default_context(cafile=str(self._ca_file))
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=ssl_option)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                json_serialize=json.dumps,
            )
            self._state = _State.OPEN
        return self._session

    async def _request(
        self, method: str, path: str, *, body: Any = None,
        params: list[tuple[str, str]] | None = None, route: str,
    ) -> tuple[int, Any]:
        """One HTTP exchange → ``(status, parsed JSON)``; raises for retryable statuses,
        transport failures and unparsable bodies. ``route`` is the path template (for
        spans and logs)."""
        session = self._open()
        url = self._base + path
        with _tracer.start_as_current_span(
            f"{method} {route}", kind=trace.SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.template": route,
                        **self._server},
        ) as span:
            started = time.perf_counter()

            async def attempt() -> tuple[int, bytes, str | None]:
                headers = {"Authorization": f"Bearer {self._token.current()}",
                           "Accept": "application/json"}
                propagate.inject(headers)
                try:
                    async with self._slots, asyncio.timeout(self._timeout), session.request(
                        method, url, json=body, params=params, headers=headers
                    ) as response:
                        return (response.status, await response.read(),
                                response.headers.get("Retry-After"))
                except TimeoutError:
                    span.set_attribute("error.type", "timeout")
                    self._metrics.request(method, route, None, "timeout",
                                          time.perf_counter() - started)
                    raise PlatformUnavailable(
                        f"{method} {route}: no complete answer within {self._timeout}s"
                    ) from None
                except aiohttp.ClientError as exc:
                    span.set_attribute("error.type", type(exc).__name__)
                    self._metrics.request(method, route, None, type(exc).__name__,
                                          time.perf_counter() - started)
                    raise PlatformUnavailable(
                        f"{method} {route}: {type(exc).__name__}: {exc}"
                    ) from None

            status, raw, retry_after = await retry_once_unauthorized(
                attempt, lambda answer: answer[0] == 401, self._reread_token)
            span.set_attribute("http.response.status_code", status)
            self._metrics.request(method, route, status, None, time.perf_counter() - started)
            log.debug("%s %s -> %d in %.1f ms", method, route, status,
                      (time.perf_counter() - started) * 1000)
        if status in (408, 429) or status >= 500:
            raise PlatformUnavailable(
                f"{method} {route}: {status} {error_text(raw)}",
                retry_after=parse_retry_after(retry_after), status=status,
            )
        try:
            return status, json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise PlatformRejected(
                status, "malformed_response",
                f"{method} {route}: body is not JSON: {raw[:200]!r}",
            ) from None

    async def _reread_token(self) -> bool:
        if not self._token.reread():
            return False  # the same token again would get the same answer
        log.info("platform answered 401; retrying once with the re-read token")
        return True

    # -- API ---------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run | None:
        """The run, or None if the platform has no run with this id."""
        status, data = await self._request(
            "GET", f"{API_PREFIX}/runs/{_quote(run_id)}", route="/api/v1/runs/{id}"
        )
        if status == 404:
            return None
        if status != 200:
            raise rejection(status, data, "GET /api/v1/runs/{id}")
        return read_run(status, data, "GET /api/v1/runs/{id}")

    async def list_runs(self, states: Iterable[str], *, page_size: int = 500,
                        ) -> AsyncIterator[Run]:
        """Every run in one of ``states`` (all runs if empty), in id order, page by page.

        A run that keeps matching during the whole iteration is yielded exactly once. A
        failure mid-way raises; the caller restarts the listing.
        """
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        wanted = [getattr(s, "value", s) for s in states]
        for state in wanted:
            if state not in STATES:
                raise ValueError(f"unknown state {state!r}")
        after: str | None = None
        route = "GET /api/v1/runs"
        while True:
            params = [("state", s) for s in wanted] + [("limit", str(page_size))]
            if after is not None:
                params.append(("after", after))
            status, data = await self._request(
                "GET", f"{API_PREFIX}/runs", params=params, route="/api/v1/runs"
            )
            if status != 200:
                raise rejection(status, data, route)
            runs, after = _run_page(status, data, route)
            for run in runs:
                yield run
            if after is None:
                return

    async def update_state(
        self, update: StateUpdate, *, expected_state: str | None = None,
        expected_version: int | None = None,
    ) -> UpdateResult:
        """Conditionally move ``update.run_id`` to ``update.state`` (one PATCH).

        Caller duty: pass ``expected_state`` and/or ``expected_version`` (the platform
        answers 428, raised as :class:`PlatformRejected`, without one). Repeating an update
        that was applied gives ``UNCHANGED``, so a retry after ``PlatformUnavailable`` is
        always safe.
        """
        body = update.to_json()
        if expected_state is not None:
            body["expected_state"] = getattr(expected_state, "value", expected_state)
        if expected_version is not None:
            body["expected_version"] = expected_version
        route = "PATCH /api/v1/runs/{id}"
        status, data = await self._request(
            "PATCH", f"{API_PREFIX}/runs/{_quote(update.run_id)}", body=body,
            route="/api/v1/runs/{id}",
        )
        result = self._update_result(status, data, route)
        self._metrics.update(result.outcome.value)
        return result

    @staticmethod
    def _update_result(status: int, data: Any, route: str) -> UpdateResult:
        if status == 404:
            return UpdateResult(Outcome.NOT_FOUND, None, "not_found")
        if status == 200:
            run = read_run(status, read_field(status, data, "run", route), route)
            applied = read_field(status, data, "applied", route)
            if not isinstance(applied, bool):
                raise PlatformRejected(status, "malformed_response", f"{route}: applied")
            return UpdateResult(Outcome.APPLIED if applied else Outcome.UNCHANGED, run)
        if status in (409, 412):
            run = read_run(status, read_field(status, data, "run", route), route)
            code = error_code(data) or ("conflict" if status == 409 else "precondition_failed")
            outcome = Outcome.CONFLICT if status == 409 else Outcome.PRECONDITION_FAILED
            return UpdateResult(outcome, run, code)
        raise rejection(status, data, route)

    async def create_run(
        self, run_id: str | None = None, *, kind: str = "job",
        pod_namespace: str | None = None, pod_name: str | None = None,
    ) -> Run:
        """Create a queued run; a duplicate id raises PlatformRejected(409, "already_exists")."""
        body: dict[str, Any] = {"kind": kind}
        for key, value in (("id", run_id), ("pod_namespace", pod_namespace),
                           ("pod_name", pod_name)):
            if value is not None:
                body[key] = value
        route = "POST /api/v1/runs"
        status, data = await self._request(
            "POST", f"{API_PREFIX}/runs", body=body, route="/api/v1/runs"
        )
        if status != 201:
            raise rejection(status, data, route)
        return read_run(status, data, route)


def _quote(run_id: str) -> str:
    if not run_id:
        raise ValueError("run_id is empty")
    return quote(run_id, safe="")


__all__ = ["PlatformClient", "PlatformMetrics"]


def _run_page(status: int, data: Any, route: str) -> tuple[list[Run], str | None]:
    """The runs of one list page and the cursor of the next (None: the last page)."""
    try:
        items = data["items"]
        after = data["next"]
        if not isinstance(items, list) or not (after is None or isinstance(after, str)):
            raise ValueError("items must be a list and next a string or null")
        return [Run.from_json(item) for item in items], after
    except (ValueError, KeyError, TypeError) as exc:
        raise PlatformRejected(status, "malformed_response", f"{route}: {exc}") from None
