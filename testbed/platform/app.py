"""HTTP routes of the reference Platform server (the contract is docs/platform-api.yaml).

Promises:

* Each route validates its whole input first (400 naming the field), then makes at most
  one store call, which is one SQLite transaction: nothing is ever half-written.
* Each store decision maps to exactly one status code, in :data:`DECISION_STATUS`.
* Middlewares, outermost first: request statistics → bearer auth → fault injection (API
  paths only) → unknown query parameters refused → route. ``/admin`` and ``/healthz``
  are never subject to faults.
* Every ``/api/v1`` request's arrival time is taken before any injected latency, and that
  is the ``received_at`` the update log records.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import auth, faults
from .rules import Decision
from .store import AlreadyExists, Store
from .wire import (
    Invalid,
    check_query,
    check_run_id,
    now,
    parse_create,
    parse_list_query,
    parse_patch,
)

STORE: web.AppKey[Store] = web.AppKey("store", Store)
FAULTS: web.AppKey[faults.Faults] = web.AppKey("faults", faults.Faults)


class RequestStats:
    """Requests answered, by status code (``"reset"`` for injected connection resets)."""

    def __init__(self) -> None:
        self.by_status: Counter[str] = Counter()


STATS: web.AppKey[RequestStats] = web.AppKey("stats", RequestStats)
RECEIVED_AT = "received_at"

DECISION_STATUS: dict[Decision, int] = {
    Decision.APPLY: 200,
    Decision.ATTEMPTS: 200,
    Decision.NOOP: 200,
    Decision.CONFLICT: 409,
    Decision.POD_MISMATCH: 409,
    Decision.PRECONDITION_REQUIRED: 428,
    Decision.PRECONDITION_FAILED: 412,
}
_APPLIED = frozenset({Decision.APPLY, Decision.ATTEMPTS})
_DECISION_MESSAGE: dict[Decision, str] = {
    Decision.CONFLICT: "state may only move forward and a terminal state never changes",
    Decision.POD_MISMATCH: "the run is bound to a different pod uid",
    Decision.PRECONDITION_REQUIRED: "send expected_state or expected_version",
    Decision.PRECONDITION_FAILED: "the run's state or version is not the expected one",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return _json({"error": {"code": code, "message": message}, **extra}, status)


def _not_found(run_id: str) -> web.Response:
    return _error(404, "not_found", f"no run with id {run_id!r}")


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("body", "must be a JSON document") from None


def _run_id(request: web.Request) -> str:
    return check_run_id("id", request.match_info["run_id"])


_QUERY_PARAMS: dict[str, frozenset[str]] = {
    "GET /api/v1/runs": frozenset({"state", "limit", "after"}),
    "GET /admin/updates": frozenset({"since", "limit"}),
}


# -- middlewares ------------------------------------------------------------------------

@web.middleware
async def _statistics(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[RECEIVED_AT] = now()
    stats = request.app[STATS].by_status
    try:
        response = await handler(request)
    except Invalid as exc:
        response = _json(exc.body(), 400)
    except web.HTTPException as exc:  # unknown route, wrong method, body too large
        response = _error(exc.status, "http_error", exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    stats["reset" if request.get(faults.RESET_MARK) else str(response.status)] += 1
    return response


@web.middleware
async def _known_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse query parameters the route does not define (400 naming the parameter)."""
    if request.query and request.match_info.http_exception is None:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else request.path
        allowed = _QUERY_PARAMS.get(f"{request.method} {template}", frozenset())
        check_query(request.query.keys(), allowed)
    return await handler(request)


# -- /api/v1 --------------------------------------------------------------------------

async def create_run(request: web.Request) -> web.Response:
    body = parse_create(await _body(request))
    try:
        run = request.app[STORE].create_run(
            body.id, body.kind, body.pod_namespace, body.pod_name, request[RECEIVED_AT]
        )
    except AlreadyExists as exc:
        return _error(409, "already_exists", str(exc), run=exc.run)
    return _json(run, 201)


