"""The reconciler's judgement: a snapshot of both sides → the typed list of what is wrong.

Contract:
* `diff(snapshot, now=, policy=, grace_period_s=)` is pure: no I/O, no clock but `now`, no
  logging. The same input gives the same list, sorted by (run id, pod key, kind), whatever
  the order of the input.
* Pods are judged with `sniffer.states.derive`, the watcher's own function, with the run's
  cancel flag, so the watcher and the reconciler never disagree about a pod they see alike.
  Where the watcher's history (it saw the pod's versions in order) could give another
  answer than the one object in the snapshot, the reconciler waits for the watcher for the
  grace period (a completed deletion, under `pod_ahead`; a missing pod, under `pod_lost`).
* It never proposes a write to a terminal run, nor a state that does not advance the run
  (`sniffer.states.advances`: the rank strictly rises).
* One run gets at most one proposed state (`target`): the pod bound to it speaks for it
  (`run.pod_uid`); an unbound run is spoken for by the pod its record names, else by its
  oldest pod.
* Kinds, and what the reconciler does about each:

  - `pod_ahead`: a non-terminal run whose pod shows a state further along → write
    `target` (and, if that is terminal, release the pod's finalizer). Not yet, though,
    for a *completed deletion*: a pod in a terminal phase, marked for deletion with
    ``deletionGracePeriodSeconds`` 0, whose reading differs from what a watcher that saw
    it deleting while it ran derives (failed "Error", exit 143, or succeeded, where the
    watcher writes failed "Deleted"). The kubelet's final grace-0 DELETE moves
    ``deletionTimestamp`` past the containers' end, so the object no longer says whether
    the deletion or the workload ended the pod; only the watcher knows. Such a run is no
    mismatch until `now` is `grace_period_s` past the pod's ``deletionTimestamp``; then
    it is judged like any other, by the object's own reading with its exit code (the
    watcher is evidently not reporting, and guessing "Deleted" could fail a job that
    succeeded).
  - `pod_lost`: a non-terminal run with no pod at all, older than the grace period
    (a fresh run may not have its pod yet), whose pod would live in the listed scope
    → write failed "PodLost" / "pod lost", or cancelled "Cancelled" when cancel was
    requested.
  - `finalizer_left`: a terminal run whose pod still carries Sniffer's finalizer →
    release it (the platform acknowledged the outcome; the finalizer has done its job).
  - `orphan_pod`: a pod whose run id the platform does not know → reported, never touched.
  - `underivable`: a pod of an open run whose state cannot be derived (phase Unknown), or
    a pod that could not be projected at all → reported.
  - `uid_mismatch`: a pod of an open run bound to another pod uid → reported. Such a
    run is never judged lost either: a human decides which pod is the run's.

* Runs backed by a Job (only when the snapshot `jobs_listed`): a run with a Job is judged
  by `sniffer.jobs.derive_job` over the Job and its attempt pods (`owned_by_job` pods are
  never judged one by one then, so a retried attempt's failure is no mismatch), with
  the run's cancel flag; a bare pod beside the run's Job is a `uid_mismatch`. The Job
  bound to the run (`run.pod_uid`) speaks for it; an unbound run is spoken for by the
  Job its record names, else by its oldest Job.

  - `job_ahead`: a non-terminal run whose Job shows a state further along, or the same
    state with more attempts than the run shows → write `target` with the Job's
    `attempts`, binding the run to the Job (and, if that is terminal, release the Job's
    outcome finalizer). A count never lowers the run's: `attempts` is the larger one.
  - `finalizer_left` for a Job: a terminal run whose Job still carries Sniffer's
    finalizer → release it.
  - `job_lost`: a non-terminal run older than the grace period whose Job is gone (deleted
    or removed by its TTL while nobody watched) but some of whose attempt pods remain →
    write what they still say (`sniffer.jobs.job_lost`: a succeeded attempt is the
    run's success, else the `lost` rule). A run with neither Job nor pods is `pod_lost`,
    whatever backed it.
  - A Job that cannot be projected is `underivable`, and its run is never judged lost.

* Applying every proposed repair to the snapshot and judging again finds nothing
  repairable (tests/test_reconcile_diff.py checks it with hypothesis).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from reconcile.snapshot import BadPod, Snapshot
from sniffer.jobs import attempts, attempts_behind, derive_job, is_attempt, job_lost, owned_by_job
from sniffer.jobview import JobView
from sniffer.platform_model import Run
from sniffer.podview import OUTCOME_FINALIZER, PodView
from sniffer.states import (
    POD_LOST_MESSAGE,
    POD_LOST_REASON,
    Derived,
    StatePolicy,
    Underivable,
    WorkloadState,
    advances,
    derive,
    lost,
)

__all__ = ["POD_LOST_MESSAGE", "POD_LOST_REASON"]  # re-exported: the report names them


class MismatchKind(StrEnum):
    POD_AHEAD = "pod_ahead"
    POD_LOST = "pod_lost"
    FINALIZER_LEFT = "finalizer_left"
    ORPHAN_POD = "orphan_pod"
    UNDERIVABLE = "underivable"
    UID_MISMATCH = "uid_mismatch"
    JOB_AHEAD = "job_ahead"
    JOB_LOST = "job_lost"

    @property
    def repairable(self) -> bool:
        """True iff the reconciler acts on this kind (the others are only reported)."""
        return self in _REPAIRABLE


_REPAIRABLE = frozenset({MismatchKind.POD_AHEAD, MismatchKind.POD_LOST,
                         MismatchKind.FINALIZER_LEFT, MismatchKind.JOB_AHEAD,
                         MismatchKind.JOB_LOST})


@dataclass(frozen=True, slots=True)
class PodRef:
    """Which pod (or, with `kind` "Job", which Job) a mismatch is about. `uid` is None
    when only the run's record names it."""

    namespace: str
    name: str
    uid: str | None
    kind: str = "Pod"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One thing that is wrong, and the repair it calls for.

    `target` is set iff the kind is pod_ahead, pod_lost, job_ahead or job_lost (the state
    to write; for job_ahead `pod` is the Job, for job_lost its newest attempt pod);
    `attempts`/`attempt_pod` are set iff the kind is job_ahead or job_lost;
    `release_finalizer` is True iff the repair ends by removing Sniffer's finalizer from
    `pod` (finalizer_left, or pod_ahead to a terminal state of a pod that carries it).
    `run_state` is the run's state in the snapshot, None iff the platform does not know
    the run (or, for a malformed pod, its run id could not be read)."""

    kind: MismatchKind
    run_id: str | None
    run_state: WorkloadState | None
    pod: PodRef | None
    detail: str
    target: Derived | None = None
    release_finalizer: bool = False
    attempts: int | None = None
    attempt_pod: str | None = None

    @property
    def sort_key(self) -> tuple[str, str, str]:
        return (self.run_id or "", self.pod.key if self.pod else "", self.kind.value)


def diff(snapshot: Snapshot, *, now: float, policy: StatePolicy,
         grace_period_s: float) -> list[Mismatch]:
    """Every mismatch in `snapshot` at time `now` (epoch seconds); see the module docstring."""
    pods_by_run, attempts_by_run, jobs_by_run = _by_run(snapshot)
    out = [_bad(bad, snapshot) for bad in (*snapshot.bad_pods, *snapshot.bad_jobs)]
    for run_id, jobs in jobs_by_run.items():
        out.extend(_judge_jobs(run_id, jobs, attempts_by_run.get(run_id, []),
                               pods_by_run.get(run_id, []), snapshot, now, policy))
    for run_id, pods in pods_by_run.items():
        if run_id not in jobs_by_run:
            out.extend(_judge_pods(run_id, pods, snapshot, now, policy, grace_period_s))
    for run_id, pods in attempts_by_run.items():
        if run_id not in jobs_by_run and run_id not in pods_by_run:
            out.extend(_judge_job_gone(run_id, pods, snapshot, now, policy, grace_period_s))
    with_bad_pods = {bad.run_id for bad in (*snapshot.bad_pods, *snapshot.bad_jobs)}
    for run in snapshot.runs.values():
        if (run.id in pods_by_run or run.id in with_bad_pods or run.id in jobs_by_run
                or run.id in attempts_by_run):
            continue
        lost = _judge_missing(run, snapshot.scope, now, grace_period_s)
        if lost is not None:
            out.append(lost)
    out.sort(key=lambda m: m.sort_key)
    return out


def _by_run(snapshot: Snapshot) -> tuple[dict[str, list[PodView]], dict[str, list[PodView]],
                                         dict[str, list[JobView]]]:
    """Run id → its bare pods, its Job attempt pods (when Jobs were listed), its Jobs."""
    pods_by_run: dict[str, list[PodView]] = {}
    attempts_by_run: dict[str, list[PodView]] = {}
    for pod in snapshot.pods:
        if pod.run_id is not None:
            into = attempts_by_run if snapshot.jobs_listed and owned_by_job(pod) else pods_by_run
            into.setdefault(pod.run_id, []).append(pod)
    jobs_by_run: dict[str, list[JobView]] = {}
    for job in snapshot.jobs:
        if job.run_id is not None:
            jobs_by_run.setdefault(job.run_id, []).append(job)
    return pods_by_run, attempts_by_run, jobs_by_run


def _ref(pod: PodView) -> PodRef:
    return PodRef(pod.namespace, pod.name, pod.uid)


def _state(run: Run) -> WorkloadState:
    return WorkloadState(run.state)


def _bad(bad: BadPod, snapshot: Snapshot) -> Mismatch:
    run = snapshot.runs.get(bad.run_id) if bad.run_id else None
    return Mismatch(MismatchKind.UNDERIVABLE, bad.run_id, _state(run) if run else None,
                    PodRef(bad.namespace, bad.name, bad.uid or None),
                    f"object unusable: {bad.error}")


def _judge_pods(run_id: str, pods: list[PodView], snapshot: Snapshot, now: float,
                policy: StatePolicy, grace_period_s: float) -> Iterable[Mismatch]:
    if run_id in snapshot.unknown_run_ids:
        return [Mismatch(MismatchKind.ORPHAN_POD, run_id, None, _ref(pod),
                         f"the platform has no run {run_id}") for pod in pods]
    run = snapshot.runs.get(run_id)
    if run is None:  # not open and not worth a read (see reconcile.snapshot)
        return []
    state = _state(run)
    if state.is_terminal:
        return [Mismatch(MismatchKind.FINALIZER_LEFT, run_id, state, _ref(pod),
                         f"run is {state.value}; pod still carries {OUTCOME_FINALIZER}",
                         release_finalizer=True)
                for pod in pods if OUTCOME_FINALIZER in pod.finalizers]
    out: list[Mismatch] = []
    if run.pod_uid:
        for pod in pods:
            if pod.uid != run.pod_uid:
                out.append(Mismatch(MismatchKind.UID_MISMATCH, run_id, state, _ref(pod),
                                    f"run is bound to another pod (uid {run.pod_uid})"))
        speaker = next((pod for pod in pods if pod.uid == run.pod_uid), None)
    else:
        speaker = min(pods, key=lambda p: (
            (p.namespace, p.name) != (run.pod_namespace, run.pod_name),
            p.created_at, p.namespace, p.name))
    if speaker is None:
        return out
    derived = derive(speaker, now=now, policy=policy, cancel_requested=run.cancel_requested)
    if isinstance(derived, Underivable):
        out.append(Mismatch(MismatchKind.UNDERIVABLE, run_id, state, _ref(speaker),
                            f"{derived.reason}: {derived.message}"))
    elif advances(state, derived.state) and not _left_to_watcher(
            speaker, derived, run, now, policy, grace_period_s):
        because = f" ({derived.reason})" if derived.reason else ""
        out.append(Mismatch(
            MismatchKind.POD_AHEAD, run_id, state, _ref(speaker),
            f"pod shows {derived.state.value}{because}; platform has {state.value}",
            target=derived,
            release_finalizer=(derived.state.is_terminal
                               and OUTCOME_FINALIZER in speaker.finalizers)))
    return out


def _judge_jobs(run_id: str, jobs: list[JobView], attempt_pods: list[PodView],
                bare_pods: list[PodView], snapshot: Snapshot, now: float,
                policy: StatePolicy) -> Iterable[Mismatch]:
    """A run backed by a Job (see the module docstring)."""
    if run_id in snapshot.unknown_run_ids:
        return [Mismatch(MismatchKind.ORPHAN_POD, run_id, None, _job_ref(job),
                         f"the platform has no run {run_id} (job)") for job in jobs]
    run = snapshot.runs.get(run_id)
    if run is None:
        return []
    state = _state(run)
    if state.is_terminal:
        return [Mismatch(MismatchKind.FINALIZER_LEFT, run_id, state, _job_ref(job),
                         f"run is {state.value}; job still carries {OUTCOME_FINALIZER}",
                         release_finalizer=True)
                for job in jobs if OUTCOME_FINALIZER in job.finalizers]
    out = [Mismatch(MismatchKind.UID_MISMATCH, run_id, state, _ref(pod),
                    "a bare pod beside the run's job") for pod in bare_pods]
    if run.pod_uid:
        out.extend(Mismatch(MismatchKind.UID_MISMATCH, run_id, state, _job_ref(job),
                            f"run is bound to another object (uid {run.pod_uid})")
                   for job in jobs if job.uid != run.pod_uid)
        speaker = next((job for job in jobs if job.uid == run.pod_uid), None)
    else:
        speaker = min(jobs, key=lambda j: (
            (j.namespace, j.name) != (run.pod_namespace, run.pod_name),
            j.created_at, j.namespace, j.name))
    if speaker is None:
        return out
    mine = [pod for pod in attempt_pods if is_attempt(speaker, pod)]
    derived = derive_job(speaker, mine, now=now, policy=policy,
                         cancel_requested=run.cancel_requested)
    if (derived.state is WorkloadState.FAILED and attempts_behind(speaker, mine)
            and (speaker.holds("FailureTarget") or speaker.holds("Failed"))):
        # Listed after the Jobs, the pods miss a failed attempt only once it was removed:
        # no exit code rather than an earlier attempt's (as the watcher does).
        derived = replace(derived, exit_code=None)
    count = attempts(speaker, mine)
    if advances(state, derived.state):
        because = f" ({derived.reason})" if derived.reason else ""
        what = f"job shows {derived.state.value}{because}; platform has {state.value}"
    elif derived.state is state and count.count > run.attempts:
        # The state is right but the platform shows fewer attempts than the Job made (the
        # watcher was down across a retry): raise them, as the watcher would.
        what = (f"job made {count.count} attempts; platform shows {run.attempts} "
                f"({state.value})")
    else:
        return out
    out.append(Mismatch(
        MismatchKind.JOB_AHEAD, run_id, state, _job_ref(speaker), what,
        target=derived, attempts=max(count.count, run.attempts),
        attempt_pod=count.current_pod,
        release_finalizer=(derived.state.is_terminal
                           and OUTCOME_FINALIZER in speaker.finalizers)))
    return out


def _judge_job_gone(run_id: str, pods: list[PodView], snapshot: Snapshot, now: float,
                    policy: StatePolicy, grace_period_s: float) -> Iterable[Mismatch]:
    """A run whose Job is gone but some of whose attempt pods remain."""
    if run_id in snapshot.unknown_run_ids:
        return [Mismatch(MismatchKind.ORPHAN_POD, run_id, None, _ref(pod),
                         f"the platform has no run {run_id}") for pod in pods]
    run = snapshot.runs.get(run_id)
    if run is None:
        return []
    state = _state(run)
    if state.is_terminal or now - run.created_at.timestamp() < grace_period_s:
        return []
    derived = job_lost(pods, now=now, policy=policy, cancel_requested=run.cancel_requested)
    if not advances(state, derived.state):
        return []
    count = attempts(None, pods)
    newest = max(pods, key=lambda p: (p.created_at, p.name))
    because = f" ({derived.reason})" if derived.reason else ""
    return [Mismatch(MismatchKind.JOB_LOST, run_id, state, _ref(newest),
                     f"job gone; its attempts show {derived.state.value}{because}; "
                     f"platform has {state.value}", target=derived,
                     attempts=max(count.count, run.attempts), attempt_pod=count.current_pod)]


def _job_ref(job: JobView) -> PodRef:
    return PodRef(job.namespace, job.name, job.uid, "Job")


def _left_to_watcher(pod: PodView, derived: Derived, run: Run, now: float,
                     policy: StatePolicy, grace_period_s: float) -> bool:
    """True iff `pod` shows a completed deletion that the object cannot order against the
    workload's end, a watcher that saw the pod deleting while it ran would derive
    something other than `derived`, and that deletion completed less than
    `grace_period_s` before `now` (see the module docstring, `pod_ahead`)."""
    if (pod.phase not in ("Succeeded", "Failed") or pod.deletion_timestamp is None
            or pod.deletion_grace_period_s != 0 or pod.deleted_while_active):
        return False
    if now - pod.deletion_timestamp >= grace_period_s:
        return False  # the watcher had its chance; the object's reading stands
    seen_deleting = derive(replace(pod, deleted_while_active=True), now=now, policy=policy,
                           cancel_requested=run.cancel_requested)
    return seen_deleting != derived


def _judge_missing(run: Run, scope: tuple[str, ...], now: float,
                   grace_period_s: float) -> Mismatch | None:
    state = _state(run)
    if state.is_terminal:
        return None
    if scope and run.pod_namespace not in scope:
        return None  # its pod would live where this pass did not look
    age = now - run.created_at.timestamp()
    if age < grace_period_s:
        return None
    target = lost(run.cancel_requested)
    pod = (PodRef(run.pod_namespace, run.pod_name, run.pod_uid)
           if run.pod_namespace and run.pod_name else None)
    cancel = "; cancel requested" if run.cancel_requested else ""
    return Mismatch(MismatchKind.POD_LOST, run.id, state, pod,
                    f"no pod for a {state.value} run created {age:.0f}s ago "
                    f"(grace {grace_period_s:g}s){cancel}", target=target)
