"""The reflector against a real API server, with network faults from a loopback proxy.

Covers: paginated initial list and readiness; a watch cut mid-stream resumes without a
relist; a silent half-open stream is detected and reopened; 410 Gone on reopening (etcd
compacted during the gap) relists, and pods deleted during the gap become deletions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sniffer.kube import KubeClient
from testbed.apiserver import ApiServer, start
from tests.fixtures.proxy import Proxy, proxied_kubeconfig
from tests.fixtures.watcher import Pods, eventually
from watch.reflector import Reflector
from watch.store import PodStore
from watch.workqueue import Priority


class Recorder:
    """ReflectorMetrics that remembers what it was told."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.relists: list[str] = []
        self.restarts: list[str] = []
        self.malformed_count = 0
        self.deliveries: list[float] = []

    def event(self, kind: str) -> None:
        self.events[kind] += 1

    def relist(self, cause: str) -> None:
        self.relists.append(cause)

    def watch_restart(self, cause: str) -> None:
        self.restarts.append(cause)

    def malformed(self, where: str) -> None:
        self.malformed_count += 1

    def delivered(self, seconds: float) -> None:
        self.deliveries.append(seconds)


class Harness:
    def __init__(self, reflector: Reflector, store: PodStore, changes: list[str],
                 priorities: dict[str, Priority], metrics: Recorder, proxy: Proxy) -> None:
        self.reflector, self.store, self.changes = reflector, store, changes
        self.priorities = priorities
        """key -> priority of its last reported change"""
        self.metrics, self.proxy = metrics, proxy


@contextlib.asynccontextmanager
async def harness(server: ApiServer, namespace: str, tmp_path: Path, *,
                  wire: str = "protobuf", **kw) -> AsyncIterator[Harness]:
    """A reflector on `namespace` through a loopback proxy; `wire` is the client's, `kw`
    go to the Reflector."""
    proxy = Proxy(int(server.url.rsplit(":", 1)[1]))
    await proxy.start()
    kube = await KubeClient.connect(
        kubeconfig=str(proxied_kubeconfig(server, proxy.port, tmp_path / "kubeconfig")),
        wire=wire)
    store = PodStore((namespace,))
    changes: list[str] = []
    priorities: dict[str, Priority] = {}

    def on_change(key: str, priority: Priority) -> None:
        changes.append(key)
        priorities[key] = priority

    metrics = Recorder()
    reflector = Reflector(kube, store, on_change, namespaces=(namespace,),
                          label_selector="sniffer.io/run-id", metrics=metrics, **kw)
    task = asyncio.create_task(reflector.run())
    try:
        yield Harness(reflector, store, changes, priorities, metrics, proxy)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()
        await proxy.stop()


@pytest.fixture
async def admin(apiserver: ApiServer) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


async def test_initial_list_pages_through_every_pod_and_then_reports_synced(
        apiserver, namespace, admin, tmp_path):
    pods = Pods(admin, namespace)
    await asyncio.gather(*(pods.create(f"p-{i}", f"run-{i}") for i in range(25)))
    async with harness(apiserver, namespace, tmp_path, page_size=10) as h:
        await asyncio.wait_for(h.store.wait_synced(), 30)
        assert len(h.store) == 25
        assert sorted(h.changes) == sorted(f"{namespace}/p-{i}" for i in range(25))
        assert set(h.priorities.values()) == {Priority.LIST}  # a backlog, not news
        assert h.metrics.relists == ["initial"]


async def test_watch_cut_mid_stream_resumes_from_the_last_version_without_relisting(
        apiserver, namespace, admin, tmp_path):
    pods = Pods(admin, namespace)
    await pods.create("before", "run-before")
    async with harness(apiserver, namespace, tmp_path) as h:
        await asyncio.wait_for(h.store.wait_synced(), 30)
        await pods.create("during", "run-during")
        await eventually(lambda: h.store.get(f"{namespace}/during"))
        assert h.priorities[f"{namespace}/during"] is Priority.LIVE  # seen on the watch
        # Its delivery (framed -> stored and queued) was timed: in-process, well under
        # the read timeout; what a value is is the benchmarks' business.
        assert h.metrics.deliveries
        assert all(0 <= s < 120 for s in h.metrics.deliveries)
        h.proxy.cut()
        await pods.create("after", "run-after")
        await eventually(lambda: h.store.get(f"{namespace}/after"))
        assert h.metrics.relists == ["initial"]
        assert "error" in h.metrics.restarts


