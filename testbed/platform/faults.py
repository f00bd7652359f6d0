"""Fault injection for the Platform API: the misbehaviour a real platform shows under load.

Promises:

* Faults apply to ``/api/v1/`` requests only; ``/admin``, ``/healthz`` always answer
  promptly and truthfully, so a test can always turn faults off again.
* The knobs (all off by default; ``PUT /admin/faults`` merges a partial update,
  ``DELETE /admin/faults`` resets them all) act in this order on each request:

  1. ``outage_s``: for this many seconds after it was set, every call answers 503 with a
     ``Retry-After`` of the remaining time (rounded up). Nothing is applied.
  2. ``reset_rate``: this fraction of calls get their TCP connection reset (RST) with no
     response. With ``reset_phase`` ``"before"`` (default) nothing is applied; with
     ``"after"`` the request *is* applied and only the response is lost.
  3. ``latency_ms`` ± ``latency_jitter_ms`` (uniform, never negative): added delay.
  4. ``error_rate``: this fraction of calls answer ``error_status`` (500, 503 or 429) with a
     JSON error and, if ``retry_after_s`` > 0, a ``Retry-After`` header (integer seconds
     when whole, else a decimal such as ``0.25``). Nothing is applied.
  5. ``malformed_rate``: this fraction of calls are applied but their body is replaced by
     ``malformed_body`` (status and headers kept), to test clients' parsers.
  6. ``slow_drip_ms``: the response body is trickled out in pieces over this long.
* :class:`Faults` is the only mutable state; the middleware reads it once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from aiohttp import typedefs, web

from .wire import Invalid, parse_number_fields

API_PREFIX = "/api/v1/"
ERROR_STATUSES = (500, 503, 429)
RESET_PHASES = ("before", "after")

_LIMITS: dict[str, tuple[float, float]] = {
    "latency_ms": (0, 600_000),
    "latency_jitter_ms": (0, 600_000),
    "error_rate": (0, 1),
    "error_status": (0, 599),
    "retry_after_s": (0, 86_400),
    "outage_s": (0, 86_400),
    "slow_drip_ms": (0, 600_000),
    "reset_rate": (0, 1),
    "malformed_rate": (0, 1),
}
_EXTRA = frozenset({"reset_phase", "malformed_body"})


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """One consistent set of knobs (see module docstring)."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    retry_after_s: float = 0.0
    outage_until: float = 0.0  # monotonic deadline; 0 = no outage
    slow_drip_ms: float = 0.0
    reset_rate: float = 0.0
    reset_phase: str = "before"
    malformed_rate: float = 0.0
    malformed_body: str = "{not json"

    def to_json(self, now: float) -> dict[str, Any]:
        data = asdict(self)
        data["outage_s"] = max(0.0, self.outage_until - now)
        del data["outage_until"]
        return data


def merge(config: FaultConfig, raw: Any, now: float) -> FaultConfig:
    """Return ``config`` updated by the partial JSON ``raw``; raise ``Invalid`` naming a field."""
    numbers, extra = parse_number_fields(raw, _LIMITS, _EXTRA)
    changes: dict[str, Any] = {}
    for name, value in numbers.items():
        if name == "outage_s":
            changes["outage_until"] = now + value if value > 0 else 0.0
        elif name == "error_status":
            if value not in ERROR_STATUSES:
                raise Invalid("error_status", "must be one of 500, 503, 429")
            changes[name] = int(value)
        else:
            changes[name] = value
    if "reset_phase" in extra:
        if extra["reset_phase"] not in RESET_PHASES:
            raise Invalid("reset_phase", "must be 'before' or 'after'")
        changes["reset_phase"] = extra["reset_phase"]
    if "malformed_body" in extra:
        if not isinstance(extra["malformed_body"], str):
            raise Invalid("malformed_body", "must be a string")
        changes["malformed_body"] = extra["malformed_body"]
    return replace(config, **changes)


def format_retry_after(seconds: float) -> str:
    if seconds == int(seconds):
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0")


@dataclass
class Faults:
    """The server's current fault configuration plus counters of injected faults."""

    config: FaultConfig = field(default_factory=FaultConfig)
    injected: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic

    def count(self, what: str) -> None:
        self.injected[what] = self.injected.get(what, 0) + 1


RESET_MARK = "fault_reset"


def _reset(request: web.Request) -> web.Response:
    """Abort the connection with an RST so the client sees a reset, not a clean close.

    The returned response is never sent (aiohttp drops writes to an aborted transport);
    ``request[RESET_MARK]`` tells outer middlewares what happened.
    """
    request[RESET_MARK] = True
    transport = request.transport
    if transport is None:
        return web.Response(status=499)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return web.Response(status=499)


def _error(status: int, code: str, message: str, retry_after: float) -> web.Response:
    headers = {"Retry-After": format_retry_after(retry_after)} if retry_after > 0 else None
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


async def _drip(
    request: web.Request, response: web.Response, duration_s: float
) -> web.StreamResponse:
    body = response.body
    data = body if isinstance(body, bytes) else b""
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(data)
    await stream.prepare(request)
    pieces = max(1, min(len(data), 10))
    step = math.ceil(len(data) / pieces) if data else 0
    for i in range(pieces):
        await asyncio.sleep(duration_s / pieces)
        await stream.write(data[i * step:(i + 1) * step])
    await stream.write_eof()
    return stream


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(faults: Faults) -> typedefs.Middleware:
    """Build the aiohttp middleware that injects ``faults`` into ``/api/v1`` calls."""

    @web.middleware
    async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        cfg = faults.config
        rng = faults.rng
        now = faults.clock()
        if cfg.outage_until > now:
            faults.count("outage")
            remaining = math.ceil(cfg.outage_until - now)
            return _error(503, "unavailable", "platform outage (injected)", remaining)
        reset = cfg.reset_rate > 0 and rng.random() < cfg.reset_rate
        if reset and cfg.reset_phase == "before":
            faults.count("reset")
            return _reset(request)
        if cfg.latency_ms > 0 or cfg.latency_jitter_ms > 0:
            jitter = rng.uniform(-cfg.latency_jitter_ms, cfg.latency_jitter_ms)
            await asyncio.sleep(max(0.0, cfg.latency_ms + jitter) / 1000)
        if cfg.error_rate > 0 and rng.random() < cfg.error_rate:
            faults.count("error")
            return _error(cfg.error_status, "injected", "injected error", cfg.retry_after_s)
        response = await handler(request)
        if reset:
            faults.count("reset")
            return _reset(request)
        if not isinstance(response, web.Response):
            return response
        if cfg.malformed_rate > 0 and rng.random() < cfg.malformed_rate:
            faults.count("malformed")
            response.body = cfg.malformed_body.encode("utf-8", "surrogatepass")
        if cfg.slow_drip_ms > 0:
            faults.count("slow_drip")
            return await _drip(request, response, cfg.slow_drip_ms / 1000)
        return response

    return inject_faults
