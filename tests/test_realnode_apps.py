"""Controller-backed runs on the real node, with the real Deployment, ReplicaSet and
StatefulSet controllers (issue 14, item 3).

The session's real node runs the full kube-controller-manager and a real kubelet: each
test submits a Deployment or StatefulSet (replicas 1, the run id label on it and its pod
template) as the platform would, runs `sniffer watch` with both kinds among `kube.kinds`,
and checks what the reference platform holds and its history of the run (a run must never
show a state it later leaves but for its one move to an end). Covered:

* a drain (cordon, evict through the Eviction API, uncordon once the replacement waits)
  of a Deployment's pod (replaced under a new name) and of a StatefulSet's (recreated
  under its name, with a new uid): the run stays running, never terminal;
* the platform's cancel deleting the Deployment: cancelled "Cancelled";
* a rollout the Deployment controller gives up (progressDeadlineSeconds, its image never
  on the node): failed "ProgressDeadlineExceeded", not the pod rules' stuck-image
  failure (which `sniffer.apps` leaves out for replicas) even when that rule is due first;
* a replica crash looping (exits 3, restartPolicy Always) past
  `states.crashloop_failure_restarts`: failed "CrashLoopBackOff" with exit code 3.

These tests need root and this kind of machine and FAIL (never skip) without the node;
every wait is for a condition, the bounds only turn a broken node into a failure.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sniffer.kube import KubeClient
from sniffer.kubedecode import NotFound
from sniffer.podview import OUTCOME_FINALIZER, RUN_ID_LABEL
from testbed.platform.launcher import PlatformServer
from testbed.realnode import NODE_NAME
from testbed.simulator.kubeapi import PodApi
from tests.fixtures.apps import RESOURCE, app_manifest
from tests.fixtures.kube import _purge_namespace
from tests.fixtures.realnode import RealNodeBed
from tests.fixtures.watcher import eventually, running_watcher, settings_for, watcher_env

BOUND_S = 180.0
"""A pod start on a 2-core node takes seconds; this bound only turns a stuck node into a
failure."""
SERVE = "trap 'exit 0' TERM; sleep 3600 & wait"
NOT_ON_THE_NODE = "localhost/sniffer/not-imported:1"
"""An image never imported into the node's containerd: with pull policy Never the kubelet
reports ErrImageNeverPull for good."""


class RealApps:
    """Submits Deployments and StatefulSets to the real node's API server and drains its
    node."""

    def __init__(self, kube: KubeClient, namespace: str, image: str) -> None:
        self.kube, self.namespace, self.image = kube, namespace, image

    def path(self, name: str = "", controller: str = "Deployment") -> str:
        base = f"/apis/apps/v1/namespaces/{self.namespace}/{RESOURCE[controller]}"
        return f"{base}/{name}" if name else base

    async def submit(self, name: str, run_id: str, *, controller: str = "Deployment",
                     script: str = SERVE, image: str | None = None,
                     **spec: Any) -> dict[str, Any]:
        body = app_manifest(self.namespace, name, run_id, controller=controller, pod_spec={
            "terminationGracePeriodSeconds": 2, "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": image or self.image,
                            "imagePullPolicy": "Never", "command": ["sh", "-c", script]}]},
            **spec)
        return await self.kube.request_json("POST", self.path(controller=controller),
                                            body=body)

    async def get(self, name: str, controller: str = "Deployment") -> dict[str, Any] | None:
        try:
            return await self.kube.request_json("GET", self.path(name, controller))
        except NotFound:
            return None

    async def pods(self, run_id: str) -> list[dict[str, Any]]:
        got = await self.kube.request_json(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods",
            query={"labelSelector": f"{RUN_ID_LABEL}={run_id}"})
        return list(got["items"])

    async def running_pod(self, run_id: str) -> dict[str, Any] | None:
        """The run's one pod that is Running and Ready, not being deleted."""
        for pod in await self.pods(run_id):
            status = pod.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions") or [])
            if (status.get("phase") == "Running" and ready
                    and not pod["metadata"].get("deletionTimestamp")):
                return pod
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

    async def delete(self, name: str, controller: str = "Deployment") -> None:
        await self.kube.request_json("DELETE", self.path(name, controller),
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


def _env(real_node: RealNodeBed, platform: PlatformServer, namespace: str,
         **overrides: str) -> dict[str, str]:
    return watcher_env(real_node.kube, platform, namespace,
                       SNIFFER_KUBE_KINDS="pods,jobs,deployments,statefulsets", **overrides)


def history(platform: PlatformServer, run_id: str) -> list[str]:
    return [u["to_state"] for u in platform.updates() if u["run_id"] == run_id]


def state(platform: PlatformServer, run_id: str) -> str | None:
    run = platform.get_run(run_id)
    return None if run is None else run["state"]


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == kind), None)


