"""watch.controller: retries and drops, against the reference platform over HTTP.

The work queue runs on injected timers (`FakeTimers`), so a Retry-After of 30 s passes
when the test says so; the platform's outage is switched on and off through its admin
API. Pods come straight from a `PodStore` (no Kubernetes: finalizer mode is off and the
pods carry no finalizer, so the handler never patches one). The store's compaction
policy is the controller's run ledger, as watch.app wires them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from sniffer.kube import KubeClient
from sniffer.platform import PlatformClient
from sniffer.podview import PodView, project
from sniffer.states import StatePolicy
from testbed.platform.launcher import PlatformServer
from tests.fixtures.timers import FakeTimers
from tests.fixtures.watcher import eventually
from tests.test_workqueue import Limiter
from watch.controller import Controller
from watch.finalizer_patch import Finalizers
from watch.ledger import RunLedger
from watch.store import PodStore, SettledPod
from watch.workqueue import WorkQueue

NS = "ctl"


def pod(run_id: str, rv: int, phase: str, name: str = "busy", ns: str = NS) -> PodView:
    now = "2026-01-01T00:00:00Z"
    state: dict[str, Any] = (
        {"running": {"startedAt": now}} if phase == "Running"
        else {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now,
                             "finishedAt": now}})
    return project({
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}",
                     "resourceVersion": str(rv), "creationTimestamp": now,
                     "labels": {"sniffer.io/run-id": run_id, "sniffer.io/kind": "job"},
                     # other controllers keep touching a finished pod
                     "annotations": {"example.com/seen": str(rv)}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main"}]},
        "status": {"phase": phase, "startTime": now,
                   "containerStatuses": [{"name": "main", "restartCount": 0,
                                          "ready": phase == "Running", "state": state}]}})


class Switch:
    """The store's compaction policy: the run ledger, unless a test judges for it."""

    def __init__(self, ledger: RunLedger) -> None:
        self.ledger = ledger
        self.judge: Any = ledger

    def terminal_acknowledged(self, pod: PodView) -> bool:
        return bool(self.judge.terminal_acknowledged(pod))


class Harness:
    def __init__(self, platform: PlatformServer, client: PlatformClient,
                 max_retries: int, clock: Callable[[], float] = time.time) -> None:
        self.timers = FakeTimers()
        self.compaction = Switch(RunLedger(client, clock=clock))
        self.store = PodStore((NS,), compaction=self.compaction)
        self.queue: WorkQueue[str] = WorkQueue(Limiter(delay=1.0), timers=self.timers)
        self.platform = platform
        self.controller = Controller(
            store=self.store, ledger=self.compaction.ledger, queue=self.queue,
            platform=client,
            pods=cast(KubeClient, None),  # no rule of the default policy fires here
            finalizers=Finalizers(cast(KubeClient, None), enabled=False),
            policy=StatePolicy(), workers=2, max_retries=max_retries, clock=clock)

    def change(self, view: PodView) -> None:
        """What the reflector does for a watch event."""
        assert self.store.upsert(view)
        self.controller.on_change(view.key)

    async def idle(self, handled: int) -> None:
        await eventually(lambda: self.controller.handled == handled
                         and self.controller.longest_busy_s() == 0)

    def update_attempts(self) -> int:
        return sum(1 for _ in self.platform.updates())


@contextlib.asynccontextmanager
async def running(platform: PlatformServer, *, max_retries: int = 12
                  ) -> AsyncIterator[Harness]:
    client = PlatformClient(platform.url, platform.token_file, timeout=5)
    h = Harness(platform, client, max_retries)
    task = asyncio.create_task(h.controller.run(), name="controller-under-test")
    try:
        await eventually(lambda: h.controller.running)
        yield h
    finally:
        h.queue.shut_down()
        await asyncio.wait_for(task, 30)
        await client.close()


def new_run_id() -> str:
    return f"ctl-{uuid.uuid4().hex[:16]}"  # a label value: at most 63 bytes


