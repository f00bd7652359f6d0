"""Minimal reproductions of what the fault matrix found, on the real API server.

Each test plays one pod the way the simulator's kubelet does and judges the object the
API server ends up holding, as a watcher does when its first view of the pod comes after
the pod was stopped: after a half-open stream, a restart, or any lag (the work queue
coalesces a key's updates, so the handler may only ever see the last one). That view is
what the finalizer preserves, so Sniffer must derive the pod's real outcome from it.

The kubelet ends a graceful deletion with a grace-0 DELETE, which moves
``deletionTimestamp`` to that moment and ``deletionGracePeriodSeconds`` to 0: from then on
the object no longer says when the deletion was requested.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sniffer.kube import KubeClient
from sniffer.kubedecode import Gone, KubeError
from sniffer.podview import CANCEL_ANNOTATION, OUTCOME_FINALIZER, PodView, project
from sniffer.states import Derived, StatePolicy, derive
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from testbed.simulator.config import SimConfig
from testbed.simulator.kubeapi import PodApi
from testbed.simulator.kubelet import Kubelet
from testbed.simulator.lifecycles import Kind, Shape
from testbed.simulator.workloads import draw_plans, new_traceparent, pod_manifest
from tests.fixtures.watcher import Pods, eventually, running_watcher, settings_for, watcher_env
from tests.reliability.servers import free_port
from watch.app import Watcher
from watch.leader import LeaderElector
from watch.store import PodStore

# The kubelet reports the containers stopped, then deletes the pod for good this much
# later (its status manager and the API round trips; seconds on a busy node).
FINAL_DELETE_AFTER_S = 1.5


async def stopped_pod(kube: KubeClient, namespace: str, lifecycle: str, kind: Kind, *,
                      statuses: tuple[tuple[Shape, int], ...], cancel: bool = False,
                      preempt: bool = False, finalizer: bool = True,
                      seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Create the pod (holding Sniffer's finalizer, as the watcher would have added it),
    write `statuses`, then delete it gracefully and let the kubelet stop it. Returns the
    object as the API server holds it at the end; `seen` collects every version (what a
    watch replays)."""
    seen = [] if seen is None else seen
    config = SimConfig(jobs=1, mix={lifecycle: 1}, kinds={kind: 1}, namespace=namespace,
                       run_prefix=f"find-{lifecycle}")
    plan = draw_plans(config, 1, config.run_prefix or "")[0]
    api = PodApi(kube, asyncio.Semaphore(4))
    kubelet = Kubelet(api, namespace)
    manifest = pod_manifest(plan, new_traceparent())
    if finalizer:
        manifest["metadata"]["finalizers"] = [OUTCOME_FINALIZER]
    pod = _obj((await api.create_pod(manifest)).obj, seen)
    for shape, restarts in statuses:
        pod = _obj((await kubelet.apply(pod, shape, restarts=restarts)).obj, seen)
    if cancel:
        pod = _obj((await api.annotate(namespace, plan.pod_name,
                                       {CANCEL_ANNOTATION: "true"})).obj, seen)
    if preempt:
        pod = _obj((await kubelet.apply(pod, Shape.DISRUPTION_TARGET)).obj, seen)
    pod = _obj((await api.delete(namespace, plan.pod_name, grace_s=30)).obj, seen)
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 30
    pod = _obj((await kubelet.apply(pod, Shape.TERMINATED_ON_DELETION)).obj, seen)
    await asyncio.sleep(FINAL_DELETE_AFTER_S)
    gone = await api.delete(namespace, plan.pod_name, grace_s=0, uid=pod["metadata"]["uid"])
    if not finalizer:  # gone for good: the DELETED event carries this last version
        return _obj(gone.obj, seen)
    final = _obj(await api.get(namespace, plan.pod_name), seen)
    assert final["metadata"]["deletionGracePeriodSeconds"] == 0
    return final


def _obj(pod: dict[str, Any] | None, seen: list[dict[str, Any]]) -> dict[str, Any]:
    assert pod is not None, "the finalizer holds the pod"
    seen.append(pod)
    return pod


def judge(pod: dict[str, Any], *, cancel_requested: bool = False) -> tuple[str, str | None]:
    derived = derive(project(pod), now=time.time(), policy=StatePolicy(),
                     cancel_requested=cancel_requested)
    assert isinstance(derived, Derived)
    return derived.state.value, derived.reason


RUNNING = ((Shape.CONTAINER_CREATING, 0), (Shape.RUNNING, 0))


