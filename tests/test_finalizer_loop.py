"""watch.finalizer_loop: where Sniffer's finalizer belongs, and the loop that puts it there.

* `decide` is pure: unit tests over pod views and acknowledgements, including an
  exhaustive check of the central invariant (no release of a tracked, known, own pod
  before the platform acknowledged a terminal state).
* The loop runs against a real kube-apiserver and the reference platform over HTTP: a
  reflector fills a real `PodStore`, a `Controller` handles the keys, and the finalizer
  patches go through a loopback proxy (tests/fixtures/proxy.py). The proxy has no
  latency knob; `freeze()` stands for an API server slower than any latency (patches
  hang until `thaw()`), while the watch, on its own connection, keeps flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, cast

import pytest

from sniffer.kube import KubeClient
from sniffer.platform import PlatformClient
from sniffer.podview import OUTCOME_FINALIZER, PodView, project
from sniffer.states import StatePolicy, WorkloadState
from testbed.apiserver import ApiServer
from testbed.platform.launcher import AdminError, PlatformServer
from tests.fixtures.proxy import Proxy
from tests.fixtures.watcher import Pods, eventually
from tests.test_reflector import proxied_kubeconfig
from watch.app import drain_in_order
from watch.controller import Controller
from watch.finalizer_loop import Action, FinalizerLoop, decide
from watch.finalizer_patch import Finalizers
from watch.ledger import TERMINAL_UNKNOWN, Acked, RunLedger
from watch.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
)
from watch.reflector import Reflector
from watch.store import PodStore, SettledPod
from watch.workqueue import ShutDown, WorkQueue

NS = "fin"
NOW = 1_800_000_000.0
QUEUED, RUNNING, SUCCEEDED = (Acked(WorkloadState.QUEUED), Acked(WorkloadState.RUNNING),
                              Acked(WorkloadState.SUCCEEDED))


# --- the decision (pure) ---------------------------------------------------------------

def view(phase: str = "Running", *, held: bool = False, run_id: str | None = "run-1",
         deleting: bool = False, uid: str = "uid-p") -> PodView:
    t = "2026-01-01T00:00:00Z"
    state: dict[str, Any] = (
        {"running": {"startedAt": t}} if phase == "Running"
        else {"waiting": {"reason": "ContainerCreating"}} if phase == "Pending"
        else {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": t,
                             "finishedAt": t}})
    labels = {"sniffer.io/kind": "job"} | ({"sniffer.io/run-id": run_id} if run_id else {})
    meta: dict[str, Any] = {"name": "p", "namespace": NS, "uid": uid, "resourceVersion": "7",
                            "creationTimestamp": t, "labels": labels,
                            "finalizers": [OUTCOME_FINALIZER] if held else []}
    if deleting:
        meta |= {"deletionTimestamp": t, "deletionGracePeriodSeconds": 30}
    return project({
        "metadata": meta,
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main"}]},
        "status": {"phase": phase, "startTime": t,
                   "containerStatuses": [{"name": "main", "restartCount": 0,
                                          "ready": phase == "Running", "state": state}]}})


def judge(pod: Any, *, acked: Acked | None = RUNNING, terminal: bool | None = None,
          unknown: bool = False, deleted: bool = False, enabled: bool = True) -> Any:
    if terminal is None:
        terminal = acked is not None and acked.terminal
    return decide(pod, deleted=deleted, acked=acked, terminal_acknowledged=terminal,
                  unknown=unknown, enabled=enabled, now=NOW, policy=StatePolicy())


def test_a_live_tracked_pod_of_an_open_run_gains_the_finalizer() -> None:
    assert judge(view("Running")).action is Action.ADD
    assert judge(view("Pending"), acked=QUEUED).action is Action.ADD


def test_no_add_when_finalizer_mode_is_off_or_the_pod_holds_it_or_is_being_deleted() -> None:
    assert judge(view(), enabled=False).action is Action.NOTHING
    assert judge(view(held=True)).action is Action.NOTHING
    assert judge(view(deleting=True)).action is Action.NOTHING


def test_no_add_for_a_pod_whose_derived_state_is_terminal_it_is_about_to_be_sent() -> None:
    assert judge(view("Succeeded")).action is Action.NOTHING


def test_nothing_for_a_run_whose_state_is_not_known_yet() -> None:
    assert judge(view(), acked=None).action is Action.NOTHING
    assert judge(view(held=True), acked=None).action is Action.NOTHING


def test_release_once_the_platform_acknowledged_a_terminal_state() -> None:
    decision = judge(view("Succeeded", held=True), acked=SUCCEEDED)
    assert (decision.action, decision.why) == (Action.RELEASE, "acknowledged")
    # The seed's rule: not among the open runs at the listing, pod older than it.
    assert judge(view("Succeeded", held=True), acked=TERMINAL_UNKNOWN).action is Action.RELEASE
    assert judge(view("Succeeded", held=True), acked=None, terminal=True).action \
        is Action.RELEASE


def test_a_deleting_pod_is_released_once_acknowledged_and_held_until_then() -> None:
    assert judge(view("Running", held=True, deleting=True), acked=Acked(
        WorkloadState.CANCELLED)).action is Action.RELEASE
    assert judge(view("Running", held=True, deleting=True)).action is Action.NOTHING


def test_untracked_orphaned_and_foreign_pods_are_released() -> None:
    for pod, kw, why in (
            (view(held=True, run_id=None), {}, "untracked"),
            (view(held=True), {"acked": None, "unknown": True}, "orphan"),
            (view(held=True), {"acked": dataclasses.replace(RUNNING, pod_uid="uid-other")},
             "foreign")):
        decision = judge(pod, **kw)
        assert (decision.action, decision.why) == (Action.RELEASE, why)


def test_nothing_to_release_on_a_pod_without_the_finalizer() -> None:
    assert judge(view("Succeeded"), acked=SUCCEEDED).action is Action.NOTHING
    assert judge(view(run_id=None)).action is Action.NOTHING


def test_nothing_for_uncached_keys_tombstones_and_settled_records() -> None:
    held = view("Succeeded", held=True)
    assert judge(None).action is Action.NOTHING
    assert judge(held, acked=SUCCEEDED, deleted=True).action is Action.NOTHING
    record = SettledPod(key=f"{NS}/p", uid="uid-p", rv=7, run_id="run-1", phase="Succeeded",
                        finalizers=(), deletion_timestamp=None, deleted_while_active=False)
    assert judge(record, acked=SUCCEEDED).action is Action.NOTHING


def test_the_finalizer_of_a_known_own_run_never_goes_before_a_terminal_acknowledgement() -> None:
    """The central invariant, over every combination of the decision's inputs."""
    states = [None, *(Acked(s) for s in WorkloadState), TERMINAL_UNKNOWN,
              *(Acked(s, pod_uid="uid-p") for s in WorkloadState),
              *(Acked(s, cancel_requested=True) for s in WorkloadState)]
    pods = [view(phase, held=True, deleting=deleting)
            for phase in ("Pending", "Running", "Succeeded", "Failed")
            for deleting in (False, True)]
    for pod, acked, terminal, enabled in itertools.product(
            pods, states, (False, True), (False, True)):
        if terminal and not (acked is None or acked.terminal):
            continue  # `terminal` is the acknowledgement's terminal flag or the seed's rule
        decision = judge(pod, acked=acked, terminal=terminal, enabled=enabled)
        if decision.action is Action.RELEASE:
            assert terminal, (pod.phase, acked, terminal)


