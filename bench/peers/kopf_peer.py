"""Benchmark peer: Sniffer's job written as a kopf operator, the common Python choice.

Run with ``kopf run --standalone --namespace NS bench/peers/kopf_peer.py`` (KUBECONFIG set).
One `@kopf.on.event` handler for pods labelled ``sniffer.io/run-id``: kopf lists, watches
and runs one worker per object (objects in parallel, each one's events in order). The
handler derives the state the simple way (Pending → queued, Running → running,
Succeeded/Failed with the main container's reason and exit code) and PATCHes the run with
the state it last saw acknowledged as `expected_state` (initially "queued"). Event handlers
are not retried by kopf; an error is logged and the change waits for the pod's next event.
A 412 answer carries the run's state; the update is sent once more from it.
kopf's defaults are kept except that it posts no Kubernetes Events and stores no state on
the pods (an event handler needs neither).

Environment: PEER_PLATFORM_URL, PEER_PLATFORM_TOKEN_FILE.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import kopf

RUN_ID_LABEL = "sniffer.io/run-id"
PHASES = {"Pending": "queued", "Running": "running", "Succeeded": "succeeded",
          "Failed": "failed"}
_acked: dict[str, str] = {}
_http: dict[str, Any] = {}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False
    with open(os.environ["PEER_PLATFORM_TOKEN_FILE"]) as f:  # noqa: ASYNC230 - once, at start
        token = f.read().strip()
    _http["base"] = os.environ["PEER_PLATFORM_URL"].rstrip("/")
    _http["session"] = aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {token}"},
        connector=aiohttp.TCPConnector(limit=100),
        timeout=aiohttp.ClientTimeout(total=10))


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    session = _http.pop("session", None)
    if session is not None:
        await session.close()


def derive(body: Any) -> dict[str, Any] | None:
    run_id = (body.get("metadata", {}).get("labels") or {}).get(RUN_ID_LABEL)
    status = body.get("status") or {}
    state = PHASES.get(status.get("phase") or "")
    if not run_id or state is None:
        return None
    update: dict[str, Any] = {"run_id": run_id, "state": state}
    if state in ("succeeded", "failed"):
        if status.get("reason"):
            update["reason"] = status["reason"]
        main = body["spec"]["containers"][0]["name"]
        for cs in status.get("containerStatuses") or ():
            terminated = (cs.get("state") or {}).get("terminated")
            if cs.get("name") == main and terminated:
                update["exit_code"] = terminated.get("exitCode")
                update.setdefault("reason", terminated.get("reason"))
    return update


@kopf.on.event("", "v1", "pods", labels={RUN_ID_LABEL: kopf.PRESENT})
async def on_pod(event: dict[str, Any], body: Any, logger: Any, **_: Any) -> None:
    if event.get("type") == "DELETED":
        return
    update = derive(body)
    if update is None:
        return
    run_id = update.pop("run_id")
    expected = _acked.get(run_id, "queued")
    if expected == update["state"]:
        return
    session: aiohttp.ClientSession = _http["session"]
    for _attempt in range(2):
        async with session.patch(f"{_http['base']}/api/v1/runs/{run_id}",
                                 json={**update, "expected_state": expected}) as response:
            data = await response.json(content_type=None)
        if not (isinstance(data, dict) and isinstance(data.get("run"), dict)):
            logger.warning("run %s: %s %s", run_id, response.status, data)
            return
        _acked[run_id] = current = data["run"]["state"]
        # A failed precondition teaches the run's state: send once more from there.
        if response.status != 412 or current == update["state"]:
            return
        expected = current
