"""The reconciler for runs backed by a batch/v1 Job, on the testbed: a real kube-apiserver
and the reference Platform over HTTP.

No Job controller runs here: each test creates the Job, writes its status through the
status subresource in the shapes the Job controller writes (as tests/test_jobs.py
describes them), and creates the attempt pods the controller would (owner reference and
controller-uid label), with the kubelet's statuses. No garbage collector runs either, so
deleting a Job leaves its pods exactly as a test wants them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from reconcile.diff import Mismatch, MismatchKind
from reconcile.repair import RepairHooks, RepairOutcome
from sniffer.kube import KubeClient
from sniffer.kubedecode import NotFound
from sniffer.platform import PlatformClient
from sniffer.podview import OUTCOME_FINALIZER, RUN_ID_LABEL
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from tests.fixtures.kubehttp import MERGE_PATCH
from tests.test_reconcile import Bed, by_run, new_run_id
from tests.test_reconcile_diff import stamp


def cond(type_: str, at: float, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True", "lastProbeTime": stamp(at),
            "lastTransitionTime": stamp(at), "reason": reason, "message": message}


def attempt_status(phase: str, t: float, exit_code: int = 1,
                   message: str | None = None) -> dict[str, Any]:
    """A one-container attempt pod's status as the kubelet writes it, started at `t`."""
    state: dict[str, Any]
    if phase == "Running":
        state = {"running": {"startedAt": stamp(t + 1)}}
    elif phase == "Pending":
        state = {"waiting": {"reason": "ContainerCreating"}}
    else:
        code = 0 if phase == "Succeeded" else exit_code
        term: dict[str, Any] = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                "startedAt": stamp(t + 1), "finishedAt": stamp(t + 5)}
        if message:
            term["message"] = message
        state = {"terminated": term}
    return {"phase": phase, "startTime": stamp(t), "containerStatuses": [
        {"name": "main", "image": "registry.example/train:1", "imageID": "", "ready": False,
         "started": phase == "Running", "restartCount": 0, "state": state}]}


class JobBed(Bed):
    """`Bed` with Jobs and their attempt pods."""

    def jobs_path(self, name: str | None = None) -> str:
        return KubeClient.jobs_path(self.ns, name)

    async def job(self, name: str, run_id: str, *, backoff_limit: int = 3,
                  suspend: bool = False, hold: bool = False, finalizer: bool = False) -> str:
        """Create a Job carrying the run id (on it and its pod template); its uid.
        `finalizer`: the watcher's outcome finalizer is on it."""
        labels = {RUN_ID_LABEL: run_id}
        meta: dict[str, Any] = {"name": name, "namespace": self.ns, "labels": labels,
                                "finalizers": []}
        if hold:  # someone else's finalizer, so a deletion leaves the Job Terminating
            meta["finalizers"].append("example.com/hold")
        if finalizer:
            meta["finalizers"].append(OUTCOME_FINALIZER)
        created = await self.kube.request_json("POST", self.jobs_path(), body={
            "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"backoffLimit": backoff_limit, "suspend": suspend,
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "restartPolicy": "Never",
                         "containers": [{"name": "main", "image": "registry.example/train:1"}]}}}})
        return str(created["metadata"]["uid"])

    async def job_status(self, name: str, status: dict[str, Any]) -> None:
        await self.kube.request_json("PATCH", self.jobs_path(name) + "/status",
                                     body={"status": status}, content_type=MERGE_PATCH)

    async def delete_job(self, name: str) -> None:
        """Delete as the TTL controller does (background propagation: the Job goes at
        once unless a finalizer holds it; no garbage collector runs to remove its pods)."""
        await self.kube.request_json("DELETE", self.jobs_path(name),
                                     query={"propagationPolicy": "Background"})

    async def attempt(self, name: str, job: str, job_uid: str, run_id: str, phase: str,
                      t: float, **kw: Any) -> str:
        """Create an attempt pod of `job` as the Job controller does, then give it the
        kubelet's status for `phase`; its uid."""
        labels = {RUN_ID_LABEL: run_id, "batch.kubernetes.io/controller-uid": job_uid,
                  "batch.kubernetes.io/job-name": job, "controller-uid": job_uid,
                  "job-name": job}
        created = await self.kube.request_json("POST", KubeClient.pods_path(self.ns), body={
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns, "labels": labels,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                              "name": job, "uid": job_uid,
                                              "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {"nodeName": "node-a-1", "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "registry.example/train:1"}]}})
        await self.kube.request_json(
            "PATCH", KubeClient.pods_path(self.ns, name) + "/status",
            body={"status": attempt_status(phase, t, **kw)}, content_type=MERGE_PATCH)
        return str(created["metadata"]["uid"])

    async def job_finalizers(self, name: str) -> list[str]:
        job = await self.kube.request_json("GET", self.jobs_path(name))
        return list(job["metadata"].get("finalizers") or [])

    def run_record(self, run_id: str) -> dict[str, Any]:
        run = self.platform.get_run(run_id)
        assert run is not None
        return run