async def test_silent_half_open_stream_is_detected_and_reopened(
        apiserver, namespace, admin, tmp_path):
    pods = Pods(admin, namespace)
    async with harness(apiserver, namespace, tmp_path, read_timeout_s=1.0) as h:
        await asyncio.wait_for(h.store.wait_synced(), 30)
        h.proxy.freeze()
        await pods.create("unseen", "run-unseen")
        await eventually(lambda: "stalled" in h.metrics.restarts)
        h.proxy.thaw()
        await eventually(lambda: h.store.get(f"{namespace}/unseen"))


@pytest.fixture(scope="module")
def uncached_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """An API server whose watches go straight to etcd, so compaction yields 410."""
    server = start(tmp_path_factory.mktemp("uncached"), extra_args=["--watch-cache=false"])
    try:
        yield server
    finally:
        server.stop()


def compact_etcd(server: ApiServer, revision: int) -> None:
    assert server.etcd_url, "the testbed must expose etcd for compaction"
    body = json.dumps({"revision": str(revision), "physical": True}).encode()
    req = urllib.request.Request(f"{server.etcd_url}/v3/kv/compaction", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        assert response.status == 200


async def test_gone_on_reopen_relists_and_pods_deleted_in_the_gap_become_deletions(
        uncached_apiserver, tmp_path):
    server = uncached_apiserver
    namespace = "gap"
    admin = await KubeClient.connect(kubeconfig=str(server.kubeconfig))
    try:
        await admin.request_json("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        pods = Pods(admin, namespace)
        await pods.create("stays", "run-stays")
        await pods.create("goes", "run-goes")
        async with harness(server, namespace, tmp_path) as h:
            await asyncio.wait_for(h.store.wait_synced(), 30)
            h.proxy.block()
            await pods.delete("goes", grace_s=0)
            created = await pods.create("arrives", "run-arrives")
            compact_etcd(server, int(created["metadata"]["resourceVersion"]))
            h.changes.clear()
            h.proxy.unblock()
            await eventually(lambda: "expired" in h.metrics.relists)
            await eventually(lambda: h.store.get(f"{namespace}/arrives"))
            assert h.store.is_deleted(f"{namespace}/goes")
            assert h.store.get(f"{namespace}/goes").deletion_timestamp is not None
            assert {f"{namespace}/goes", f"{namespace}/arrives"} <= set(h.changes)
            assert not h.store.is_deleted(f"{namespace}/stays")
    finally:
        await admin.close()


async def test_a_consumer_error_closes_the_watch_connection_before_it_propagates(
        apiserver, namespace, admin, tmp_path):
    pods = Pods(admin, namespace)
    await pods.create("before", "run-before")
    proxy = Proxy(int(apiserver.url.rsplit(":", 1)[1]))
    await proxy.start()
    kube = await KubeClient.connect(
        kubeconfig=str(proxied_kubeconfig(apiserver, proxy.port, tmp_path / "kubeconfig")))
    store = PodStore((namespace,))

    def on_change(key: str, _priority: Priority) -> None:
        if key == f"{namespace}/during":  # seen on the watch, not the initial list
            raise RuntimeError("handler bug")

    reflector = Reflector(kube, store, on_change, namespaces=(namespace,),
                          label_selector="sniffer.io/run-id", metrics=Recorder())
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(store.wait_synced(), 30)
        await eventually(lambda: proxy.live == 1)  # the watch, on the listing's connection
        await pods.create("during", "run-during")
        # The raised exception (held here, with its traceback) keeps the reflector's
        # frames alive: only an explicit close of the watch releases its connection.
        with pytest.raises(ExceptionGroup) as raised:
            await asyncio.wait_for(task, 30)
        assert isinstance(raised.value.exceptions[0], RuntimeError)
        await eventually(lambda: proxy.live == 0)  # the old code never closes it
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()
        await proxy.stop()
