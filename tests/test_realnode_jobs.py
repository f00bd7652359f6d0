"""Job-backed runs on the real node, with the real Job controller (issue 14).

The session's real node runs kube-controller-manager (Job, TTL-after-finished and pod GC
controllers) and a real kubelet: each test submits a batch/v1 Job as a platform would
(the run id label on the Job and its pod template), runs `sniffer watch`, and checks
what the reference platform ends up holding, and its history of the run (a run must
never show a state it later leaves). Nothing here writes a status. These tests need
root and this kind of machine and FAIL (never skip) without the node; every wait is for
a condition, the bounds only turn a broken node into a failure.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from reconcile.app import Reconciler
from sniffer.kube import KubeClient
from sniffer.kubedecode import NotFound
from sniffer.platform import PlatformClient
from sniffer.podview import KIND_LABEL, OUTCOME_FINALIZER, RUN_ID_LABEL
from testbed.platform.launcher import PlatformServer
from testbed.simulator.kubeapi import PodApi
from tests.fixtures.kube import _purge_namespace
from tests.fixtures.realnode import RealNodeBed
from tests.fixtures.watcher import eventually, running_watcher, settings_for, watcher_env

BOUND_S = 180.0
"""A Job with retries on a 2-core node takes a while (the controller's backoff between
attempts is 10 s, 20 s, ...); this bound only turns a stuck node into a failure."""


class RealJobs:
    """Submits Jobs to the real node's API server and reads them back."""

    def __init__(self, kube: KubeClient, namespace: str, image: str) -> None:
        self.kube, self.namespace, self.image = kube, namespace, image

    def path(self, name: str = "") -> str:
        base = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        return f"{base}/{name}" if name else base

    async def submit(self, name: str, run_id: str, script: str, **spec: Any) -> None:
        labels = {RUN_ID_LABEL: run_id, KIND_LABEL: "job"}
        body = {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {"backoffLimit": 3, **spec, "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                         "enableServiceLinks": False, "automountServiceAccountToken": False,
                         "containers": [{"name": "main", "image": self.image,
                                         "imagePullPolicy": "Never",
                                         "command": ["sh", "-c", script]}]}}},
        }
        await self.kube.request_json("POST", self.path(), body=body)

    async def get(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.request_json("GET", self.path(name))
        except NotFound:
            return None

    async def delete(self, name: str) -> None:
        await self.kube.request_json("DELETE", self.path(name),
                                     query={"propagationPolicy": "Background"})


@pytest.fixture
async def real_jobs(real_node: RealNodeBed) -> AsyncIterator[RealJobs]:
    namespace = f"jobs-{secrets.token_hex(3)}"
    kube = await KubeClient.connect(kubeconfig=str(real_node.kube.kubeconfig), pool_size=16)
    await PodApi(kube, asyncio.Semaphore(4)).ensure_namespace(namespace)
    try:
        yield RealJobs(kube, namespace, real_node.node.image)
    finally:
        await kube.close()
        _purge_namespace(real_node.kube, namespace)


def _env(real_node: RealNodeBed, platform: PlatformServer, namespace: str) -> dict[str, str]:
    return watcher_env(real_node.kube, platform, namespace)


def history(platform: PlatformServer, run_id: str) -> list[str]:
    return [u["to_state"] for u in platform.updates() if u["run_id"] == run_id]


def terminal(platform: PlatformServer, run_id: str) -> bool:
    run = platform.get_run(run_id)
    return run is not None and run["state"] in ("succeeded", "failed", "cancelled")


def state(platform: PlatformServer, run_id: str) -> str | None:
    run = platform.get_run(run_id)
    return None if run is None else run["state"]


# Fails on its first two attempts, succeeds on the third: each attempt leaves a mark in
# a hostPath directory of the run (attempts are new pods; only the node outlives them)
# and fails while fewer than two earlier attempts left theirs.
FAIL_TWICE = ("n=$(ls /marks | wc -l); touch /marks/$HOSTNAME; "
              "if [ \"$n\" -lt 2 ]; then exit 3; fi; exit 0")


async def _marks_volume(jobs: RealJobs, name: str, run_id: str) -> None:
    """Submit the fail-twice Job with a hostPath volume the attempts share."""
    labels = {RUN_ID_LABEL: run_id, KIND_LABEL: "job"}
    marks = f"/tmp/sniffer-job-marks-{run_id}"
    body = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": jobs.namespace, "labels": labels},
        "spec": {"backoffLimit": 3, "template": {
            "metadata": {"labels": labels},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                     "enableServiceLinks": False, "automountServiceAccountToken": False,
                     "volumes": [{"name": "marks", "hostPath": {
                         "path": marks, "type": "DirectoryOrCreate"}}],
                     "containers": [{"name": "main", "image": jobs.image,
                                     "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", FAIL_TWICE],
                                     "volumeMounts": [{"name": "marks",
                                                       "mountPath": "/marks"}]}]}}},
    }
    await jobs.kube.request_json("POST", jobs.path(), body=body)


async def test_a_job_that_fails_twice_then_succeeds_ends_succeeded_never_failed(
        real_node: RealNodeBed, platform: PlatformServer, real_jobs: RealJobs) -> None:
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, pod_namespace=real_jobs.namespace, pod_name="thrice")
    async with running_watcher(settings_for(_env(real_node, platform, real_jobs.namespace))):
        await _marks_volume(real_jobs, "thrice", run_id)
        await eventually(lambda: terminal(platform, run_id), bound_s=BOUND_S)
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"], run["exit_code"]) == ("succeeded", "Completed", 0)
    assert "failed" not in history(platform, run_id)
    job = await real_jobs.get("thrice")
    assert job is not None
    assert job["status"].get("failed") == 2