def run_state(platform: PlatformServer, run_id: str) -> str | None:
    return (platform.get_run(run_id) or {}).get("state")


async def test_a_busy_pod_waits_out_the_retry_after_and_its_change_is_not_dropped(
        platform: PlatformServer) -> None:
    run_id = new_run_id()
    platform.create_run(run_id, pod_namespace=NS, pod_name="busy")
    async with running(platform) as h:
        h.change(pod(run_id, 1, "Running"))
        await h.idle(1)
        assert run_state(platform, run_id) == "running"
        requests = platform.stats()["requests_by_status"].get("503", 0)
        platform.set_faults(outage_s=30)
        h.change(pod(run_id, 2, "Succeeded"))
        await h.idle(2)  # 503 with Retry-After: 30
        assert platform.stats()["requests_by_status"].get("503", 0) == requests + 1
        for rv in range(3, 28):  # every update of the busy pod adds its key again
            h.change(pod(run_id, rv, "Succeeded"))
            assert len(h.queue) == 0, "handled again before the Retry-After passed"
            h.timers.advance(1)
        assert h.controller.handled == 2
        assert platform.stats()["requests_by_status"].get("503", 0) == requests + 1
        platform.set_faults(outage_s=0)
        h.timers.advance(10)  # past the Retry-After: the retry, with the latest view
        await h.idle(3)
        assert run_state(platform, run_id) == "succeeded"
        assert h.controller.dropped == 0
        assert h.queue.num_requeues(f"{NS}/busy") == 0  # forgotten on success


async def test_a_change_failing_its_last_allowed_attempt_is_dropped_then_handled_afresh(
        platform: PlatformServer) -> None:
    """`dropped` counts a change given up with no retry pending; the next change of the
    pod is handled from its latest view."""
    run_id = new_run_id()
    platform.create_run(run_id, pod_namespace=NS, pod_name="busy")
    async with running(platform, max_retries=2) as h:
        platform.set_faults(error_rate=1.0, error_status=503)
        h.change(pod(run_id, 1, "Running"))
        await h.idle(1)
        for attempt in (2, 3):
            h.change(pod(run_id, attempt, "Running"))  # coalesces into the retry
            assert len(h.queue) == 0
            h.timers.advance(1)
            await h.idle(attempt)
        assert h.controller.dropped == 1
        assert not h.queue._delays._waiting, "a dropped change has no retry pending"
        platform.set_faults(error_rate=0.0)
        h.change(pod(run_id, 4, "Succeeded"))
        await h.idle(4)
        assert run_state(platform, run_id) == "succeeded"
        assert h.controller.dropped == 1