@pytest.fixture
async def bed(apiserver: ApiServer, platform: PlatformServer,
              namespace: str) -> AsyncIterator[JobBed]:
    kube = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig), pool_size=16)
    api = PlatformClient(platform.url, platform.token_file)
    try:
        yield JobBed(apiserver, platform, namespace, kube, api)
    finally:
        await api.close()
        await kube.close()


T = time.time() - 600  # the Jobs of these tests started ten minutes ago


async def test_a_failed_attempt_the_job_retries_is_written_as_running_not_failed(
        bed: JobBed) -> None:
    run_id = new_run_id()
    uid = await bed.job("train", run_id)
    await bed.job_status("train", {"startTime": stamp(T), "active": 1, "ready": 1,
                                   "failed": 1})
    await bed.attempt("train-a", "train", uid, run_id, "Failed", T, exit_code=1)
    await bed.attempt("train-b", "train", uid, run_id, "Running", T + 60)
    bed.run(run_id, pod_name="train")
    report = await bed.reconcile()
    assert by_run(report)[run_id] == [(MismatchKind.JOB_AHEAD, RepairOutcome.REPAIRED)]
    run = bed.run_record(run_id)
    assert run["state"] == "running"
    assert (run["pod_uid"], run["pod_name"]) == (uid, "train"), "the run is bound to the Job"
    assert (run["attempts"], run["attempt_pod"]) == (2, "train-b")
    assert run_id not in by_run(await bed.reconcile()), "a second pass finds nothing"


async def test_a_run_already_running_gets_the_attempts_its_job_made_since(
        bed: JobBed) -> None:
    """The watcher was down across a retry: the state is right, the count is behind."""
    run_id = new_run_id()
    uid = await bed.job("train", run_id)
    await bed.job_status("train", {"startTime": stamp(T), "active": 1, "ready": 1,
                                   "failed": 1})
    await bed.attempt("train-a", "train", uid, run_id, "Failed", T, exit_code=1)
    await bed.attempt("train-b", "train", uid, run_id, "Running", T + 60)
    bed.run(run_id, "running", pod_name="train", pod_uid=uid)
    version = bed.run_record(run_id)["version"]
    report = await bed.reconcile()
    assert by_run(report)[run_id] == [(MismatchKind.JOB_AHEAD, RepairOutcome.REPAIRED)]
    run = bed.run_record(run_id)
    assert (run["state"], run["attempts"], run["attempt_pod"]) == ("running", 2, "train-b")
    assert run["version"] == version + 1, "one write: the attempts raise"
    assert run_id not in by_run(await bed.reconcile()), "a second pass finds nothing"


async def test_a_job_that_exhausted_its_retries_ends_failed_with_the_last_exit_code(
        bed: JobBed) -> None:
    run_id = new_run_id()
    uid = await bed.job("train", run_id, backoff_limit=2)
    for i, (name, code) in enumerate((("train-a", 1), ("train-b", 1), ("train-c", 3))):
        await bed.attempt(name, "train", uid, run_id, "Failed", T + 60 * i, exit_code=code,
                          message="disk full" if code == 3 else None)
    await bed.job_status("train", {
        "startTime": stamp(T), "failed": 3,
        "conditions": [cond("FailureTarget", T + 200, "BackoffLimitExceeded",
                            "Job has reached the specified backoff limit"),
                       cond("Failed", T + 201, "BackoffLimitExceeded",
                            "Job has reached the specified backoff limit")]})
    bed.run(run_id, "running", pod_name="train", pod_uid=uid)
    report = await bed.reconcile()
    assert by_run(report)[run_id] == [(MismatchKind.JOB_AHEAD, RepairOutcome.REPAIRED)]
    run = bed.run_record(run_id)
    assert (run["state"], run["reason"], run["exit_code"], run["message"]) == (
        "failed", "BackoffLimitExceeded", 3, "disk full")
    assert (run["attempts"], run["attempt_pod"]) == (3, "train-c")
    assert run_id not in by_run(await bed.reconcile())


