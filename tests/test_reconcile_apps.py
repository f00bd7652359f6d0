"""The reconciler for runs backed by an app controller (Deployment, StatefulSet), on the
testbed: a real kube-apiserver and the reference Platform over HTTP.

No controller runs here: each test creates the controller, writes its status through the
status subresource as the Deployment controller writes it, and creates the replica pods
(owned by a ReplicaSet, with the run id label from the template) with the kubelet's
statuses. No garbage collector runs either, so deleting a Deployment leaves its pods
exactly as a test wants them. The same pure-diff, re-read, conditional-write rules as
for pods and Jobs apply (tests/test_reconcile.py, tests/test_reconcile_jobs.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from config.loader import load_settings
from reconcile.mismatch import MismatchKind
from reconcile.repair import RepairOutcome
from sniffer.kube import KubeClient
from sniffer.kubedecode import NotFound
from sniffer.platform import PlatformClient
from sniffer.podview import OUTCOME_FINALIZER
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from tests.fixtures.apps import app_manifest
from tests.fixtures.kubehttp import MERGE_PATCH
from tests.fixtures.watcher import rfc3339
from tests.test_reconcile import Bed, by_run, env_for, new_run_id

KINDS = "pods,jobs,deployments,statefulsets"


class AppBed(Bed):
    """`Bed` with Deployments and their replica pods."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.settings = load_settings(env=env_for(self.apiserver, self.platform, self.ns,
                                                  SNIFFER_KUBE_KINDS=KINDS))
        self.rs_uid = str(uuid.uuid4())

    def path(self, name: str | None = None) -> str:
        return KubeClient.apps_path("deployments", self.ns, name)

    async def deployment(self, name: str, run_id: str, *, finalizer: bool = False) -> str:
        """A replicas-1 Deployment of the run; its uid. `finalizer`: the watcher's
        outcome finalizer is on it."""
        body = app_manifest(self.ns, name, run_id)
        if finalizer:
            body["metadata"]["finalizers"] = [OUTCOME_FINALIZER]
        created = await self.kube.request_json("POST", self.path(), body=body)
        return str(created["metadata"]["uid"])

    async def deployment_status(self, name: str, *, ready: int,
                                progressing: tuple[str, str] = ("True",
                                                                "NewReplicaSetAvailable"),
                                ) -> None:
        now = rfc3339()
        await self.kube.request_json("PATCH", self.path(name) + "/status", body={"status": {
            "observedGeneration": 1, "replicas": 1, "readyReplicas": ready or None,
            "availableReplicas": ready or None, "unavailableReplicas": (1 - ready) or None,
            "conditions": [{"type": "Progressing", "status": progressing[0],
                            "reason": progressing[1], "message": progressing[1],
                            "lastUpdateTime": now, "lastTransitionTime": now}]}},
            content_type=MERGE_PATCH)

    async def replica(self, name: str, run_id: str, phase: str, *,
                      held: bool = False) -> str:
        """A replica pod (owned by the Deployment's ReplicaSet), brought to `phase`; its
        uid. `held`: someone else's finalizer, so a deletion leaves it Terminating."""
        created = await self.kube.request_json("POST", KubeClient.pods_path(self.ns), body={
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns,
                         "labels": {"sniffer.io/run-id": run_id, "sniffer.io/kind": "app"},
                         "finalizers": ["example.com/hold"] if held else [],
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-1", "uid": self.rs_uid,
                                              "controller": True}]},
            "spec": {"nodeName": "node-a-1", "restartPolicy": "Always",
                     "containers": [{"name": "main", "image": "registry.example/web:1"}]}})
        await self.status(name, phase)
        return str(created["metadata"]["uid"])

    async def delete_deployment(self, name: str) -> None:
        await self.kube.request_json("DELETE", self.path(name),
                                     query={"propagationPolicy": "Background"})

    async def get_deployment(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.request_json("GET", self.path(name))
        except NotFound:
            return None


@pytest.fixture
async def bed(apiserver: ApiServer, platform: PlatformServer,
              namespace: str) -> AsyncIterator[AppBed]:
    kube = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig), pool_size=16)
    api = PlatformClient(platform.url, platform.token_file)
    try:
        yield AppBed(apiserver, platform, namespace, kube, api)
    finally:
        await api.close()
        await kube.close()


async def _pass(bed: AppBed):
    return await bed.reconciler().run_pass(asyncio.Event())


async def test_a_serving_app_whose_run_is_behind_is_repaired_running_bound_to_it(
        bed: AppBed) -> None:
    run_id = new_run_id()
    uid = await bed.deployment("web", run_id)
    await bed.replica("web-1-a", run_id, "Running")
    await bed.deployment_status("web", ready=1)
    bed.run(run_id, pod_name="web")
    report = await _pass(bed)
    assert by_run(report)[run_id] == [(MismatchKind.APP_AHEAD, RepairOutcome.REPAIRED)]
    run = bed.platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["pod_uid"], run["pod_name"]) == ("running", uid, "web")
    assert run_id not in by_run(await _pass(bed)), "a second pass finds nothing"