async def get_run(request: web.Request) -> web.Response:
    run_id = _run_id(request)
    run = request.app[STORE].get_run(run_id)
    return _not_found(run_id) if run is None else _json(run)


async def list_runs(request: web.Request) -> web.Response:
    query = parse_list_query(
        request.query.getall("state", []),
        request.query.get("limit"),
        request.query.get("after"),
    )
    items, next_cursor = request.app[STORE].list_runs(query.states, query.after, query.limit)
    return _json({"items": items, "next": next_cursor})


async def patch_run(request: web.Request) -> web.Response:
    run_id = _run_id(request)
    body = parse_patch(await _body(request))
    traceparent = request.headers.get("traceparent")
    outcome = request.app[STORE].patch_run(
        run_id, body, request[RECEIVED_AT], traceparent[:128] if traceparent else None
    )
    if outcome is None:
        return _not_found(run_id)
    status = DECISION_STATUS[outcome.decision]
    if status == 200:
        return _json({"run": outcome.run, "applied": outcome.decision in _APPLIED})
    return _error(
        status, outcome.decision.value, _DECISION_MESSAGE[outcome.decision], run=outcome.run
    )


async def cancel_run(request: web.Request) -> web.Response:
    run_id = _run_id(request)
    run = request.app[STORE].request_cancel(run_id, request[RECEIVED_AT])
    return _not_found(run_id) if run is None else _json(run)


# -- /admin and health ------------------------------------------------------------------

async def get_faults(request: web.Request) -> web.Response:
    state = request.app[FAULTS]
    return _json(state.config.to_json(state.clock()))


async def put_faults(request: web.Request) -> web.Response:
    state = request.app[FAULTS]
    now_mono = state.clock()
    state.config = faults.merge(state.config, await _body(request), now_mono)
    return _json(state.config.to_json(now_mono))


async def delete_faults(request: web.Request) -> web.Response:
    state = request.app[FAULTS]
    state.config = faults.FaultConfig()
    return _json(state.config.to_json(state.clock()))


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(name, "must be an integer") from None
    if not low <= value <= high:
        raise Invalid(name, f"must be between {low} and {high}")
    return value


async def get_updates(request: web.Request) -> web.Response:
    since = _int_param(request, "since", 0, 0, 2**62)
    limit = _int_param(request, "limit", 1000, 1, 10_000)
    store = request.app[STORE]
    items = store.updates(since, limit)
    last = items[-1]["seq"] if items else since
    return _json({"items": items, "last_seq": last, "more": len(items) == limit})


async def get_stats(request: web.Request) -> web.Response:
    store = request.app[STORE]
    return _json(
        {
            "runs_by_state": store.counts_by_state(),
            "requests_by_status": dict(request.app[STATS].by_status),
            "faults_injected": dict(request.app[FAULTS].injected),
            "last_update_seq": store.last_seq(),
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


def build_app(store: Store, token_file: Path, fault_state: faults.Faults | None = None,
              ) -> web.Application:
    """The aiohttp application; the caller owns ``store`` and closes it after the app stops."""
    fault_state = fault_state or faults.Faults()
    app = web.Application(
        middlewares=[
            _statistics,
            auth.middleware(auth.TokenFile(token_file)),
            faults.middleware(fault_state),
            _known_query,
        ],
        client_max_size=1024 * 1024,
    )
    app[STORE] = store
    app[FAULTS] = fault_state
    app[STATS] = RequestStats()
    app.router.add_post("/api/v1/runs", create_run)
    app.router.add_get("/api/v1/runs", list_runs)
    app.router.add_get("/api/v1/runs/{run_id}", get_run)
    app.router.add_patch("/api/v1/runs/{run_id}", patch_run)
    app.router.add_post("/api/v1/runs/{run_id}/cancel", cancel_run)
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_put("/admin/faults", put_faults)
    app.router.add_delete("/admin/faults", delete_faults)
    app.router.add_get("/admin/updates", get_updates)
    app.router.add_get("/admin/stats", get_stats)
    app.router.add_get("/healthz", healthz)
    return app


__all__ = ["DECISION_STATUS", "build_app"]
