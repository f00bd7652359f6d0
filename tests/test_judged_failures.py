"""A failure the state rules judge for a live pod is sent only from the pod's latest view.

A stuck-Pending rule fires on the clock, from whatever the cache holds. When the watch lags
(here: frozen in a loopback proxy while the pod starts on the API server), the cached
view is older than the pod, and a failure sent from it could never be undone. The
controller confirms such a failure with a quorum read first. Real kube-apiserver, the
reference platform over HTTP; the reflector watches through the proxy, the confirming
read goes direct.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from sniffer.states import StatePolicy
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from tests.fixtures.controllerbed import Bed, controller_bed
from tests.fixtures.metrics import Recorder
from tests.fixtures.watcher import eventually
from tests.test_workqueue import Limiter

PENDING_LIMIT_S = 2.0


class Outcomes(Recorder):
    """Keeps the outcome labels the controller reports."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[str] = []

    def outcome(self, result: str) -> None:
        self.outcomes.append(result)


@contextlib.asynccontextmanager
async def watching(apiserver: ApiServer, platform: PlatformServer, namespace: str,
                   tmp_path: Path) -> AsyncIterator[Bed[Outcomes]]:
    """The controller with its watch behind the proxy (reads and patches direct)."""
    async with controller_bed(apiserver, platform, namespace, tmp_path, proxied="watch",
                              limiter=lambda: Limiter(delay=0.05), metrics=Outcomes(),
                              policy=StatePolicy(pending_failure_after_s=PENDING_LIMIT_S),
                              finalizers=False, workers=2) as bed:
        yield bed


def states_sent(platform: PlatformServer, run_id: str) -> list[str]:
    return [u["to_state"] for u in platform.updates() if u["run_id"] == run_id]


def run_state(platform: PlatformServer, run_id: str) -> str | None:
    return (platform.get_run(run_id) or {}).get("state")


async def test_a_pod_that_started_while_the_watch_lagged_is_not_failed_as_stuck_pending(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        tmp_path: Path) -> None:
    run_id, name = f"judged-{uuid.uuid4().hex[:12]}", "starts-late"
    platform.create_run(run_id, pod_namespace=namespace, pod_name=name)
    async with watching(apiserver, platform, namespace, tmp_path) as bed:
        created = await bed.pods.create(name, run_id)
        key = f"{namespace}/{name}"
        await eventually(lambda: (cached := bed.store.get(key)) is not None
                         and cached.resource_version == created["metadata"]["resourceVersion"])
        bed.proxy.freeze()  # the watch stalls: the cache keeps the Pending view
        await bed.pods.running(name)
        # The pending rule fires within PENDING_LIMIT_S of creation; the controller either
        # sends the failure (the defect) or holds it back with a retry (the cache is behind).
        await eventually(lambda: "retry" in bed.metrics.outcomes
                         or run_state(platform, run_id) == "failed")
        assert run_state(platform, run_id) == "queued"
        bed.proxy.thaw()  # the watch delivers the Running view
        await eventually(lambda: run_state(platform, run_id) == "running")
    assert "failed" not in states_sent(platform, run_id)


async def test_a_pod_pending_past_the_limit_on_the_api_server_too_is_failed(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        tmp_path: Path) -> None:
    run_id, name = f"judged-{uuid.uuid4().hex[:12]}", "stuck"
    platform.create_run(run_id, pod_namespace=namespace, pod_name=name)
    async with watching(apiserver, platform, namespace, tmp_path) as bed:
        await bed.pods.create(name, run_id)
        await eventually(lambda: run_state(platform, run_id) == "failed")
    run = platform.get_run(run_id) or {}
    assert run["reason"] == "Scheduling"  # no status yet: the kubelet never wrote one
    assert states_sent(platform, run_id) == ["failed"]