async def test_a_replaced_replica_is_no_mismatch_for_a_running_app(bed: AppBed) -> None:
    """A drain deleted the pod (still Terminating) and the replacement is Pending: judged
    one by one, as before, the deleted pod would end the run cancelled Stopped."""
    run_id = new_run_id()
    await bed.deployment("web", run_id)
    await bed.replica("web-1-a", run_id, "Running", held=True)
    await bed.delete("web-1-a")
    await bed.replica("web-1-b", run_id, "Pending")
    await bed.deployment_status("web", ready=0)
    bed.run(run_id, "running", pod_name="web")  # not bound yet: any object may speak
    report = await _pass(bed)
    assert run_id not in by_run(report)
    assert bed.state(run_id)[0] == "running"
    await bed.strip_finalizers("web-1-a")


async def test_an_app_deleted_while_nobody_watched_ends_cancelled_stopped_and_goes(
        bed: AppBed) -> None:
    """The outcome finalizer held the Deployment, Terminating: it derives cancelled
    "Stopped" (an app ends only by being stopped; no cancel was asked), and the repair
    then releases the finalizer so the deletion completes."""
    run_id = new_run_id()
    uid = await bed.deployment("web", run_id, finalizer=True)
    await bed.replica("web-1-a", run_id, "Running")
    await bed.deployment_status("web", ready=1)
    bed.run(run_id, "running", pod_name="web", pod_uid=uid)
    await bed.delete_deployment("web")
    report = await _pass(bed)
    assert by_run(report)[run_id] == [(MismatchKind.APP_AHEAD, RepairOutcome.REPAIRED)]
    assert bed.state(run_id)[:2] == ("cancelled", "Stopped")
    assert await bed.get_deployment("web") is None, "the finalizer was released"
    assert run_id not in by_run(await _pass(bed))


async def test_an_app_run_bound_to_its_replica_before_the_kind_was_watched_is_adopted(
        bed: AppBed) -> None:
    """Started while deployments were off, the run is bound to the replica pod: the
    controller speaks for it all the same, and the repair keeps the binding (the
    platform refuses another uid), so a deleted app still ends the run."""
    run_id = new_run_id()
    await bed.deployment("web", run_id, finalizer=True)
    replica = await bed.replica("web-1-a", run_id, "Running")
    await bed.deployment_status("web", ready=1)
    bed.run(run_id, "running", pod_name="web-1-a", pod_uid=replica)
    assert run_id not in by_run(await _pass(bed)), "no uid_mismatch while it serves"
    await bed.delete_deployment("web")
    report = await _pass(bed)
    assert by_run(report)[run_id] == [(MismatchKind.APP_AHEAD, RepairOutcome.REPAIRED)]
    run = bed.platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"], run["pod_uid"]) == ("cancelled", "Stopped", replica)
    assert await bed.get_deployment("web") is None, "the finalizer was released"


async def test_an_app_whose_controller_is_gone_with_a_replica_left_ends_cancelled(
        bed: AppBed) -> None:
    """No finalizer held it (finalizer mode off): the Deployment is gone, its replica not
    yet collected. The controller only goes by being deleted: cancelled "Stopped"."""
    run_id = new_run_id()
    uid = await bed.deployment("web", run_id)
    await bed.replica("web-1-a", run_id, "Running")
    bed.run(run_id, "running", pod_name="web", pod_uid=uid)
    await bed.delete_deployment("web")
    report = await _pass(bed)
    assert by_run(report)[run_id] == [(MismatchKind.APP_LOST, RepairOutcome.REPAIRED)]
    assert bed.state(run_id)[:2] == ("cancelled", "Stopped")


async def test_progress_deadline_exceeded_is_repaired_failed(bed: AppBed) -> None:
    run_id = new_run_id()
    uid = await bed.deployment("web", run_id, finalizer=True)
    await bed.replica("web-1-a", run_id, "Pending")
    await bed.deployment_status("web", ready=0,
                                progressing=("False", "ProgressDeadlineExceeded"))
    bed.run(run_id, "running", pod_name="web", pod_uid=uid)
    report = await _pass(bed)
    assert by_run(report)[run_id] == [(MismatchKind.APP_AHEAD, RepairOutcome.REPAIRED)]
    assert bed.state(run_id)[:2] == ("failed", "ProgressDeadlineExceeded")
    deployment = await bed.get_deployment("web")
    assert deployment is not None
    assert OUTCOME_FINALIZER not in (deployment["metadata"].get("finalizers") or [])


async def test_a_finalizer_left_on_the_deployment_of_a_terminal_run_is_released(
        bed: AppBed) -> None:
    run_id = new_run_id()
    uid = await bed.deployment("web", run_id, finalizer=True)
    bed.run(run_id, "cancelled", pod_name="web", pod_uid=uid)
    report = await _pass(bed)
    assert by_run(report)[run_id] == [(MismatchKind.FINALIZER_LEFT, RepairOutcome.REPAIRED)]
    deployment = await bed.get_deployment("web")
    assert deployment is not None
    assert deployment["metadata"].get("finalizers") in (None, [])
