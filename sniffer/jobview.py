"""The projection of a raw batch/v1 Job object into the small immutable record Sniffer keeps.

Contract:

* `project_job(obj)` returns a `JobView` or raises `MalformedJob` naming the bad field; for
  any JSON-shaped input (whatever `json.loads` can return) it raises nothing else.
  `MalformedJob` is a `MalformedPod`, so every caller that logs, counts and skips a bad pod
  does the same for a bad Job without a second except clause.
* A `JobView` keeps only what Sniffer reads (`sniffer.jobs.derive_job`, the Job handler,
  the reconciler); it is immutable, hashable and compares by value.
* Times are float seconds since the Unix epoch (UTC); JSON null and a missing field are
  None. Counts absent from the status read as 0 (the Job controller omits zero counts).
* Of the conditions only the ones that decide a run are kept (`KEPT_JOB_CONDITIONS`), the
  last of each type if the status repeats one, in status order.
* Labels and annotations mean what they mean on a pod: `sniffer.io/run-id`,
  `sniffer.io/kind` (default job), `sniffer.io/cancel-requested`, `sniffer.io/traceparent`.
* `owner` is the Job's controller reference (a CronJob, say), None for a Job nobody owns.
* Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from sniffer.conditions import Condition, read_conditions, read_count
from sniffer.ownership import Owner, controller_of
from sniffer.podfields import (
    MalformedPod,
    read_bool,
    read_int,
    read_list,
    read_map,
    read_str,
    read_time,
    required_str,
    shared,
    traceparent,
)
from sniffer.podview import (
    CANCEL_ANNOTATION,
    TRACEPARENT_ANNOTATION,
    WorkloadKind,
    run_labels,
)

__all__ = ["KEPT_JOB_CONDITIONS", "JobView", "MalformedJob", "project_job"]

KEPT_JOB_CONDITIONS = ("Complete", "SuccessCriteriaMet", "Failed", "FailureTarget",
                       "Suspended")


class MalformedJob(MalformedPod):
    """The object is not a Job Sniffer can use; `reason` names the bad field."""


@dataclass(frozen=True, slots=True)
class JobView:
    """The kept projection of one Job.

    `key` is "namespace/name". `suspend`, `backoff_limit`, `active_deadline_s` and
    `completions` are the spec's (None where the spec leaves the default); `active`,
    `ready`, `succeeded`, `failed` and `terminating` the status counts (0 when absent).
    `conditions` holds the kept conditions; `condition(type)` finds one."""

    namespace: str
    key: str
    uid: str
    resource_version: str
    run_id: str | None
    kind: WorkloadKind
    cancel_requested: bool
    traceparent: str | None
    created_at: float
    suspend: bool
    backoff_limit: int | None
    active_deadline_s: int | None
    completions: int | None
    active: int
    ready: int
    succeeded: int
    failed: int
    terminating: int
    uncounted_failed: int
    """Failed pods the controller has seen but not yet moved into `failed`
    (`status.uncountedTerminatedPods.failed`, a list of uids)."""
    start_time: float | None
    completion_time: float | None
    conditions: tuple[Condition, ...]
    deletion_timestamp: float | None
    finalizers: tuple[str, ...]
    owner: Owner | None
    """The Job's controller (a CronJob, say), None for a Job nobody owns."""
    final_state_unknown: bool = False
    """History, not projection: a relist found the Job gone and no event showed its
    deletion, so this view is the last one seen, not its end. Set by the store on such
    a tombstone; `project_job` leaves it False."""

    @property
    def name(self) -> str:
        """metadata.name (cut from `key`)."""
        return self.key[len(self.namespace) + 1:]

    def condition(self, type_: str) -> Condition | None:
        """The kept condition of that type, or None."""
        for cond in self.conditions:
            if cond.type == type_:
                return cond
        return None

    def holds(self, type_: str) -> Condition | None:
        """The kept condition of that type if its status is "True", else None."""
        cond = self.condition(type_)
        return cond if cond is not None and cond.status == "True" else None


def project_job(obj: object) -> JobView:
    """Project a Job object (as `json.loads` gives it) into a `JobView`.

    Raises `MalformedJob` for anything that is not a usable Job: missing or mistyped
    metadata, name or uid, wrong types anywhere it reads, unparseable timestamps,
    negative counts, an invalid run id or kind label. Raises nothing else."""
    try:
        return _project(obj)
    except MalformedJob:
        raise
    except MalformedPod as bad:  # the shared field readers name the field; say "Job"
        raise MalformedJob(bad.reason) from None


def _project(obj: object) -> JobView:
    job = read_map(obj, "job", required=True)
    meta = read_map(job.get("metadata"), "metadata", required=True)
    spec = read_map(job.get("spec"), "spec")
    status = read_map(job.get("status"), "status")
    run_id, kind = run_labels(meta, MalformedJob)
    annotations = read_map(meta.get("annotations"), "metadata.annotations")
    cancel = read_str(annotations.get(CANCEL_ANNOTATION),
                      f"metadata.annotations[{CANCEL_ANNOTATION!r}]")
    trace = read_str(annotations.get(TRACEPARENT_ANNOTATION),
                     f"metadata.annotations[{TRACEPARENT_ANNOTATION!r}]")
    created_at = read_time(meta.get("creationTimestamp"), "metadata.creationTimestamp")
    if created_at is None:
        raise MalformedJob("metadata.creationTimestamp: required, got nothing")
    namespace = sys.intern(required_str(meta.get("namespace"), "metadata.namespace"))
    name = required_str(meta.get("name"), "metadata.name")
    return JobView(
        namespace=namespace,
        key=f"{namespace}/{name}",
        uid=required_str(meta.get("uid"), "metadata.uid"),
        resource_version=read_str(meta.get("resourceVersion"), "metadata.resourceVersion") or "",
        run_id=run_id,
        kind=kind,
        cancel_requested=cancel == "true",
        traceparent=traceparent(trace),
        created_at=created_at,
        suspend=read_bool(spec.get("suspend"), "spec.suspend"),
        backoff_limit=read_int(spec.get("backoffLimit"), "spec.backoffLimit", minimum=0),
        active_deadline_s=read_int(spec.get("activeDeadlineSeconds"),
                                   "spec.activeDeadlineSeconds", minimum=0),
        completions=read_int(spec.get("completions"), "spec.completions", minimum=0),
        active=read_count(status, "active"),
        ready=read_count(status, "ready"),
        succeeded=read_count(status, "succeeded"),
        failed=read_count(status, "failed"),
        terminating=read_count(status, "terminating"),
        uncounted_failed=len(read_list(read_map(
            status.get("uncountedTerminatedPods"), "status.uncountedTerminatedPods",
        ).get("failed"), "status.uncountedTerminatedPods.failed")),
        start_time=read_time(status.get("startTime"), "status.startTime"),
        completion_time=read_time(status.get("completionTime"), "status.completionTime"),
        conditions=read_conditions(status, KEPT_JOB_CONDITIONS),
        deletion_timestamp=read_time(meta.get("deletionTimestamp"), "metadata.deletionTimestamp"),
        finalizers=shared(tuple(
            sys.intern(required_str(item, f"metadata.finalizers[{i}]"))
            for i, item in enumerate(read_list(meta.get("finalizers"), "metadata.finalizers")))),
        owner=controller_of(meta),
    )
