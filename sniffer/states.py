"""Pod → workload state: one pure function, `derive`.

Contract:

* `derive(pod, now=, policy=, cancel_requested=)` returns a `Derived` or an `Underivable`
  (a value, never an exception: the caller must handle both, and the type checker makes it);
  it raises nothing for any `PodView`, does no I/O and reads no clock but `now`.
* Pod phase Succeeded or Failed always gives a terminal state.
* A terminal result does not depend on `now`: deriving again later gives the same value
  (time rules report the moment they fired, not the moment they were evaluated).
* `recheck_after` is set iff a time rule may still fire for this pod: after that many
  seconds (> 0) the caller must derive again even if the pod did not change.
* `judged` is set iff the result is a failure rule fired for a pod not yet ended (Pending or
  Running): a judgement over this view, not a fact the pod reports.
* A view marked `final_state_unknown` (the pod vanished unseen) that is not terminal is
  *lost*: failed "PodLost", or cancelled "Cancelled" if cancel was requested, as the
  reconciler reports a run whose pod is gone (`lost`). Its end was never seen, so no rule
  may guess one.
* `Underivable` is returned for phase Unknown or a phase this module does not know; the
  caller keeps the last state and waits for the next event (the reconciler is the backstop).

Rules, in order (the Kubernetes shapes they cover are in tests/test_states.py):

1. Deletion requested (`deletionTimestamp`) before a terminal phase: *cancelled* "Cancelled"
   if cancel was requested (the pod annotation, when `policy.cancel_annotation`, or the
   `cancel_requested` argument from the platform run); else notebooks and apps are
   *cancelled* "Stopped" unless a DisruptionTarget condition says they were disrupted
   (*failed* with its reason); jobs are *failed* with the DisruptionTarget reason or
   "Deleted". `finished_at` is when the deletion was requested (deletionTimestamp minus
   the grace period). A pod that reached a terminal phase *because of* that deletion (its
   containers finished after the request, or the view still shows a grace period, which
   the API server grants only to a pod not yet terminal) still gets that outcome: a
   watcher gap or a coalesced update may hide the Terminating version.
2. Succeeded → *succeeded* "Completed", exit code 0.
3. Failed → *failed*; reason: status.reason (Evicted, DeadlineExceeded, ...), else the
   DisruptionTarget reason, else the failed container's terminated reason (OOMKilled,
   Error, ...), else "Failed". The failed container is the main container that failed
   first (earliest finish; spec order breaks ties), else the failed init container.
4. Running → *running* (with the first waiting container's problem as reason, e.g.
   CrashLoopBackOff), unless a failure rule fired for a main or sidecar container.
5. Pending → *queued* with the most specific reason: the PodScheduled reason
   (Unschedulable, SchedulingGated), "Scheduling", "Initializing" (init containers or
   sidecars still starting), a container's waiting reason (ContainerCreating,
   PodInitializing, ImagePullBackOff, ...); failure rules apply as for Running.

The failure rules for waiting containers, crash loops and long Pending pods are
`sniffer.failure_rules`' contract; `StatePolicy` holds their limits.

`started_at` is status.startTime, else the earliest main container start; None while
queued (and for a pod deleted while Pending, unless a main container had started).
`finished_at` of a terminal state is the latest main container finish, else the latest
init container finish, else the latest status transition; for time rules, the moment
the rule fired; for deletions, the moment the deletion was requested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from sniffer.failure_rules import (
    CRASHLOOP,
    crash_looped,
    first_problem,
    pending_message,
    pending_reason,
    pending_rule,
    waiting_rules,
)
from sniffer.podview import ConditionView, ContainerView, PodView, WorkloadKind


class WorkloadState(StrEnum):
    """A platform run's state. It only moves forward: queued < running < terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def rank(self) -> int:
        """0 queued, 1 running, 2 any terminal state."""
        return _RANK[self]