def test_enqueue_skips_pods_that_can_need_no_patch() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for enabled in (False, True):
        loop = FinalizerLoop(store=PodStore((NS,)), queue=queue, knowledge=_Nothing(),
                             finalizers=Finalizers(cast(KubeClient, None), enabled=enabled),
                             policy=StatePolicy(), workers=1, is_leader=lambda: True,
                             metrics=Recorder())
        loop.enqueue(view())
        loop.enqueue(view(deleting=True))
        assert len(queue) == int(enabled), "a live pod may gain the finalizer"
        loop.enqueue(view(held=True, deleting=True))
        assert len(queue) == 1, "a held pod may lose it"
        queue.get_nowait()
        queue.done(f"{NS}/p")


class _Nothing:
    def get(self, run_id: str) -> Acked | None:
        return None

    def terminal_acknowledged(self, pod: PodView) -> bool:
        return False

    def unknown(self, run_id: str) -> bool:
        return False


async def test_drain_in_order_lets_the_first_queues_last_keys_add_work_to_the_next() -> None:
    first: WorkQueue[str] = WorkQueue()
    then: WorkQueue[str] = WorkQueue()
    handled: list[str] = []
    release = asyncio.Event()

    async def work_first() -> None:
        key = await first.get()
        await release.wait()  # in flight when the shutdown begins
        then.add(f"release {key}")
        first.done(key)

    async def work_then() -> None:
        with contextlib.suppress(ShutDown):
            while True:
                key = await then.get()
                handled.append(key)
                then.done(key)

    first.add("p")
    workers = [asyncio.create_task(work_first()), asyncio.create_task(work_then())]
    draining = asyncio.create_task(drain_in_order((first, then), 30))
    await asyncio.sleep(0.05)
    assert not then.shutting_down, "the next queue waits for the first to drain"
    release.set()
    assert await draining
    await asyncio.gather(*workers)
    assert handled == ["release p"]


