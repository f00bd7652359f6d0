"""`testbed.simulator.jobdriver`: which pods are a run's attempts, how each is played, and
when a Job-backed run has ended. No servers: a fake writer stands in for the API server
(the whole driver runs against the real Job controller in the `job-retries` scenario)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sniffer.kube import KubeClient
from testbed.simulator import jobdriver
from testbed.simulator.jobdriver import JobSimConfig, _JobDriver, job_manifest
from testbed.simulator.jobplans import JobPlan
from testbed.simulator.kubeapi import Accepted, PodApi
from testbed.simulator.records import RecordLog
from testbed.simulator.runs import RunsClient


class StatusWriter:
    """The one PodApi call the attempts make: status patches, answered at once."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, dict[str, Any]]] = []

    async def patch_status(self, ns: str, name: str, status: dict[str, Any],
                           **_: Any) -> Accepted:
        self.statuses.append((name, status))
        return Accepted({"kind": "Pod", "metadata": {"name": name, "namespace": ns},
                         "spec": POD_SPEC, "status": status}, 1.0, 1.1)


POD_SPEC = {"nodeName": "sim-node-0", "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "registry.local/work:1"}]}


def plan(lifecycle: str, attempts: tuple[int, ...]) -> JobPlan:
    return JobPlan(index=0, run_id="r-1", namespace="ns", job_name="job-r-1",
                   lifecycle=lifecycle, backoff_limit=3, attempts=attempts,
                   durations=tuple(0.0 for _ in attempts), node="sim-node-0")


def driver(p: JobPlan) -> tuple[_JobDriver, StatusWriter]:
    writer = StatusWriter()
    config = JobSimConfig(jobs=1, rate=1, namespace="ns", seed=1, run_prefix="r")
    d = _JobDriver(cast(KubeClient, None), cast(PodApi, writer), cast(RunsClient, None),
                   config, [p], RecordLog())
    d.by_run[p.run_id] = d.by_job[p.job_name] = jobdriver._Run(p)
    return d, writer


def attempt_pod(uid: str, *, owned: bool = True, deleting: bool = False) -> dict[str, Any]:
    labels = {"sniffer.io/run-id": "r-1", "sniffer.io/kind": "job"}
    if owned:
        labels["batch.kubernetes.io/controller-uid"] = "job-uid"
    meta: dict[str, Any] = {"name": f"job-r-1-{uid}", "namespace": "ns", "uid": uid,
                            "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    return {"kind": "Pod", "metadata": meta, "spec": POD_SPEC, "status": {"phase": "Pending"}}


async def idle(d: _JobDriver) -> None:
    """Wait for the attempts started so far to be played."""
    await asyncio.gather(*list(d._tasks))


def exit_code(status: dict[str, Any]) -> int:
    return int(status["containerStatuses"][0]["state"]["terminated"]["exitCode"])


async def test_each_new_pod_of_the_job_is_the_next_attempt_and_ends_as_planned(
        monkeypatch: Any) -> None:
    monkeypatch.setattr(jobdriver, "START_DELAY_S", 0.0)
    d, writer = driver(plan("retry-once", (7, 0)))
    d.on_pod("ADDED", attempt_pod("a"))
    d.on_pod("MODIFIED", attempt_pod("a"))  # the same attempt again: played once
    await idle(d)
    d.on_pod("ADDED", attempt_pod("b"))
    await idle(d)
    phases = [(name, s.get("phase")) for name, s in writer.statuses]
    assert phases == [("job-r-1-a", "Running"), ("job-r-1-a", "Failed"),
                      ("job-r-1-b", "Running"), ("job-r-1-b", "Succeeded")]
    assert exit_code(writer.statuses[1][1]) == 7
    # An attempt's end never ends the run: the Job's condition does.
    assert {c.expect for c in d.records.changes} == {"running"}
    assert not d.by_run["r-1"].ended.is_set()


async def test_pods_not_made_by_the_job_controller_or_being_deleted_are_not_attempts() -> None:
    d, writer = driver(plan("first-try", (0,)))
    d.on_pod("ADDED", attempt_pod("x", owned=False))
    d.on_pod("ADDED", attempt_pod("y", deleting=True))
    await idle(d)
    assert writer.statuses == []
    assert d.by_run["r-1"].attempts == []


async def test_an_attempt_beyond_the_plan_is_an_error() -> None:
    d, writer = driver(plan("first-try", (0,)))
    d.by_run["r-1"].attempts.append("a")
    d.on_pod("ADDED", attempt_pod("b"))
    await idle(d)
    assert writer.statuses == []
    assert [e.error for e in d.records.errors] == ["unplanned attempt 2 (job-r-1-b)"]


def job(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "job-r-1"}, "status": {"conditions": [
        {"type": t, "status": "True", "reason": r} for t, r in conditions]}}


async def test_the_run_ends_at_the_jobs_first_terminal_condition() -> None:
    d, _ = driver(plan("exhausted", (1, 2, 3, 4)))
    d.by_run["r-1"].last_sent = 5.0
    d.on_job("MODIFIED", {"metadata": {"name": "job-r-1"}, "status": {"active": 1}})
    assert not d.by_run["r-1"].ended.is_set()
    d.on_job("MODIFIED", job(("FailureTarget", "BackoffLimitExceeded")))
    d.on_job("MODIFIED", job(("FailureTarget", "BackoffLimitExceeded"),
                             ("Failed", "BackoffLimitExceeded")))
    assert d.by_run["r-1"].ended.is_set()
    [end] = d.records.changes
    assert (end.op, end.actor, end.expect) == ("job-condition", "job-controller", "failed")
    assert end.sent_at == 5.0  # written after the last attempt's end was sent


async def test_a_cancelled_run_ends_when_its_job_is_gone_not_at_a_condition() -> None:
    d, _ = driver(plan("cancelled", (0,)))
    d.on_job("MODIFIED", job(("Complete", "CompletionsReached")))
    assert not d.by_run["r-1"].ended.is_set()
    d.on_job("DELETED", job())
    assert d.by_run["r-1"].ended.is_set()


def test_the_jobs_pods_are_bound_to_its_simulated_node_and_carry_the_run() -> None:
    manifest = job_manifest(plan("retry-once", (1, 0)))
    template = manifest["spec"]["template"]
    assert manifest["spec"]["backoffLimit"] == 3
    assert template["spec"]["nodeName"] == "sim-node-0"
    assert template["metadata"]["labels"] == {"sniffer.io/run-id": "r-1",
                                              "sniffer.io/kind": "job"}