_TERMINAL = frozenset({WorkloadState.SUCCEEDED, WorkloadState.FAILED, WorkloadState.CANCELLED})
_RANK = {state: (2 if state in _TERMINAL else 0 if state is WorkloadState.QUEUED else 1)
         for state in WorkloadState}


def advances(current: WorkloadState, proposed: WorkloadState) -> bool:
    """True iff moving from `current` to `proposed` goes forward (rank strictly rises).

    Equal ranks never advance: running → running is no change, and one terminal state
    never replaces another."""
    return proposed.rank > current.rank


@dataclass(frozen=True, slots=True)
class StatePolicy:
    """The time and count limits of the failure rules; see the module docstring."""

    image_pull_failure_after_s: float = 300.0
    """A container that cannot pull its image (or be created) this long is failed."""
    crashloop_failure_restarts: int = 5
    """A container in CrashLoopBackOff with this many restarts is failed."""
    crashloop_failure_after_s: float = 600.0
    """A container crash-looping this long (a lower bound, see above) is failed."""
    pending_failure_after_s: float | None = None
    """A pod Pending this long after creation is failed; None never fails it."""
    cancel_annotation: bool = True
    """Honour the pod annotation `sniffer.io/cancel-requested: "true"`."""

    def __post_init__(self) -> None:
        for name in ("image_pull_failure_after_s", "crashloop_failure_after_s",
                     "pending_failure_after_s"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"StatePolicy.{name}: must be >= 0 (got {value!r})")
        if self.crashloop_failure_restarts < 1:
            raise ValueError("StatePolicy.crashloop_failure_restarts: must be >= 1 "
                             f"(got {self.crashloop_failure_restarts!r})")


@dataclass(frozen=True, slots=True)
class Derived:
    """The workload state a pod shows, with what the platform records about it."""

    state: WorkloadState
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    recheck_after: float | None = None
    judged: bool = False
    """True iff the state is a failure the rules decided for a pod that has not ended (still
    Pending or Running). It rests on the view being the pod's latest and cannot be undone,
    so a writer confirms that view on the API server first."""


@dataclass(frozen=True, slots=True)
class Underivable:
    """The pod shows no usable state (e.g. phase Unknown); keep the last known one."""

    reason: str
    message: str


Derivation = Derived | Underivable

_DISRUPTION = "DisruptionTarget"
# A kubelet stops a deleted pod's containers within its grace period (30 s by default) and
# then deletes it for good, which moves deletionTimestamp to that moment; containers that
# ended within this window of it may have been stopped by the deletion.
_STOP_WINDOW_S = 60.0
Q, R, S, F, C = (WorkloadState.QUEUED, WorkloadState.RUNNING, WorkloadState.SUCCEEDED,
                 WorkloadState.FAILED, WorkloadState.CANCELLED)


def derive(pod: PodView, *, now: float, policy: StatePolicy,
           cancel_requested: bool = False) -> Derivation:
    """The workload state `pod` shows at time `now` (epoch seconds).

    `cancel_requested` is the platform run's cancel flag; the caller passes it so a
    cancel is honoured even when the pod annotation was never written."""
    cancel = cancel_requested or (policy.cancel_annotation and pod.cancel_requested)
    if pod.final_state_unknown and pod.phase not in ("Succeeded", "Failed"):
        return lost(cancel, started_at=_started_at(pod))
    if pod.deletion_timestamp is not None:
        outcome = _deletion_outcome(pod, pod.deletion_timestamp, cancel, policy)
        if outcome is not None:
            return outcome
    if pod.phase == "Succeeded":
        return Derived(S, "Completed", None, 0, _started_at(pod), _finished_at(pod))
    if pod.phase == "Failed":
        return _failed(pod)
    if pod.phase == "Running":
        return _active(pod, now, policy, R)
    if pod.phase == "Pending":
        return _active(pod, now, policy, Q)
    return Underivable("PhaseUnknown" if pod.phase == "Unknown" else "UnrecognisedPhase",
                       f"pod phase {pod.phase[:40]!r} says nothing about the workload")


# --- terminal outcomes --------------------------------------------------------------------