# --- the loop, against the API server and the platform -----------------------------------

class Recorder:
    """`watch.handler.HandlerMetrics`, keeping the finalizer operations."""

    def __init__(self) -> None:
        self.finalizer_ops: list[str] = []

    def finalizer(self, op: str) -> None:
        self.finalizer_ops.append(op)

    def outcome(self, result: str) -> None:
        pass

    def sent(self, state: str) -> None:
        pass

    def acknowledged(self, state: str, observed_at: float, changed_at: float | None) -> None:
        pass

    def dropped(self, state: str, reason: str) -> None:
        pass

    def orphan(self) -> None:
        pass

    def underivable(self) -> None:
        pass


def _limiter() -> MaxOfRateLimiter[str]:
    return MaxOfRateLimiter(ItemExponentialFailureRateLimiter(base_delay=0.01, max_delay=0.5),
                            BucketRateLimiter(qps=1000, burst=1000))


@dataclasses.dataclass
class Loop:
    controller: Controller
    queue: WorkQueue[str]
    finalizer_queue: WorkQueue[str]
    store: PodStore
    proxy: Proxy
    pods: Pods
    metrics: Recorder
    working: asyncio.Task[None]


@contextlib.asynccontextmanager
async def loop(apiserver: ApiServer, platform: PlatformServer, namespace: str,
               tmp_path: Path, *, is_leader: Callable[[], bool] = lambda: True,
               finalizers: bool = True) -> AsyncIterator[Loop]:
    proxy = Proxy(int(apiserver.url.rsplit(":", 1)[1]))
    await proxy.start()
    patching = await KubeClient.connect(
        kubeconfig=str(proxied_kubeconfig(apiserver, proxy.port, tmp_path / "kubeconfig")))
    watching = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig))
    client = PlatformClient(platform.url, platform.token_file, timeout=30)
    ledger = RunLedger(client, clock=time.time)
    store = PodStore((namespace,), compaction=ledger)
    queue, finalizer_queue = WorkQueue[str](_limiter()), WorkQueue[str](_limiter())
    metrics = Recorder()
    controller = Controller(
        store=store, ledger=ledger, queue=queue, platform=client, pods=watching,
        finalizers=Finalizers(patching, enabled=finalizers), policy=StatePolicy(), workers=8,
        max_retries=1000, is_leader=is_leader, metrics=metrics,
        finalizer_queue=finalizer_queue, finalizer_workers=4)
    reflector = Reflector(watching, store, controller.on_change, namespaces=(namespace,),
                          label_selector="sniffer.io/run-id")
    reflecting = asyncio.create_task(reflector.run(), name="reflector-under-test")
    working = asyncio.create_task(controller.run(), name="controller-under-test")
    try:
        await store.wait_synced()
        yield Loop(controller, queue, finalizer_queue, store, proxy, Pods(watching, namespace),
                   metrics, working)
    finally:
        proxy.thaw()
        queue.shut_down()
        await asyncio.wait_for(working, 60)
        reflecting.cancel()
        await asyncio.gather(reflecting, return_exceptions=True)
        await client.close()
        await patching.close()
        await watching.close()
        await proxy.stop()


def run_state(platform: PlatformServer, run_id: str) -> str | None:
    try:
        run = platform.get_run(run_id)
    except AdminError:  # during an injected outage
        return None
    return None if run is None else run["state"]


async def held(pods: Pods, name: str) -> bool:
    return OUTCOME_FINALIZER in (await pods.finalizers(name) or [])


async def all_held(pods: Pods, names: Iterable[str]) -> bool:
    return all([await held(pods, n) for n in names])


async def none_held(pods: Pods, names: Iterable[str]) -> bool:
    return not any([await held(pods, n) for n in names])