async def test_a_change_whose_write_was_cancelled_stays_pending(
        platform: PlatformServer) -> None:
    """Shutdown past the drain deadline cancels a handler mid-write: the change was never
    written, so its freshness clock keeps running and it is queued again."""
    run_id = new_run_id()
    platform.create_run(run_id, pod_namespace=NS, pod_name="busy")
    now = [1_000.0]
    hang_s = 60  # the write must still be in flight when the shutdown cancels it
    client = PlatformClient(platform.url, platform.token_file, timeout=hang_s)
    h = Harness(platform, client, max_retries=3, clock=lambda: now[0])
    task = asyncio.create_task(h.controller.run(), name="controller-under-test")
    try:
        await eventually(lambda: h.controller.running)
        # Every write hangs, and would be refused if it ever arrived.
        platform.set_faults(latency_ms=hang_s * 1000, error_rate=1.0, error_status=503)
        h.change(pod(run_id, 1, "Running"))
        await eventually(lambda: h.controller.longest_busy_s() > 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        now[0] += 5
        assert h.controller.oldest_unhandled_age() == 5.0, "the change's clock was stopped"
        assert len(h.queue) == 1, "the unwritten change is handed out again"
        platform.clear_faults()  # the hung write itself still ends refused
        assert run_state(platform, run_id) == "queued"
    finally:
        h.queue.shut_down()
        await client.close()


# --- settled pods (watch.store's compact records) ---------------------------------------


class CountingClient(PlatformClient):
    """Counts the per-run reads and writes the controller makes."""

    calls = 0

    async def get_run(self, run_id: str) -> Any:
        self.calls += 1
        return await super().get_run(run_id)

    async def update_state(self, update: Any, **kw: Any) -> Any:
        self.calls += 1
        return await super().update_state(update, **kw)


def finish_run(platform: PlatformServer, run_id: str, state: str) -> None:
    for expected, to in (("queued", "running"), ("running", state)):
        status, _ = platform.patch_run(run_id, state=to, expected_state=expected)
        assert status == 200


async def test_a_pod_acknowledged_terminal_is_compacted_and_its_later_versions_send_nothing(
        platform: PlatformServer) -> None:
    run_id = new_run_id()
    platform.create_run(run_id, pod_namespace=NS, pod_name="busy")
    async with running(platform) as h:
        h.change(pod(run_id, 1, "Running"))
        h.change(pod(run_id, 2, "Succeeded"))
        await eventually(lambda: run_state(platform, run_id) == "succeeded")
        await eventually(lambda: isinstance(h.store.get(f"{NS}/busy"), SettledPod))
        handled, sent = h.controller.handled, h.update_attempts()
        h.change(pod(run_id, 3, "Succeeded"))  # another controller touched the pod
        assert isinstance(h.store.get(f"{NS}/busy"), SettledPod), "judged as it arrived"
        await h.idle(handled + 1)
        h.store.delete(pod(run_id, 4, "Succeeded"), now=1.0)
        h.controller.on_change(f"{NS}/busy")
        await h.idle(handled + 2)
        assert h.store.get(f"{NS}/busy") is None, "the tombstone was handled"
        assert h.controller.acked_runs == 0
        assert h.update_attempts() == sent


async def test_a_new_leader_treats_cached_records_as_acknowledged(
        platform: PlatformServer) -> None:
    """A store holding records (as a long-lived cache would) under a controller with no
    acknowledgements of its own: not a single read or write for those pods."""
    ids = [new_run_id() for _ in range(5)]
    client = CountingClient(platform.url, platform.token_file, timeout=5)
    h = Harness(platform, client, max_retries=3)
    h.compaction.judge = _AllTerminal()  # as an earlier leader's ledger judged them
    for i, run_id in enumerate(ids):
        platform.create_run(run_id, pod_namespace=NS, pod_name=f"p{i}")
        finish_run(platform, run_id, "succeeded")
        h.store.upsert(pod(run_id, 10 + i, "Succeeded", name=f"p{i}"))
    h.compaction.judge = h.compaction.ledger
    assert h.store.settled == len(ids)
    updates = h.update_attempts()
    task = asyncio.create_task(h.controller.run(), name="controller-under-test")
    try:
        await h.idle(len(ids))
        assert client.calls == 0, "no run read or written"
        assert h.update_attempts() == updates
    finally:
        h.queue.shut_down()
        await asyncio.wait_for(task, 30)
        await client.close()


class _AllTerminal:
    def terminal_acknowledged(self, pod: PodView) -> bool:
        return True


async def test_the_seed_settles_old_finished_pods_of_closed_runs_and_not_open_ones(
        platform: PlatformServer) -> None:
    closed, open_ = new_run_id(), new_run_id()
    for run_id, name in ((closed, "closed"), (open_, "open")):
        platform.create_run(run_id, pod_namespace=NS, pod_name=name)
    finish_run(platform, closed, "failed")
    client = PlatformClient(platform.url, platform.token_file, timeout=5)
    h = Harness(platform, client, max_retries=3)
    try:
        await h.controller.seed()  # as watch.app does before the first LIST
        h.store.replace(NS, [pod(closed, 1, "Succeeded", name="closed"),
                             pod(open_, 2, "Succeeded", name="open")], now=0.0)
        assert isinstance(h.store.get(f"{NS}/closed"), SettledPod)
        assert isinstance(h.store.get(f"{NS}/open"), PodView)
    finally:
        await client.close()