async def test_a_job_that_exhausts_its_retries_fails_with_the_last_exit_code(
        real_node: RealNodeBed, platform: PlatformServer, real_jobs: RealJobs) -> None:
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, pod_namespace=real_jobs.namespace, pod_name="doomed")
    async with running_watcher(settings_for(_env(real_node, platform, real_jobs.namespace))):
        await real_jobs.submit("doomed", run_id, "exit 5", backoffLimit=1)
        await eventually(lambda: terminal(platform, run_id), bound_s=BOUND_S)
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"], run["exit_code"]) == (
        "failed", "BackoffLimitExceeded", 5)


async def test_pod_failure_policy_fail_job_on_exit_code_42(
        real_node: RealNodeBed, platform: PlatformServer, real_jobs: RealJobs) -> None:
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, pod_namespace=real_jobs.namespace, pod_name="policy")
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {
        "containerName": "main", "operator": "In", "values": [42]}}]}
    async with running_watcher(settings_for(_env(real_node, platform, real_jobs.namespace))):
        await real_jobs.submit("policy", run_id, "exit 42", backoffLimit=6,
                               podFailurePolicy=policy)
        await eventually(lambda: terminal(platform, run_id), bound_s=BOUND_S)
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"], run["exit_code"]) == ("failed", "PodFailurePolicy", 42)


async def test_active_deadline_fails_the_job_with_deadline_exceeded(
        real_node: RealNodeBed, platform: PlatformServer, real_jobs: RealJobs) -> None:
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, pod_namespace=real_jobs.namespace, pod_name="late")
    async with running_watcher(settings_for(_env(real_node, platform, real_jobs.namespace))):
        await real_jobs.submit("late", run_id, "trap 'exit 0' TERM; sleep 600 & wait",
                               activeDeadlineSeconds=5)
        await eventually(lambda: terminal(platform, run_id), bound_s=BOUND_S)
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"]) == ("failed", "DeadlineExceeded")


async def test_a_suspended_job_stays_queued_with_the_finalizer_on(
        real_node: RealNodeBed, platform: PlatformServer, real_jobs: RealJobs) -> None:
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, pod_namespace=real_jobs.namespace, pod_name="parked")

    async def held() -> bool:
        job = await real_jobs.get("parked")
        return job is not None and OUTCOME_FINALIZER in (job["metadata"].get("finalizers")
                                                         or [])

    async with running_watcher(settings_for(_env(real_node, platform, real_jobs.namespace))):
        await real_jobs.submit("parked", run_id, "exit 0", suspend=True)
        # The finalizer is added once the handler has read the run and derived queued.
        await eventually(held, bound_s=BOUND_S)
    assert state(platform, run_id) == "queued"
    assert history(platform, run_id) == []


async def test_a_job_deleted_by_the_platforms_cancel_ends_cancelled(
        real_node: RealNodeBed, platform: PlatformServer, real_jobs: RealJobs) -> None:
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, pod_namespace=real_jobs.namespace, pod_name="stopped")
    async with running_watcher(settings_for(_env(real_node, platform, real_jobs.namespace))):
        await real_jobs.submit("stopped", run_id, "trap 'exit 0' TERM; sleep 600 & wait")
        await eventually(lambda: state(platform, run_id) == "running", bound_s=BOUND_S)
        platform.cancel_run(run_id)
        await real_jobs.delete("stopped")
        await eventually(lambda: terminal(platform, run_id), bound_s=BOUND_S)
        await eventually(lambda: _gone(real_jobs, "stopped"), bound_s=BOUND_S)
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"]) == ("cancelled", "Cancelled")
    assert history(platform, run_id) == ["running", "cancelled"]


async def _gone(jobs: RealJobs, name: str) -> bool:
    return await jobs.get(name) is None


async def test_a_finished_job_removed_by_ttl_while_the_watcher_was_down_is_reconciled_right(
        real_node: RealNodeBed, platform: PlatformServer, real_jobs: RealJobs) -> None:
    run_id = f"run-{secrets.token_hex(8)}"
    platform.create_run(run_id, pod_namespace=real_jobs.namespace, pod_name="brief")
    env = _env(real_node, platform, real_jobs.namespace)

    async def held() -> bool:
        job = await real_jobs.get("brief")
        return job is not None and OUTCOME_FINALIZER in (job["metadata"].get("finalizers")
                                                         or [])

    async def removed_by_ttl() -> bool:
        job = await real_jobs.get("brief")
        return job is not None and job["metadata"].get("deletionTimestamp") is not None

    async with running_watcher(settings_for(env)):
        await real_jobs.submit("brief", run_id, "sleep 5; exit 0", ttlSecondsAfterFinished=0)
        await eventually(held, bound_s=BOUND_S)
    # Watcher down: the Job runs, succeeds, and the TTL controller deletes it at once;
    # the finalizer keeps it (finished, its Complete condition on) for the reconciler.
    await eventually(removed_by_ttl, bound_s=BOUND_S)
    assert state(platform, run_id) in ("queued", "running")
    settings = settings_for({**env, "SNIFFER_RECONCILE_GRACE_PERIOD_S": "0"})
    api = PlatformClient(platform.url, platform.token_file)
    try:
        reconciler = Reconciler(settings, kube=real_jobs.kube, platform=api,
                                retry_delay_s=0.01)
        await reconciler.run_pass(asyncio.Event())
    finally:
        await api.close()
    run = platform.get_run(run_id)
    assert run is not None
    assert (run["state"], run["reason"], run["exit_code"]) == ("succeeded", "Completed", 0)
    assert "failed" not in history(platform, run_id)
    # The reconciler released the finalizer it found acknowledged: the TTL deletion ends.
    await eventually(lambda: _gone(real_jobs, "brief"), bound_s=BOUND_S)
