"""The objects the Job controller writes, as bodies: a Job backing a run, an attempt pod
it owns, and the Job status it writes while an attempt runs and once the Job succeeded.

Contract:
* Each builder returns a fresh JSON-ready dict; none talks to a server, so async tests,
  sync helpers and the benchmarks (bench.jobcost) share one copy of each shape.
* The shapes follow what kube-controller-manager's Job controller (v1.36) writes:
  the run id and kind labels on the Job and its pod template, the controller-uid and
  job-name labels and a controller owner reference on each attempt, startTime written
  once, `SuccessCriteriaMet` before `Complete`.
* Attempt pods are bound to ``sim-node-1``, a node no kubelet runs: only the caller
  writes their status.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def rfc3339(t: datetime | None = None) -> str:
    """A Kubernetes timestamp (one-second resolution), now unless `t` is given."""
    return (t or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_manifest(namespace: str, name: str, run_id: str, *, backoff_limit: int = 3,
                 suspend: bool = False, node: str | None = None,
                 grace_s: int | None = None) -> dict[str, Any]:
    """A Job backing run `run_id` (the run id and kind labels on it and its pods); with
    `node`, its pods are bound there at creation."""
    labels = {"sniffer.io/run-id": run_id, "sniffer.io/kind": "job"}
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [
        {"name": "main", "image": "registry.local/work:1"}]}
    if node is not None:
        pod_spec["nodeName"] = node
    if grace_s is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace_s
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"backoffLimit": backoff_limit, "suspend": suspend,
                 "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec}},
    }


def attempt_manifest(job: dict[str, Any], name: str, run_id: str) -> dict[str, Any]:
    """An attempt pod of `job`: labelled and owned as the Job controller makes them."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": meta["namespace"],
                     "labels": {"sniffer.io/run-id": run_id, "sniffer.io/kind": "job",
                                "batch.kubernetes.io/controller-uid": meta["uid"],
                                "batch.kubernetes.io/job-name": meta["name"]},
                     "ownerReferences": [{
                         "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                         "uid": meta["uid"], "controller": True,
                         "blockOwnerDeletion": True}]},
        "spec": {"nodeName": "sim-node-1", "restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "registry.local/work:1"}]},
    }


def active_status(started: str | None, *, failed: int = 0) -> dict[str, Any]:
    """Job status with one attempt active; `started` is the Job's startTime if set."""
    return {"startTime": started or rfc3339(), "active": 1, "ready": 0, "failed": failed}


def complete_status(*, failed: int = 0) -> dict[str, Any]:
    """Job status as the Job controller writes it when the Job succeeded."""
    now = rfc3339()
    return {
        "active": 0, "ready": 0, "succeeded": 1, "failed": failed, "completionTime": now,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "lastTransitionTime": now, "lastProbeTime": now}]}