async def test_a_server_stopped_by_deletion_is_stopped_not_completed(
        kube: KubeClient, namespace: str) -> None:
    pod = await stopped_pod(kube, namespace, "stopped", Kind.NOTEBOOK, statuses=RUNNING)
    assert judge(pod) == ("cancelled", "Stopped")


async def test_a_job_stopped_by_deletion_is_failed_deleted_when_the_watch_replays_it(
        kube: KubeClient, namespace: str) -> None:
    seen: list[dict[str, Any]] = []
    await stopped_pod(kube, namespace, "stopped", Kind.JOB, statuses=RUNNING, seen=seen)
    store = PodStore((namespace,))
    for obj in seen:  # a reopened watch delivers every version, in order
        store.upsert(project(obj))
    view = store.get(project(seen[-1]).key)
    assert isinstance(view, PodView)  # no acknowledgements: never a record
    derived = derive(view, now=time.time(), policy=StatePolicy())
    assert isinstance(derived, Derived)
    assert (derived.state.value, derived.reason) == ("failed", "Deleted")


async def test_a_job_stopped_by_deletion_is_failed_deleted_from_its_tombstone(
        kube: KubeClient, namespace: str) -> None:
    """The same, for a pod that never carried the finalizer (created and stopped while the
    watch stream was silent): the watch replays its versions, the last one as DELETED."""
    seen: list[dict[str, Any]] = []
    await stopped_pod(kube, namespace, "stopped", Kind.JOB, statuses=RUNNING,
                      finalizer=False, seen=seen)
    store = PodStore((namespace,))
    for obj in seen[:-1]:
        store.upsert(project(obj))
    final = project(seen[-1])
    store.delete(final, now=time.time())
    view = store.get(final.key)
    assert isinstance(view, PodView) and store.is_deleted(final.key)
    derived = derive(view, now=time.time(), policy=StatePolicy())
    assert isinstance(derived, Derived)
    assert (derived.state.value, derived.reason) == ("failed", "Deleted")


async def test_a_cancelled_job_is_cancelled_not_failed_with_its_sigterm_exit(
        kube: KubeClient, namespace: str) -> None:
    pod = await stopped_pod(kube, namespace, "cancelled", Kind.JOB, statuses=RUNNING,
                            cancel=True)
    assert judge(pod, cancel_requested=True) == ("cancelled", "Cancelled")


async def test_a_preempted_server_is_failed_by_preemption_not_completed(
        kube: KubeClient, namespace: str) -> None:
    pod = await stopped_pod(kube, namespace, "preempted", Kind.NOTEBOOK, statuses=RUNNING,
                            preempt=True)
    assert judge(pod) == ("failed", "PreemptionByScheduler")


