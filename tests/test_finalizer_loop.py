"""watch.finalizer_loop: the loop that puts Sniffer's finalizer where it belongs.

* The decision itself (`decide`, pure) is tested in tests/test_finalizer_decision.py,
  whose `view` builds the pods the enqueue test uses here.
* The loop runs against a real kube-apiserver and the reference platform over HTTP: a
  reflector fills a real `PodStore`, a `Controller` handles the keys, and the finalizer
  patches go through a loopback proxy (tests/fixtures/proxy.py). The proxy has no
  latency knob; `freeze()` stands for an API server slower than any latency (patches
  hang until `thaw()`), while the watch, on its own connection, keeps flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import cast

import pytest

from sniffer.kube import KubeClient
from sniffer.podview import OUTCOME_FINALIZER, PodView, project
from sniffer.states import StatePolicy
from testbed.apiserver import ApiServer
from testbed.platform.launcher import AdminError, PlatformServer
from tests.fixtures.controllerbed import Bed, controller_bed
from tests.fixtures.metrics import Recorder
from tests.fixtures.proxy import Proxy, proxied_kubeconfig
from tests.fixtures.watcher import Pods, eventually
from tests.test_finalizer_decision import RUNNING, view
from watch.app import drain_in_order
from watch.finalizer_loop import FinalizerLoop
from watch.finalizer_patch import Finalizers
from watch.ledger import Acked
from watch.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
)
from watch.store import PodStore, SettledPod
from watch.workqueue import ShutDown, WorkQueue

NS = "fin"


# --- enqueueing and the shutdown order -------------------------------------------------

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

def _limiter() -> MaxOfRateLimiter[str]:
    return MaxOfRateLimiter(ItemExponentialFailureRateLimiter(base_delay=0.01, max_delay=0.5),
                            BucketRateLimiter(qps=1000, burst=1000))


@contextlib.asynccontextmanager
async def loop(apiserver: ApiServer, platform: PlatformServer, namespace: str,
               tmp_path: Path, *, is_leader: Callable[[], bool] = lambda: True,
               finalizers: bool = True) -> AsyncIterator[Bed[Recorder]]:
    """The controller with its finalizer patches behind the proxy (the watch direct)."""
    async with controller_bed(apiserver, platform, namespace, tmp_path, proxied="patches",
                              limiter=_limiter, metrics=Recorder(), finalizers=finalizers,
                              is_leader=is_leader) as bed:
        yield bed


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


async def quiet_and_released(h: Bed[Recorder], namespace: str,
                             names: Iterable[str]) -> bool:
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
        assert orphan is not None
        assert orphan.run_id is not None
        assert h.controller.ledger.unknown(orphan.run_id)