async def test_a_failed_job_whose_last_attempt_pod_is_gone_has_no_exit_code_not_an_older_one(
        bed: JobBed) -> None:
    run_id = new_run_id()
    uid = await bed.job("train", run_id, backoff_limit=1)
    await bed.attempt("train-a", "train", uid, run_id, "Failed", T, exit_code=11)
    # train-b failed too (the Job counts 2) but its pod was removed before the pass.
    await bed.job_status("train", {
        "startTime": stamp(T), "failed": 2,
        "conditions": [cond("FailureTarget", T + 200, "BackoffLimitExceeded", "limit"),
                       cond("Failed", T + 201, "BackoffLimitExceeded", "limit")]})
    bed.run(run_id, "running", pod_name="train", pod_uid=uid)
    report = await bed.reconcile()
    assert by_run(report)[run_id] == [(MismatchKind.JOB_AHEAD, RepairOutcome.REPAIRED)]
    run = bed.run_record(run_id)
    assert (run["state"], run["reason"], run["exit_code"]) == (
        "failed", "BackoffLimitExceeded", None)


async def test_a_finished_job_removed_before_anyone_watched_ends_as_its_pods_say(
        bed: JobBed) -> None:
    """The TTL controller deleted a completed Job while the watcher was down; its
    succeeded attempt is still there."""
    run_id = new_run_id()
    uid = await bed.job("train", run_id)
    await bed.attempt("train-a", "train", uid, run_id, "Failed", T, exit_code=1)
    await bed.attempt("train-b", "train", uid, run_id, "Succeeded", T + 60)
    bed.run(run_id, "running", pod_name="train", pod_uid=uid)
    await bed.delete_job("train")
    report = await bed.reconcile()
    assert by_run(report)[run_id] == [(MismatchKind.JOB_LOST, RepairOutcome.REPAIRED)]
    assert bed.state(run_id)[0] == "succeeded"
    assert bed.run_record(run_id)["attempts"] == 2
    assert run_id not in by_run(await bed.reconcile())


async def test_a_job_gone_with_only_failed_attempts_left_is_lost(bed: JobBed) -> None:
    """A failed attempt alone cannot say whether the Job would have retried."""
    run_id = new_run_id()
    uid = await bed.job("train", run_id)
    await bed.attempt("train-a", "train", uid, run_id, "Failed", T, exit_code=1)
    bed.run(run_id, "running", pod_name="train", pod_uid=uid)
    await bed.delete_job("train")
    await bed.reconcile()
    assert bed.state(run_id) == ("failed", "PodLost", "pod lost")


async def test_a_job_and_its_pods_gone_is_lost_or_cancelled(bed: JobBed) -> None:
    lost, cancelled = new_run_id(), new_run_id()
    for run_id in (lost, cancelled):
        uid = await bed.job(f"train-{run_id}", run_id)
        bed.run(run_id, "running", pod_name=f"train-{run_id}", pod_uid=uid)
        await bed.delete_job(f"train-{run_id}")
    bed.platform.cancel_run(cancelled)
    report = await bed.reconcile()
    assert by_run(report)[lost] == [(MismatchKind.POD_LOST, RepairOutcome.REPAIRED)]
    assert bed.state(lost) == ("failed", "PodLost", "pod lost")
    assert bed.state(cancelled)[:2] == ("cancelled", "Cancelled")


async def test_a_suspended_job_stays_queued_until_the_platform_cancels_it(
        bed: JobBed) -> None:
    run_id = new_run_id()
    await bed.job("train", run_id, suspend=True)
    await bed.job_status("train", {"conditions": [cond("Suspended", T, "JobSuspended",
                                                       "Job suspended")]})
    bed.run(run_id, pod_name="train")
    assert run_id not in by_run(await bed.reconcile())
    assert bed.state(run_id)[0] == "queued"
    bed.platform.cancel_run(run_id)
    report = await bed.reconcile()
    assert by_run(report)[run_id] == [(MismatchKind.JOB_AHEAD, RepairOutcome.REPAIRED)]
    assert bed.state(run_id) == ("cancelled", "Cancelled", "cancel requested; job suspended")