async def quiet_and_released(h: Loop, namespace: str, names: Iterable[str]) -> bool:
    """No finalizer patch in flight or queued, and each pod cached as a settled record at
    the resourceVersion the API server has, carrying no finalizer of ours."""
    if h.controller.finalizing.longest_busy_s() > 0 or len(h.finalizer_queue) > 0:
        return False
    for name in names:
        live = await h.pods.get(name)
        cached = h.store.get(f"{namespace}/{name}")
        if live is None or not isinstance(cached, SettledPod):
            return False
        meta = live["metadata"]
        if (OUTCOME_FINALIZER in (meta.get("finalizers") or [])
                or cached.resource_version != meta["resourceVersion"]):
            return False
    return True


async def all_gone(pods: Pods, names: Iterable[str]) -> bool:
    return all([await pods.get(n) is None for n in names])


async def start_runs(platform: PlatformServer, pods: Pods, count: int) -> dict[str, str]:
    ids = {f"f-{i}": f"run-{uuid.uuid4().hex[:16]}" for i in range(count)}
    for name, run_id in ids.items():
        platform.create_run(run_id, pod_namespace=pods.namespace, pod_name=name)
        await pods.create(name, run_id)
    return ids


class _Running:
    """`watch.finalizer_loop.RunKnowledge`: every run is open (running)."""

    def get(self, run_id: str) -> Acked | None:
        return RUNNING

    def terminal_acknowledged(self, pod: PodView) -> bool:
        return False

    def unknown(self, run_id: str) -> bool:
        return False


async def test_a_patch_cancelled_mid_call_leaves_its_key_to_be_handled_again(
        apiserver: ApiServer, namespace: str, tmp_path: Path) -> None:
    """A finalizer worker cancelled while its patch hangs (shutdown past the drain
    deadline) made no patch: the key is queued again, not recorded as done."""
    proxy = Proxy(int(apiserver.url.rsplit(":", 1)[1]))
    await proxy.start()
    patching = await KubeClient.connect(
        kubeconfig=str(proxied_kubeconfig(apiserver, proxy.port, tmp_path / "kubeconfig")))
    store, queue = PodStore((namespace,)), WorkQueue[str](_limiter())
    finalizing = FinalizerLoop(
        store=store, queue=queue, knowledge=_Running(),
        finalizers=Finalizers(patching, enabled=True), policy=StatePolicy(), workers=1,
        is_leader=lambda: True, metrics=Recorder())
    pods = Pods(patching, namespace)
    working = asyncio.create_task(finalizing.run(), name="finalizer-loop-under-test")
    try:
        created = await pods.create("p", f"run-{uuid.uuid4().hex[:16]}")
        pod = project(created)
        assert store.upsert(pod)
        proxy.freeze()  # the add patch hangs
        finalizing.enqueue(pod)
        await eventually(lambda: finalizing.longest_busy_s() > 0)
        working.cancel()
        with pytest.raises(asyncio.CancelledError):
            await working
        assert len(queue) == 1, "the key whose patch never happened is handed out again"
    finally:
        queue.shut_down()
        proxy.thaw()
        await patching.close()
        await proxy.stop()


async def test_a_slow_api_server_delays_finalizer_patches_not_platform_updates(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        tmp_path: Path) -> None:
    async with loop(apiserver, platform, namespace, tmp_path) as h:
        h.proxy.freeze()  # every finalizer patch from now on hangs
        ids = await start_runs(platform, h.pods, 12)
        await asyncio.gather(*(h.pods.running(n) for n in ids))
        await eventually(lambda: all(run_state(platform, r) == "running"
                                     for r in ids.values()))
        await asyncio.gather(*(h.pods.succeeded(n) for n in ids))
        await eventually(lambda: all(run_state(platform, r) == "succeeded"
                                     for r in ids.values()))
        # Every outcome is recorded while not one finalizer patch has gone through.
        assert h.controller.finalizing.longest_busy_s() > 0, "patches are in flight"
        assert await none_held(h.pods, ids)
        assert h.metrics.finalizer_ops == []
        h.proxy.thaw()
        # The adds in flight since the pods were created land late; the loop, level-
        # triggered on the cache, releases them again. Done means quiet: no patch in
        # flight, and the cache holds every pod as a settled record at the version the
        # API server has (so no event of ours is still to come), with no finalizer left.
        await eventually(lambda: h.metrics.finalizer_ops.count("added") > 0)
        await eventually(lambda: quiet_and_released(h, namespace, ids))
        # A release may be sent twice (the cache lags our own write; the patch is an
        # idempotent no-op then), so the counts need not be equal: every add is undone.
        ops = h.metrics.finalizer_ops
        assert ops.count("removed") >= ops.count("added") > 0