@pytest.mark.parametrize("controller", ["Deployment", "StatefulSet"])
async def test_an_app_whose_pod_is_deleted_by_a_node_drain_and_replaced_stays_running(
        real_node: RealNodeBed, platform: PlatformServer, real_apps: RealApps,
        controller: str) -> None:
    # A Deployment's replacement gets a new name; a StatefulSet's is recreated under the
    # evicted pod's name once that one is gone, with a new uid: pods are told by uid.
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, kind="app", pod_namespace=real_apps.namespace,
                        pod_name="web")
    async with running_watcher(settings_for(_env(real_node, platform,
                                                 real_apps.namespace))) as w:
        assert w.store is not None
        app = await real_apps.submit("web", run_id, controller=controller)
        await eventually(lambda: state(platform, run_id) == "running", bound_s=BOUND_S)
        first = await real_apps.running_pod(run_id)
        assert first is not None
        name, uid = first["metadata"]["name"], first["metadata"]["uid"]
        # The drain: cordon, evict; the controller makes a replacement, which waits
        # Unschedulable on the cordoned node.
        await real_apps.cordon(True)
        await real_apps.evict(name)

        async def replaced() -> bool:
            pods = await real_apps.pods(run_id)
            return len(pods) == 1 and pods[0]["metadata"]["uid"] != uid

        await eventually(replaced, bound_s=BOUND_S)

        def forgotten() -> bool:  # the pod path let the evicted pod's tombstone go
            cached = w.store.get(f"{real_apps.namespace}/{name}")
            return cached is None or cached.uid != uid

        await eventually(forgotten, bound_s=BOUND_S)
        assert history(platform, run_id) == ["running"]
        await real_apps.cordon(False)  # one node: it takes the replacement back

        async def serving_again() -> dict[str, Any] | None:
            pod = await real_apps.running_pod(run_id)
            return pod if pod is not None and pod["metadata"]["uid"] != uid else None

        second = await eventually(serving_again, bound_s=BOUND_S)
        if controller == "StatefulSet":
            assert second["metadata"]["name"] == name  # the same identity, a new pod

        def cached() -> bool:
            pod = w.store.get(
                f"{real_apps.namespace}/{second['metadata']['name']}")
            return pod is not None and pod.uid == second["metadata"]["uid"]

        await eventually(cached, bound_s=BOUND_S)
    run = platform.get_run(run_id)
    assert run is not None
    assert run["state"] == "running"
    assert run["pod_uid"] == app["metadata"]["uid"]  # bound to the controller
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
            return await real_apps.get("stop") is None

        await eventually(gone, bound_s=BOUND_S)
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"]) == ("cancelled", "Cancelled")
    assert history(platform, run_id) == ["running", "cancelled"]


async def test_a_rollout_the_deployment_controller_gives_up_ends_the_run_failed(
        real_node: RealNodeBed, platform: PlatformServer, real_apps: RealApps) -> None:
    # The image is never on the node: the replica waits ErrImageNeverPull for good and
    # the controller marks Progressing=False ProgressDeadlineExceeded after 10 s. The pod
    # rules' stuck-image limit is set to 1 s so that it is due long before; an app's
    # replica failing is never terminal by itself (sniffer.apps), so the run must wait
    # for the controller's verdict.
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, kind="app", pod_namespace=real_apps.namespace,
                        pod_name="stuck")
    env = _env(real_node, platform, real_apps.namespace,
               SNIFFER_STATES_IMAGE_PULL_FAILURE_AFTER_S="1")
    async with running_watcher(settings_for(env)):
        await real_apps.submit("stuck", run_id, image=NOT_ON_THE_NODE,
                               progressDeadlineSeconds=10)

        async def never_pulled() -> dict[str, Any] | None:
            for pod in await real_apps.pods(run_id):
                for c in (pod.get("status") or {}).get("containerStatuses") or []:
                    if (c.get("state") or {}).get("waiting", {}).get("reason") == \
                            "ErrImageNeverPull":
                        return pod
            return None

        await eventually(never_pulled, bound_s=BOUND_S)

        async def gave_up() -> dict[str, Any] | None:
            deployment = await real_apps.get("stuck")
            progressing = None if deployment is None else _condition(deployment,
                                                                     "Progressing")
            return progressing if progressing is not None and \
                progressing.get("reason") == "ProgressDeadlineExceeded" else None

        progressing = await eventually(gave_up, bound_s=BOUND_S)
        await eventually(lambda: state(platform, run_id) == "failed", bound_s=BOUND_S)

        async def released() -> bool:
            deployment = await real_apps.get("stuck")
            return deployment is not None and OUTCOME_FINALIZER not in (
                deployment["metadata"].get("finalizers") or [])

        await eventually(released, bound_s=BOUND_S)
    assert progressing["status"] == "False"
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"]) == ("failed", "ProgressDeadlineExceeded")
    assert run["message"] == progressing["message"]
    assert run["finished_at"] is not None
    assert history(platform, run_id) == ["failed"]  # queued until the controller gave up


async def test_a_deployment_whose_replica_crash_loops_past_the_limit_fails_the_run(
        real_node: RealNodeBed, platform: PlatformServer, real_apps: RealApps) -> None:
    # The kubelet caps its back-off at realnode.CRASHLOOP_MAX_BACKOFF (2 s), so two
    # restarts take seconds.
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, kind="app", pod_namespace=real_apps.namespace,
                        pod_name="loop")
    env = _env(real_node, platform, real_apps.namespace,
               SNIFFER_STATES_CRASHLOOP_FAILURE_RESTARTS="2")
    async with running_watcher(settings_for(env)):
        await real_apps.submit("loop", run_id, script="exit 3")
        await eventually(lambda: state(platform, run_id) == "failed", bound_s=BOUND_S)
        pods = await real_apps.pods(run_id)

        async def released() -> bool:
            deployment = await real_apps.get("loop")
            return deployment is not None and OUTCOME_FINALIZER not in (
                deployment["metadata"].get("finalizers") or [])

        await eventually(released, bound_s=BOUND_S)
    assert len(pods) == 1  # one replica, restarted in place, never replaced
    (main,) = pods[0]["status"]["containerStatuses"]
    assert main["restartCount"] >= 2
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"], run["exit_code"]) == ("failed", "CrashLoopBackOff", 3)
    # Running between its first start and the limit, unless the watcher saw the pod
    # only once it was past it; never back from failed.
    assert history(platform, run_id) in (["running", "failed"], ["failed"])