async def test_a_crash_loop_failure_before_the_deletion_stays_the_outcome(
        kube: KubeClient, namespace: str) -> None:
    """The crash loop reached `crashloop_failure_restarts` (the platform's failure rule,
    which a watcher keeping up reports at once) and only then was the pod reaped."""
    loop = tuple((Shape.CRASH_LOOP_BACKOFF if i % 2 else Shape.RESTARTED, (i + 1) // 2)
                 for i in range(1, 12))
    pod = await stopped_pod(kube, namespace, "crashloop", Kind.APP,
                            statuses=(*RUNNING, *loop))
    assert max(c.get("restartCount", 0) for c in pod["status"]["containerStatuses"]) >= 5
    assert judge(pod) == ("failed", "CrashLoopBackOff")


# -- a busy pod during a platform outage ------------------------------------------------------

async def test_a_busy_pods_outcome_survives_a_platform_outage(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        kube: KubeClient) -> None:
    """Finding 7: the matrix saw changes of busy pods "dropped after retries" during an
    outage: every update re-added the key at once, each failure counted against
    max_retries, and the change was dropped while the first failure's Retry-After retry
    was still pending (it delivered the outcome after the outage). Now the updates
    coalesce into that retry: the outcome arrives and nothing is counted dropped."""
    pods = Pods(kube, namespace)
    run_id = f"busy-{uuid.uuid4().hex[:10]}"
    platform.create_run(run_id, pod_namespace=namespace, pod_name="busy")
    await pods.create("busy", run_id)
    env = watcher_env(apiserver, platform, namespace)
    async with running_watcher(settings_for(env)) as watcher:
        await pods.running("busy")
        await eventually(lambda: (platform.get_run(run_id) or {}).get("state") == "running")
        outage_503s = platform.stats()["requests_by_status"].get("503", 0)
        platform.set_faults(outage_s=30)
        await pods.succeeded("busy")
        # Other controllers keep touching the finished pod (labels, annotations).
        for i in range(16):
            await kube.patch_pod(namespace, "busy",
                                 {"metadata": {"annotations": {"example.com/seen": str(i)}}})
            await asyncio.sleep(0.3)
        await eventually(lambda: not platform.get_faults()["outage_s"], bound_s=60)
        await eventually(lambda: (platform.get_run(run_id) or {}).get("state") == "succeeded",
                         bound_s=60)
        assert watcher.controller is not None and watcher.controller.dropped == 0
        # One attempt ran into the outage; the updates did not hammer the platform.
        assert platform.stats()["requests_by_status"].get("503", 0) - outage_503s <= 2


# -- a connection cut while a response body is read ----------------------------------------

@contextlib.asynccontextmanager
async def cutting_server(tmp_path: Path, status: bytes = b"200 OK") -> AsyncIterator[Path]:
    """A plain-HTTP "API server" whose answers (with `status`) promise more body than they
    send, then close: what a connection cut mid-body looks like. Yields a kubeconfig."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 4096\r\n\r\n" + b'{"kind":"PodList","items":[')
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "cut",
        "clusters": [{"name": "cut", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "cut", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "cut", "context": {"cluster": "cut", "user": "cut"}}]}))
    try:
        yield kubeconfig
    finally:
        server.close()
        await server.wait_closed()


async def test_a_body_cut_short_is_a_typed_kube_error(tmp_path: Path) -> None:
    """The contract of `sniffer.kube`: errors are typed. A LIST page or a finalizer
    patch whose body breaks off must raise `KubeError`, which the reflector and the
    handler expect, not aiohttp's ClientPayloadError (the reflector's loop does not
    catch that one: it would end the watcher)."""
    async with cutting_server(tmp_path) as kubeconfig:
        kube = await KubeClient.connect(kubeconfig=str(kubeconfig))
        try:
            with pytest.raises(KubeError):
                await kube.list_pods("x", label_selector="", limit=10)
            with pytest.raises(KubeError):
                await kube.patch_pod("x", "p", {"metadata": {"finalizers": []}})
        finally:
            await kube.close()


@pytest.mark.parametrize("status", [b"500 Internal Server Error", b"409 Conflict",
                                    b"410 Gone"])
async def test_an_error_body_cut_short_is_a_typed_kube_error(tmp_path: Path,
                                                              status: bytes) -> None:
    """The same for an error answer: the body of a 4xx/5xx is read for its message, and a
    cut there must still end in a `KubeError` carrying the status (a 410 still a `Gone`,
    so the reflector relists)."""
    async with cutting_server(tmp_path, status) as kubeconfig:
        kube = await KubeClient.connect(kubeconfig=str(kubeconfig))
        try:
            with pytest.raises(KubeError) as raised:
                await kube.list_pods("x", label_selector="", limit=10)
            assert raised.value.status == int(status.split()[0])
            if raised.value.status == 410:
                assert isinstance(raised.value, Gone)
        finally:
            await kube.close()


# -- a standby over a long time ---------------------------------------------------------

async def hold_lease(kube: KubeClient, namespace: str, holder: str, *, duration_s: int,
                     renewed: str) -> None:
    """Create Sniffer's Lease as if `holder` led, last renewed at `renewed` (RFC 3339)."""
    await kube.request_json(
        "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
        body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
              "metadata": {"name": "sniffer-watch"},
              "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration_s,
                       "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": renewed}})


async def test_a_standby_does_not_grow_with_the_pods_the_leader_handled(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        kube: KubeClient) -> None:
    await hold_lease(kube, namespace, "the-leader", duration_s=3600,
                     renewed="2099-01-01T00:00:00.000000Z")
    env = watcher_env(apiserver, platform, namespace, SNIFFER_LEADER_ENABLED="true",
                      SNIFFER_LEADER_IDENTITY="standby")
    pods = Pods(kube, namespace)
    async with running_watcher(settings_for(env)) as watcher:
        for i in range(30):  # what the leader does: finalize, report, release; then GC
            await pods.create(f"done-{i}", f"done-{i}")
            await kube.patch_pod(namespace, f"done-{i}",
                                 {"metadata": {"finalizers": [OUTCOME_FINALIZER]}})
            await pods.succeeded(f"done-{i}")
            await kube.patch_pod(namespace, f"done-{i}", {"metadata": {"finalizers": None}},
                                 content_type="application/merge-patch+json")
            await pods.delete(f"done-{i}", grace_s=0)
        store, queue = watcher.store, watcher.queue
        assert store is not None and queue is not None
        await eventually(lambda: len(store) == 0)
        assert watcher.elector is not None and not watcher.elector.is_leader
        assert store.tombstones == 0
        assert len(queue) == 0