async def test_a_release_never_happens_before_the_platform_acknowledged(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        tmp_path: Path) -> None:
    async with loop(apiserver, platform, namespace, tmp_path) as h:
        ids = await start_runs(platform, h.pods, 4)
        await eventually(lambda: all_held(h.pods, ids))
        await asyncio.gather(*(h.pods.running(n) for n in ids))
        await eventually(lambda: all(run_state(platform, r) == "running"
                                     for r in ids.values()))
        violations: list[str] = []

        async def watch_order() -> None:
            # Seeing the finalizer gone, the platform must already have the outcome.
            while True:
                for name, run_id in ids.items():
                    if not await held(h.pods, name) and run_state(platform, run_id) != \
                            "succeeded":
                        violations.append(name)
                await asyncio.sleep(0.02)

        checking = asyncio.create_task(watch_order(), name="order-check")
        try:
            errors = platform.stats()["requests_by_status"].get("503", 0)
            platform.set_faults(error_rate=1.0, error_status=503)
            await asyncio.gather(*(h.pods.succeeded(n) for n in ids))
            await eventually(lambda: platform.stats()["requests_by_status"].get("503", 0)
                             >= errors + 5 * len(ids))  # the handler keeps retrying
            assert await all_held(h.pods, ids), "released before the outcome"
            platform.set_faults(error_rate=0.0)
            await eventually(lambda: all(run_state(platform, r) == "succeeded"
                                         for r in ids.values()))
            await eventually(lambda: none_held(h.pods, ids))
        finally:
            checking.cancel()
            await asyncio.gather(checking, return_exceptions=True)
        assert violations == []
        # Released: the pods can go for good.
        await asyncio.gather(*(h.pods.delete(n, grace_s=0) for n in ids))
        await eventually(lambda: all_gone(h.pods, ids))


async def test_shutdown_drains_the_releases_the_last_acknowledgements_enqueued(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        tmp_path: Path) -> None:
    async with loop(apiserver, platform, namespace, tmp_path) as h:
        ids = await start_runs(platform, h.pods, 6)
        await eventually(lambda: all_held(h.pods, ids))
        await asyncio.gather(*(h.pods.running(n) for n in ids))
        await eventually(lambda: all(run_state(platform, r) == "running"
                                     for r in ids.values()))
        platform.set_faults(latency_ms=3000)
        await asyncio.gather(*(h.pods.succeeded(n) for n in ids))
        # Every terminal update is in flight at the platform when the shutdown begins.
        await eventually(lambda: h.controller.pool.busy == len(ids))
        assert await all_held(h.pods, ids)
        assert await drain_in_order((h.queue, h.finalizer_queue), 30)
        await asyncio.wait_for(h.working, 30)
        assert all(run_state(platform, r) == "succeeded" for r in ids.values())
        assert await none_held(h.pods, ids), "a release was left behind"


async def test_a_replica_that_does_not_lead_patches_no_finalizer(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        tmp_path: Path) -> None:
    leading = False
    async with loop(apiserver, platform, namespace, tmp_path,
                    is_leader=lambda: leading) as h:
        ids = await start_runs(platform, h.pods, 2)
        keys = [f"{namespace}/{n}" for n in ids]
        await eventually(lambda: all(h.finalizer_queue.num_requeues(k) >= 3 for k in keys))
        assert await none_held(h.pods, ids)
        leading = True
        await eventually(lambda: all_held(h.pods, ids))


@pytest.mark.parametrize("finalizers", [True, False])
async def test_a_pod_whose_run_the_platform_does_not_know_loses_a_leftover_finalizer(
        apiserver: ApiServer, platform: PlatformServer, namespace: str, tmp_path: Path,
        finalizers: bool) -> None:
    async with loop(apiserver, platform, namespace, tmp_path, finalizers=finalizers) as h:
        await h.pods.create("orphan", f"run-{uuid.uuid4().hex[:16]}")  # no such run
        await h.pods.kube.patch_pod(namespace, "orphan", {"metadata": {
            "finalizers": [OUTCOME_FINALIZER]}})
        await eventually(lambda: h.metrics.finalizer_ops == ["removed"])
        assert not await held(h.pods, "orphan")
        orphan = h.store.get(f"{namespace}/orphan")
        assert orphan is not None and orphan.run_id is not None
        assert h.controller.ledger.unknown(orphan.run_id)
