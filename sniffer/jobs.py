"""Job → workload state, and which pods are a Job's attempts: pure functions.

A run backed by a batch/v1 Job (the run id label on the Job, and so on its pods) takes its
state from the Job, not from any one pod: a failed pod the Job will retry is an attempt,
not the run's end. The pod path leaves such pods to the Job path (`owned_by_job`).

Contract:

* `derive_job(job, pods, now=, policy=, cancel_requested=)` returns a `Derived` (the type
  `sniffer.states.derive` returns, so the handler, ledger and platform client treat both
  alike). It raises nothing for any `JobView` and `PodView`s, does no I/O and reads no
  clock but `now`. Pods that are not attempts of `job` (`is_attempt`) are ignored, so the
  caller may pass every pod of the run.
* A terminal result comes only from the Job's own terminal conditions, its deletion, a
  cancel, or (for a vanished Job) `job_lost`; never from one attempt pod's end. It does
  not depend on `now`, and it is the same whichever of the paired conditions the view
  holds (SuccessCriteriaMet then Complete; FailureTarget then Failed): the earlier one's
  time is `finished_at` when present.
* The pod failure rules (`sniffer.failure_rules`) do not judge attempts: the Job's own
  limits (backoffLimit, podFailurePolicy, activeDeadlineSeconds) decide when it fails,
  and a stuck attempt shows as queued or running with its reason. So `judged` is always
  False and `recheck_after` always None.
* `attempts_behind(job, pods)`: the Job counts more failed attempts than `pods` show, so
  a failure derived from them may name an earlier attempt's exit code (the handler waits
  a bounded time for the pod cache to catch up).
* `attempts(job, pods)` never counts fewer attempts than the Job's status accounts for;
  the caller keeps the largest count it has sent (the platform ignores a lower one).

Rules, in order (the Kubernetes Job status shapes they cover are in tests/test_jobs.py):

1. A view marked `final_state_unknown` (the Job vanished unseen) that holds no terminal
   condition is judged by `job_lost`.
2. SuccessCriteriaMet=True or Complete=True → *succeeded* "Completed", exit code 0.
3. FailureTarget=True or Failed=True → *failed* with the condition's reason
   (BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy, MaxFailedIndexesExceeded,
   ...; "Failed" if it has none), the last failed attempt's exit code, and its message
   (else the condition's message).
4. Deletion requested (`deletionTimestamp`): *cancelled* "Cancelled" if cancel was
   requested (the Job annotation `sniffer.io/cancel-requested`, when
   `policy.cancel_annotation`, or the platform run's `cancel_requested`); else, as for a
   deleted pod, notebooks and apps are *cancelled* "Stopped" and jobs *failed* "Deleted".
5. `spec.suspend`: *cancelled* "Cancelled" if cancel was requested, else *queued*
   "Suspended".
6. An attempt pod Running (or `status.ready` > 0) → *running* with that attempt's reason.
7. An attempt that already ran (an attempt pod ended, or the status counts a succeeded or
   failed pod) → *running* "Retrying": the Job goes on with a new attempt.
8. Otherwise *queued*, with the newest attempt's reason (Unschedulable,
   ContainerCreating, ImagePullBackOff, ...), else "Pending".

`job_lost(pods, cancel_requested=)` is the outcome of a run whose Job is gone and whose end
nobody saw: what an attempt pod left in the cluster still says (a succeeded attempt is the
run's success, a running one keeps it running: Job-backed runs have one completion, as
the platform submits them), else `sniffer.states.lost` (cancelled if cancel was
requested, else failed "PodLost"): a failed attempt alone cannot tell whether the Job
would have retried.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sniffer.conditions import Condition
from sniffer.jobview import JobView
from sniffer.podview import PodView, WorkloadKind
from sniffer.states import Derived, StatePolicy, WorkloadState, derive, lost

__all__ = ["JOB_KIND", "Attempts", "attempts", "attempts_behind", "derive_job", "is_attempt",
           "job_lost", "owned_by_job"]

JOB_KIND = "Job"
Q, R, S, F, C = (WorkloadState.QUEUED, WorkloadState.RUNNING, WorkloadState.SUCCEEDED,
                 WorkloadState.FAILED, WorkloadState.CANCELLED)


# --- which pods are attempts --------------------------------------------------------------


def owned_by_job(pod: PodView) -> bool:
    """True iff a Job made `pod` (its controller is a Job, or it carries the Job
    controller's uid label): the pod path leaves it to the Job path."""
    return pod.owner_kind == JOB_KIND


def is_attempt(job: JobView, pod: PodView) -> bool:
    """True iff `pod` is an attempt of `job`: same namespace, and its Job controller
    reference (or, once orphaned, its controller-uid label) names `job`'s uid."""
    if pod.namespace != job.namespace:
        return False
    return pod.owner_kind == JOB_KIND and pod.owner_uid == job.uid


@dataclass(frozen=True, slots=True)
class Attempts:
    """How many pods the Job has run for this run, and the newest one's name."""

    count: int
    current_pod: str | None


def attempts(job: JobView | None, pods: Iterable[PodView]) -> Attempts:
    """The attempts of `job` (None: the Job is gone, count the pods alone).

    `count` is the larger of the distinct attempt pods seen and the pods the Job's status
    accounts for (active + terminating + succeeded + failed: the counts outlive removed
    pods). `current_pod` is the newest attempt pod (latest creation, then name), None if
    no attempt pod is at hand."""
    mine = _mine(job, pods)
    counted = (job.active + job.terminating + job.succeeded + job.failed) if job else 0
    newest = max(mine, key=lambda p: (p.created_at, p.name), default=None)
    return Attempts(max(counted, len({p.uid for p in mine})),
                    newest.name if newest is not None else None)


def attempts_behind(job: JobView, pods: Iterable[PodView]) -> bool:
    """True iff the Job knows of more failed attempts (counted in `failed`, or among its
    uncounted terminated pods) than `pods` show as failed: the pod
    cache has not yet caught up with what the Job controller saw (the pod and Job watches
    are separate streams, so a Job's failure can arrive before its last attempt's end), and
    a failure derived now would carry an earlier attempt's exit code. Also true, for good,
    when failed attempt pods were removed; the caller bounds how long it waits."""
    failed = {p.uid for p in _mine(job, pods) if p.phase == "Failed"}
    return job.failed + job.uncounted_failed > len(failed)


def _mine(job: JobView | None, pods: Iterable[PodView]) -> list[PodView]:
    if job is None:
        return list(pods)
    return [p for p in pods if is_attempt(job, p)]


# --- the derivation -----------------------------------------------------------------------


def derive_job(job: JobView, pods: Iterable[PodView], *, now: float, policy: StatePolicy,
               cancel_requested: bool = False) -> Derived:
    """The workload state `job` and its attempt `pods` show at time `now` (epoch s).

    `cancel_requested` is the platform run's cancel flag, as for `sniffer.states.derive`."""
    mine = _mine(job, pods)
    cancel = cancel_requested or (policy.cancel_annotation and job.cancel_requested)
    started = _started_at(job, mine)
    success = _first_true(job, "SuccessCriteriaMet", "Complete")
    failure = _first_true(job, "FailureTarget", "Failed")
    if job.final_state_unknown and success is None and failure is None:
        return job_lost(mine, now=now, policy=policy, cancel_requested=cancel,
                        started_at=started)
    if success is not None:
        finished = (success.last_transition if success.type == "SuccessCriteriaMet"
                    else None) or job.completion_time or success.last_transition
        return Derived(S, "Completed", None, 0, started, finished)
    if failure is not None:
        last = _last_failed(mine, now, policy)
        return Derived(F, failure.reason or "Failed",
                       (last.message if last else None) or failure.message,
                       last.exit_code if last else None, started, failure.last_transition)
    if job.deletion_timestamp is not None:
        return _deleted(job, cancel, started)
    if job.suspend:
        if cancel:
            return Derived(C, "Cancelled", "cancel requested; job suspended", None, started,
                           _suspended_at(job))
        cond = job.holds("Suspended")
        return Derived(Q, "Suspended", cond.message if cond else "job suspended")
    return _active(job, mine, now, policy, started)


def job_lost(pods: Iterable[PodView], *, now: float, policy: StatePolicy,
             cancel_requested: bool = False, started_at: float | None = None) -> Derived:
    """The outcome of a run whose Job is gone and whose end nobody saw (see the module
    docstring). `pods` are what is left of its attempts."""
    views = list(pods)
    derived = [derive(p, now=now, policy=policy, cancel_requested=cancel_requested)
               for p in views]
    for d in derived:
        if isinstance(d, Derived) and d.state is S:
            return d
    for pod, d in zip(views, derived, strict=True):
        if pod.phase == "Running" and not pod.final_state_unknown and isinstance(d, Derived):
            return Derived(R, d.reason if d.state is R else None,
                           d.message if d.state is R else None, None, d.started_at)
    return lost(cancel_requested, started_at=started_at)


def _first_true(job: JobView, early: str, late: str) -> Condition | None:
    """The earlier of a pair of terminal conditions if True, else the later one."""
    return job.holds(early) or job.holds(late)


def _deleted(job: JobView, cancel: bool, started: float | None) -> Derived:
    at = job.deletion_timestamp
    if cancel:
        return Derived(C, "Cancelled", "cancel requested; job deleted", None, started, at)
    if job.kind is not WorkloadKind.JOB:
        return Derived(C, "Stopped", f"{job.kind.value} stopped; job deleted", None, started,
                       at)
    return Derived(F, "Deleted", "job deleted before it finished", None, started, at)


def _suspended_at(job: JobView) -> float | None:
    cond = job.holds("Suspended")
    return cond.last_transition if cond else None


def _last_failed(pods: list[PodView], now: float, policy: StatePolicy) -> Derived | None:
    """The derivation of the attempt that failed last (latest finish, then creation)."""
    failed: list[tuple[float, float, Derived]] = []
    for pod in pods:
        if pod.phase != "Failed":
            continue
        d = derive(pod, now=now, policy=policy)
        if isinstance(d, Derived) and d.state is F:
            failed.append((d.finished_at or pod.created_at, pod.created_at, d))
    return max(failed, key=lambda f: (f[0], f[1]))[2] if failed else None


def _active(job: JobView, pods: list[PodView], now: float, policy: StatePolicy,
            started: float | None) -> Derived:
    """Rules 6 to 8: a Job that is neither finished, deleted nor suspended."""
    newest_first = sorted(pods, key=lambda p: (p.created_at, p.name), reverse=True)
    for pod in newest_first:
        if pod.phase == "Running" and not pod.final_state_unknown:
            d = derive(pod, now=now, policy=policy)
            reason, message = _shown(d) if isinstance(d, Derived) else (None, None)
            return Derived(R, reason, message, None, started)
    if job.ready > 0:
        return Derived(R, None, None, None, started)
    ended = [p for p in pods if p.phase in ("Succeeded", "Failed")]
    if ended or job.failed or job.succeeded:
        return Derived(R, "Retrying", "an attempt ended; the job starts another", None,
                       started)
    for pod in newest_first:
        d = derive(pod, now=now, policy=policy)
        if isinstance(d, Derived):
            reason, message = _shown(d)
            return Derived(Q, reason or "Pending", message)
    return Derived(Q, "Pending", "waiting for the job's first pod")


def _shown(d: Derived) -> tuple[str | None, str | None]:
    """What an attempt's derivation tells the platform while the Job goes on: its reason
    and message (a failure rule's verdict is shown, never acted on)."""
    return d.reason, d.message


def _started_at(job: JobView, pods: list[PodView]) -> float | None:
    """When the run started: the earliest attempt that ran, else the Job's startTime
    (which the controller sets when it creates the first pod, and clears on suspend)."""
    starts = [p.start_time for p in pods if p.start_time is not None and p.phase != "Pending"]
    return min(starts) if starts else job.start_time