POD_LOST_REASON = "PodLost"
POD_LOST_MESSAGE = "pod lost"
CANCELLED_LOST_MESSAGE = "cancel requested; pod lost"


def lost(cancel_requested: bool, *, started_at: float | None = None) -> Derived:
    """The outcome of a run whose pod is gone and whose end nobody saw."""
    if cancel_requested:
        return Derived(C, "Cancelled", CANCELLED_LOST_MESSAGE, started_at=started_at)
    return Derived(F, POD_LOST_REASON, POD_LOST_MESSAGE, started_at=started_at)



def _deletion_outcome(pod: PodView, deletion_timestamp: float, cancel: bool,
                      policy: StatePolicy) -> Derived | None:
    """Rule 1 for a pod whose deletion was requested; None: its terminal phase speaks
    for itself (it had ended before the deletion)."""
    requested = deletion_timestamp - (pod.deletion_grace_period_s or 0)
    deleted = _deleted(pod, cancel, requested)
    if pod.phase in ("Pending", "Running"):
        # A failure rule that had already fired when the deletion came (a crash loop
        # past its limit, a stuck image pull) is the outcome; the deletion only reaped.
        active = _active(pod, requested, policy, R if pod.phase == "Running" else Q)
        return active if active.state is F else deleted
    if pod.phase not in ("Succeeded", "Failed"):
        return deleted
    looped = crash_looped(pod, policy)
    if looped is not None and looped.last is not None and deleted.reason != "Cancelled":
        # it had already failed by the platform's rule when reaped
        return Derived(F, CRASHLOOP, f"container {looped.name}: restarted "
                       f"{looped.restart_count} times", looped.last.exit_code,
                       _started_at(pod), looped.last.finished_at)
    if _ended_by_deletion(pod, deleted, requested):
        return deleted  # the deletion ended the pod: the terminal phase is its echo
    return None


def _deleted(pod: PodView, cancel: bool, requested: float) -> Derived:
    """The outcome of a deletion requested at `requested` (see rule 1)."""
    disruption = _disruption(pod)
    ended = [c for c in pod.containers if c.state == "terminated"]
    exit_code = ended[0].exit_code if ended else None
    started = _started_at(pod) if pod.phase != "Pending" else _earliest_main_start(pod)
    if cancel:
        return Derived(C, "Cancelled", "cancel requested; pod deleted", exit_code, started,
                       requested)
    if disruption is not None:
        return Derived(F, disruption.reason or _DISRUPTION, disruption.message, exit_code,
                       started, requested)
    if pod.kind is not WorkloadKind.JOB:
        return Derived(C, "Stopped", f"{pod.kind.value} stopped; pod deleted", exit_code,
                       started, requested)
    return Derived(F, "Deleted", "pod deleted before it finished", exit_code, started,
                   requested)


def _ended_by_deletion(pod: PodView, deleted: Derived, requested: float) -> bool:
    """Whether the deletion, not the workload itself, brought the terminal phase.

    Only asked when one view shows both (the watcher was down, or events coalesced).
    Timestamps answer only one way: the kubelet's final grace-0 DELETE moves
    deletionTimestamp to that moment, so containers that finished *after* `requested`
    surely ended by the deletion, while "before" proves nothing. The grace period answers
    where the seconds tie: the API server gives a pod that is already Succeeded or Failed
    a grace period of 0, and the kubelet's final DELETE sets 0, so a terminal view that
    still shows one was deleting while active (what `deleted_while_active` records)."""
    if pod.deleted_while_active:
        return True  # the cache saw the deletion arrive before the terminal phase
    ended = _latest((c.finished_at for c in pod.containers), None)
    if ended is not None and ended < requested - _STOP_WINDOW_S:
        return False  # it had finished long before anyone deleted it
    if deleted.reason == "Cancelled":
        return True  # the user's cancel is the outcome they asked for
    if ended is not None and ended > requested:
        return True  # (equal seconds prove nothing at one-second resolution)
    if pod.phase == "Failed" and pod.reason:
        return False  # Evicted, DeadlineExceeded: the pod's own account of its end
    if pod.deletion_grace_period_s:
        return True  # deleted while active; its containers stopped within the second
    if pod.kind is not WorkloadKind.JOB:
        return True  # a server (restartPolicy Always) only ends by being stopped
    # A disrupted job that failed was killed by the disruption; one that succeeded
    # finished its work first.
    return pod.phase == "Failed" and _disruption(pod) is not None


