"""A failure the state rules judge for a live pod is sent only from the pod's latest view.

A stuck-Pending rule fires on the clock, from whatever the cache holds. When the watch lags
(here: frozen in a loopback proxy while the pod starts on the API server), the cached
view is older than the pod, and a failure sent from it could never be undone. The
controller confirms such a failure with a quorum read first. Real kube-apiserver, the
reference platform over HTTP; the reflector watches through the proxy, the confirming
read goes direct.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sniffer.kube import KubeClient
from sniffer.platform import PlatformClient
from sniffer.states import StatePolicy
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from tests.fixtures.metrics import Recorder
from tests.fixtures.proxy import Proxy
from tests.fixtures.watcher import Pods, eventually
from tests.test_reflector import proxied_kubeconfig
from tests.test_workqueue import Limiter
from watch.controller import Controller
from watch.finalizer_patch import Finalizers
from watch.ledger import RunLedger
from watch.reflector import Reflector
from watch.store import PodStore
from watch.workqueue import WorkQueue

PENDING_LIMIT_S = 2.0


class Outcomes(Recorder):
    """Keeps the outcome labels the controller reports."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[str] = []

    def outcome(self, result: str) -> None:
        self.outcomes.append(result)


@dataclass
class Bed:
    proxy: Proxy
    store: PodStore
    pods: Pods
    metrics: Outcomes


@contextlib.asynccontextmanager
async def watching(apiserver: ApiServer, platform: PlatformServer, namespace: str,
                   tmp_path: Path) -> AsyncIterator[Bed]:
    proxy = Proxy(int(apiserver.url.rsplit(":", 1)[1]))
    await proxy.start()
    lagging = await KubeClient.connect(
        kubeconfig=str(proxied_kubeconfig(apiserver, proxy.port, tmp_path / "kubeconfig")))
    direct = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig))
    client = PlatformClient(platform.url, platform.token_file, timeout=30)
    ledger = RunLedger(client, clock=time.time)
    store = PodStore((namespace,), compaction=ledger)
    queue = WorkQueue[str](Limiter(delay=0.05))
    metrics = Outcomes()
    controller = Controller(
        store=store, ledger=ledger, queue=queue, platform=client, pods=direct,
        finalizers=Finalizers(direct, enabled=False),
        policy=StatePolicy(pending_failure_after_s=PENDING_LIMIT_S), workers=2,
        max_retries=1000, metrics=metrics)
    reflector = Reflector(lagging, store, controller.on_change, namespaces=(namespace,),
                          label_selector="sniffer.io/run-id")
    reflecting = asyncio.create_task(reflector.run(), name="reflector-under-test")
    working = asyncio.create_task(controller.run(), name="controller-under-test")
    try:
        await store.wait_synced()
        yield Bed(proxy, store, Pods(direct, namespace), metrics)
    finally:
        proxy.thaw()
        queue.shut_down()
        await asyncio.wait_for(working, 60)
        reflecting.cancel()
        await asyncio.gather(reflecting, return_exceptions=True)
        await client.close()
        await lagging.close()
        await direct.close()
        await proxy.stop()


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
