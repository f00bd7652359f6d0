"""Controller-backed runs on the real node, with the real Deployment and ReplicaSet
controllers (issue 14, item 3).

The session's real node runs the full kube-controller-manager and a real kubelet: the
test submits a Deployment (replicas 1, the run id label on it and its pod template) as
the platform would, runs `sniffer watch` with deployments among `kube.kinds`, and drains
the node the way `kubectl drain` does: cordon, evict the pod through the Eviction API,
then (one node only) uncordon so the replacement can run. It checks what the reference
platform holds and its history of the run (a run must never show a state it later
leaves). These tests need root and this kind of machine and FAIL (never skip) without
the node; every wait is for a condition, the bounds only turn a broken node into a
failure.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sniffer.kube import KubeClient
from sniffer.kubedecode import NotFound
from sniffer.podview import RUN_ID_LABEL
from testbed.platform.launcher import PlatformServer
from testbed.realnode import NODE_NAME
from testbed.simulator.kubeapi import PodApi
from tests.fixtures.apps import app_manifest
from tests.fixtures.kube import _purge_namespace
from tests.fixtures.realnode import RealNodeBed
from tests.fixtures.watcher import eventually, running_watcher, settings_for, watcher_env

BOUND_S = 180.0
"""A pod start on a 2-core node takes seconds; this bound only turns a stuck node into a
failure."""
SERVE = "trap 'exit 0' TERM; sleep 3600 & wait"


class RealApps:
    """Submits Deployments to the real node's API server and drains its node."""

    def __init__(self, kube: KubeClient, namespace: str, image: str) -> None:
        self.kube, self.namespace, self.image = kube, namespace, image

    def path(self, name: str = "") -> str:
        base = f"/apis/apps/v1/namespaces/{self.namespace}/deployments"
        return f"{base}/{name}" if name else base

    async def submit(self, name: str, run_id: str) -> dict[str, Any]:
        body = app_manifest(self.namespace, name, run_id, pod_spec={
            "terminationGracePeriodSeconds": 2, "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": self.image, "imagePullPolicy": "Never",
                            "command": ["sh", "-c", SERVE]}]})
        return await self.kube.request_json("POST", self.path(), body=body)

    async def pods(self, run_id: str) -> list[dict[str, Any]]:
        got = await self.kube.request_json(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods",
            query={"labelSelector": f"{RUN_ID_LABEL}={run_id}"})
        return list(got["items"])

    async def running_pod(self, run_id: str) -> str | None:
        """The name of the run's one pod that is Running and Ready, not being deleted."""
        for pod in await self.pods(run_id):
            status = pod.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions") or [])
            if (status.get("phase") == "Running" and ready
                    and not pod["metadata"].get("deletionTimestamp")):
                return str(pod["metadata"]["name"])
        return None

    async def cordon(self, unschedulable: bool) -> None:
        await self.kube.request_json(
            "PATCH", f"/api/v1/nodes/{NODE_NAME}",
            body={"spec": {"unschedulable": unschedulable or None}},
            content_type="application/merge-patch+json")

    async def evict(self, pod: str) -> None:
        """What `kubectl drain` does to each pod: an Eviction (policy/v1)."""
        await self.kube.request_json(
            "POST", f"/api/v1/namespaces/{self.namespace}/pods/{pod}/eviction",
            body={"apiVersion": "policy/v1", "kind": "Eviction",
                  "metadata": {"name": pod, "namespace": self.namespace}})

    async def delete(self, name: str) -> None:
        await self.kube.request_json("DELETE", self.path(name),
                                     query={"propagationPolicy": "Background"})


@pytest.fixture
async def real_apps(real_node: RealNodeBed) -> AsyncIterator[RealApps]:
    namespace = f"apps-{secrets.token_hex(3)}"
    kube = await KubeClient.connect(kubeconfig=str(real_node.kube.kubeconfig), pool_size=16)
    await PodApi(kube, asyncio.Semaphore(4)).ensure_namespace(namespace)
    apps = RealApps(kube, namespace, real_node.node.image)
    try:
        yield apps
    finally:
        await apps.cordon(False)  # the node is the session's: never leave it cordoned
        await kube.close()
        _purge_namespace(real_node.kube, namespace)


def _env(real_node: RealNodeBed, platform: PlatformServer, namespace: str) -> dict[str, str]:
    return watcher_env(real_node.kube, platform, namespace,
                       SNIFFER_KUBE_KINDS="pods,jobs,deployments")


def history(platform: PlatformServer, run_id: str) -> list[str]:
    return [u["to_state"] for u in platform.updates() if u["run_id"] == run_id]


def state(platform: PlatformServer, run_id: str) -> str | None:
    run = platform.get_run(run_id)
    return None if run is None else run["state"]


async def test_an_app_whose_pod_is_deleted_by_a_node_drain_and_replaced_stays_running(
        real_node: RealNodeBed, platform: PlatformServer, real_apps: RealApps) -> None:
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, kind="app", pod_namespace=real_apps.namespace,
                        pod_name="web")
    async with running_watcher(settings_for(_env(real_node, platform,
                                                 real_apps.namespace))) as w:
        assert w.store is not None
        deployment = await real_apps.submit("web", run_id)
        await eventually(lambda: state(platform, run_id) == "running", bound_s=BOUND_S)
        first = await real_apps.running_pod(run_id)
        assert first is not None
        # The drain: cordon, evict; the ReplicaSet makes a replacement at once, which
        # waits Unschedulable on the cordoned node.
        await real_apps.cordon(True)
        await real_apps.evict(first)

        async def replaced() -> bool:
            names = {p["metadata"]["name"] for p in await real_apps.pods(run_id)}
            return first not in names and len(names) == 1

        await eventually(replaced, bound_s=BOUND_S)
        # The watcher saw the eviction through: the pod path let its tombstone go.
        await eventually(lambda: w.store.get(f"{real_apps.namespace}/{first}") is None,
                         bound_s=BOUND_S)
        assert history(platform, run_id) == ["running"]
        await real_apps.cordon(False)  # one node: it takes the replacement back

        async def serving_again() -> bool:
            pod = await real_apps.running_pod(run_id)
            return pod is not None and pod != first

        await eventually(serving_again, bound_s=BOUND_S)
        second = await real_apps.running_pod(run_id)
        await eventually(lambda: w.store.get(f"{real_apps.namespace}/{second}") is not None,
                         bound_s=BOUND_S)
    run = platform.get_run(run_id)
    assert run is not None
    assert run["state"] == "running"
    assert run["pod_uid"] == deployment["metadata"]["uid"]  # bound to the Deployment
    assert history(platform, run_id) == ["running"]  # never a terminal state


async def test_a_deployment_deleted_by_the_platforms_cancel_ends_cancelled(
        real_node: RealNodeBed, platform: PlatformServer, real_apps: RealApps) -> None:
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, kind="app", pod_namespace=real_apps.namespace,
                        pod_name="stop")
    async with running_watcher(settings_for(_env(real_node, platform, real_apps.namespace))):
        await real_apps.submit("stop", run_id)
        await eventually(lambda: state(platform, run_id) == "running", bound_s=BOUND_S)
        platform.cancel_run(run_id)
        await real_apps.delete("stop")
        await eventually(lambda: state(platform, run_id) == "cancelled", bound_s=BOUND_S)

        async def gone() -> bool:
            try:
                await real_apps.kube.request_json("GET", real_apps.path("stop"))
            except NotFound:
                return True
            return False

        await eventually(gone, bound_s=BOUND_S)
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"]) == ("cancelled", "Cancelled")
    assert history(platform, run_id) == ["running", "cancelled"]