async def test_a_new_leader_reports_a_pod_deleted_while_nobody_led(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        kube: KubeClient) -> None:
    """The failover window: the leader died, its lease has not expired yet, and a pod is
    created, finishes and is deleted before it ever got the finalizer. Only the standby
    saw it; when it takes over it must report the outcome (leader-sigkill found ~100 such
    runs left queued once a standby stopped keeping tombstones)."""
    await hold_lease(kube, namespace, "dead-leader", duration_s=6,
                     renewed="2026-01-01T00:00:00.000000Z")
    env = watcher_env(apiserver, platform, namespace, SNIFFER_LEADER_ENABLED="true",
                      SNIFFER_LEADER_IDENTITY="standby", SNIFFER_LEADER_LEASE_DURATION_S="6",
                      SNIFFER_LEADER_RENEW_DEADLINE_S="4",
                      SNIFFER_LEADER_RETRY_PERIOD_S="0.5")
    pods = Pods(kube, namespace)
    run_id = f"unseen-{uuid.uuid4().hex[:10]}"
    platform.create_run(run_id, pod_namespace=namespace, pod_name="quick")
    async with running_watcher(settings_for(env)) as watcher:
        assert watcher.elector is not None and not watcher.elector.is_leader
        await pods.create("quick", run_id)
        await pods.succeeded("quick")
        await pods.delete("quick", grace_s=0)
        assert await pods.get("quick") is None
        assert not watcher.elector.is_leader, "took over too early to test the window"
        await eventually(lambda: watcher.elector is not None and watcher.elector.is_leader)
        await eventually(lambda: (platform.get_run(run_id) or {}).get("state") == "succeeded")


async def healthz(watcher: Watcher) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{watcher.health_port}/healthz") as response:
        assert response.status == 200
        return await response.json()


async def test_a_standby_forgets_the_tombstones_a_live_leader_has_seen(
        apiserver: ApiServer, platform: PlatformServer, namespace: str,
        kube: KubeClient) -> None:
    """Finding 6: a standby kept, forever, the tombstone of every pod deleted before a
    leader had finalized it (every pod, with finalizer mode off). It keeps them while
    nobody is seen renewing the lease (a new leader must report them), and forgets them
    once the live leader has renewed for a few lease durations after the deletions."""
    await hold_lease(kube, namespace, "the-leader", duration_s=3600,
                     renewed="2099-01-01T00:00:00.000000Z")
    env = watcher_env(apiserver, platform, namespace, SNIFFER_LEADER_ENABLED="true",
                      SNIFFER_LEADER_IDENTITY="standby", SNIFFER_HEALTH_HOST="127.0.0.1",
                      SNIFFER_HEALTH_PORT=str(free_port()))
    pods = Pods(kube, namespace)
    leading: asyncio.Task[None] | None = None
    try:
        async with running_watcher(settings_for(env)) as watcher:
            store = watcher.store
            assert store is not None and watcher.elector is not None
            for i in range(3):  # never finalized: no leader's controller saw them
                await pods.create(f"gone-{i}", f"gone-{i}")
                await pods.succeeded(f"gone-{i}")
                await pods.delete(f"gone-{i}", grace_s=0)
            # The lease is held but nobody renews it: keep them for a takeover.
            await eventually(lambda: store.tombstones == 3)
            assert (await healthz(watcher))["tombstones"] == 3
            leader = LeaderElector(kube, name="sniffer-watch", namespace=namespace,
                                   identity="the-leader", lease_duration_s=2.0,
                                   renew_deadline_s=1.5, retry_period_s=0.2)
            leading = asyncio.create_task(leader.run(), name="the-leader")
            await eventually(lambda: store.tombstones == 0)
            assert (await healthz(watcher))["tombstones"] == 0
            assert not watcher.elector.is_leader
            assert len(store) == 0
    finally:
        if leading is not None:  # after the standby stopped: it must not take over
            leading.cancel()
            await asyncio.gather(leading, return_exceptions=True)