async def test_a_job_deleted_by_the_platforms_cancel_ends_cancelled(bed: JobBed) -> None:
    run_id = new_run_id()
    uid = await bed.job("train", run_id, hold=True)
    await bed.job_status("train", {"startTime": stamp(T), "active": 1, "ready": 1})
    await bed.attempt("train-a", "train", uid, run_id, "Running", T)
    bed.run(run_id, "running", pod_name="train", pod_uid=uid)
    bed.platform.cancel_run(run_id)
    await bed.delete_job("train")  # Terminating: held by the other finalizer
    try:
        await bed.reconcile()
        assert bed.state(run_id) == ("cancelled", "Cancelled", "cancel requested; job deleted")
    finally:
        await bed.kube.request_json("PATCH", bed.jobs_path("train"),
                                    body={"metadata": {"finalizers": None}},
                                    content_type=MERGE_PATCH)


async def test_the_repair_writes_the_job_as_the_re_read_shows_it(bed: JobBed) -> None:
    """The Job completed between the snapshot and the repair: the write is the fresh
    judgement (succeeded), never the planned one (running)."""
    run_id = new_run_id()
    uid = await bed.job("train", run_id)
    await bed.job_status("train", {"startTime": stamp(T), "active": 1, "ready": 1})
    await bed.attempt("train-a", "train", uid, run_id, "Running", T)
    bed.run(run_id, pod_name="train")

    async def completes(m: Mismatch) -> None:
        if m.run_id == run_id:
            await bed.kube.request_json(
                "PATCH", KubeClient.pods_path(bed.ns, "train-a") + "/status",
                body={"status": attempt_status("Succeeded", T)}, content_type=MERGE_PATCH)
            await bed.job_status("train", {
                "active": 0, "ready": 0, "succeeded": 1, "completionTime": stamp(T + 9),
                "conditions": [cond("SuccessCriteriaMet", T + 8, "CompletionsReached"),
                               cond("Complete", T + 9, "CompletionsReached")]})

    report = await bed.reconcile(hooks=RepairHooks(before_reread=completes))
    assert by_run(report)[run_id] == [(MismatchKind.JOB_AHEAD, RepairOutcome.REPAIRED)]
    run = bed.run_record(run_id)
    assert (run["state"], run["exit_code"], run["attempts"]) == ("succeeded", 0, 1)


async def test_without_jobs_watched_a_jobs_pods_are_judged_as_bare_pods(
        bed: JobBed) -> None:
    """`kube.kinds: [pods]` keeps today's behaviour: the attempt pod speaks for the run."""
    run_id = new_run_id()
    uid = await bed.job("train", run_id)
    await bed.attempt("train-a", "train", uid, run_id, "Failed", T, exit_code=2)
    bed.run(run_id, pod_name="train-a")
    settings = replace(bed.settings, kube=replace(bed.settings.kube, kinds=("pods",)))
    report = await bed.reconciler(settings=settings).run_pass(asyncio.Event())
    assert by_run(report)[run_id] == [(MismatchKind.POD_AHEAD, RepairOutcome.REPAIRED)]
    assert bed.state(run_id)[0] == "failed"


async def test_a_terminal_write_releases_the_jobs_outcome_finalizer(bed: JobBed) -> None:
    """The Job was deleted (TTL) while the watcher was down; its outcome finalizer held
    it, so the reconciler reads the outcome and then lets the Job go."""
    run_id = new_run_id()
    uid = await bed.job("train", run_id, finalizer=True)
    await bed.job_status("train", {
        "startTime": stamp(T), "succeeded": 1, "completionTime": stamp(T + 9),
        "conditions": [cond("SuccessCriteriaMet", T + 8, "CompletionsReached"),
                       cond("Complete", T + 9, "CompletionsReached")]})
    bed.run(run_id, "running", pod_name="train", pod_uid=uid)
    await bed.delete_job("train")  # held: Terminating
    report = await bed.reconcile()
    assert by_run(report)[run_id] == [(MismatchKind.JOB_AHEAD, RepairOutcome.REPAIRED)]
    assert bed.state(run_id)[0] == "succeeded"
    [item] = [r for r in report.results if r.mismatch.run_id == run_id]
    assert item.action.endswith(f"removed finalizer {OUTCOME_FINALIZER} from the job")
    with pytest.raises(NotFound):  # the finalizer was the last thing holding it
        await bed.job_finalizers("train")


async def test_a_finalizer_left_on_the_job_of_a_terminal_run_is_released(
        bed: JobBed) -> None:
    run_id = new_run_id()
    uid = await bed.job("train", run_id, finalizer=True)
    bed.run(run_id, "failed", pod_name="train", pod_uid=uid)
    report = await bed.reconcile()
    assert by_run(report)[run_id] == [(MismatchKind.FINALIZER_LEFT, RepairOutcome.REPAIRED)]
    assert await bed.job_finalizers("train") == []
    assert run_id not in by_run(await bed.reconcile())