def _disruption(pod: PodView) -> ConditionView | None:
    """The DisruptionTarget condition if it is True."""
    cond = pod.disruption
    return cond if cond is not None and cond.status == "True" else None


def _failed(pod: PodView) -> Derived:
    culprit = _first_failure(c for c in pod.containers if not c.sidecar)
    if culprit is None:
        culprit = _first_failure(c for c in pod.init_containers if not c.sidecar)
    disruption = _disruption(pod)
    reason = pod.reason or (disruption.reason if disruption else None)
    message = pod.message or (disruption.message if disruption else None)
    if culprit is not None:
        reason, message = reason or culprit[1], message or culprit[3]
    return Derived(F, reason or "Failed", message, culprit[2] if culprit else None,
                   _started_at(pod), _finished_at(pod))


def _first_failure(
        containers: Iterable[ContainerView]) -> tuple[float, str, int, str | None] | None:
    """(finished_at, reason, exit code, message) of the container that failed first."""
    failures: list[tuple[float, str, int, str | None]] = []
    for c in containers:
        if c.state == "terminated" and c.exit_code:
            failures.append((_or_inf(c.finished_at), c.reason or "Error", c.exit_code,
                             c.message))
        elif c.state != "terminated" and c.last is not None and c.last.exit_code:
            failures.append((_or_inf(c.last.finished_at), c.last.reason or "Error",
                             c.last.exit_code, c.last.message))
    # min() keeps the first of equal finish times, i.e. spec order breaks ties.
    return min(failures, key=lambda f: f[0]) if failures else None


# --- active pods: running or queued, and the failure rules --------------------------------


def _active(pod: PodView, now: float, policy: StatePolicy, state: WorkloadState) -> Derived:
    """Running or queued, unless a failure rule fired; then the earliest rule decides."""
    watched = [c for c in pod.init_containers if state is Q or c.sidecar]
    watched.extend(pod.containers)
    if state is Q:
        reason: str | None = pending_reason(pod)
        message = pending_message(pod)
    else:
        problem = first_problem(watched)
        reason, message = (problem.reason, problem.message) if problem else (None, None)
    rules = waiting_rules(pod, watched, policy)
    if state is Q:
        stuck = pending_rule(pod, policy, reason, message)
        if stuck is not None:
            rules.append(stuck)
    started = _started_at(pod) if state is R else None
    fired = [rule for rule in rules if rule.at <= now]
    if fired:
        first = min(fired, key=lambda rule: rule.at)  # the first of equals: spec order
        return Derived(F, first.reason, first.message, first.exit_code, started, first.at,
                       judged=True)
    recheck = min((rule.at - now for rule in rules), default=None)
    return Derived(state, reason, message, None, started, None, recheck)


# --- times -------------------------------------------------------------------------------


def _or_inf(value: float | None) -> float:
    return float("inf") if value is None else value


def _latest(values: Iterable[float | None], default: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else default


def _earliest_main_start(pod: PodView) -> float | None:
    starts = [t for c in pod.containers if not c.sidecar
              for t in (c.started_at, c.last.started_at if c.last else None) if t is not None]
    return min(starts) if starts else None


def _started_at(pod: PodView) -> float | None:
    return pod.start_time if pod.start_time is not None else _earliest_main_start(pod)


def _finished_at(pod: PodView) -> float | None:
    """The latest main container finish, else the latest init container finish, else the
    latest status transition."""
    return _latest((c.finished_at for c in pod.containers),
                   _latest((c.finished_at for c in pod.init_containers), pod.changed_at))
