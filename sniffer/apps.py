"""App controller → workload state, and which pods are a controller's replicas: pure functions.

A run backed by a Deployment or StatefulSet (replicas 1, the run id label on the
controller and its pod template) takes its state from the controller and its live
replica pods, never from one pod's end: a drain, an eviction or a node loss deletes the
pod and the controller makes another. The pod path leaves such pods to the app path
(`owned_by_app`), for the controllers that are watched.

Contract:

* `derive_app(app, pods, now=, policy=, cancel_requested=)` returns a `Derived` (the type
  `sniffer.states.derive` returns, so the handler, ledger and platform client treat all
  alike). It raises nothing for any `AppView` and `PodView`s, does no I/O and reads no
  clock but `now`. Pods that are not live replicas of `app` (`is_replica`, and neither
  deleting nor a tombstone) are ignored, so the caller may pass every pod of the run.
* A replica pod's deletion, eviction or failure is never terminal by itself: only the
  controller's deletion or scale to zero, its giving up (ProgressDeadlineExceeded), or a
  live replica crash looping past the pod rules' limit while no replica is available
  end the run.
* A terminal result does not depend on `now` except through the crash-loop rule, whose
  `finished_at` is the moment the rule fired (as for a pod). `recheck_after` is the earliest
  recheck any live replica's pod rules ask for (only the crash-loop rule can end the
  run; the others only refresh the reason): derive again after that many seconds.
* `judged` is True iff the result is the crash-loop rule's verdict (a judgement over the
  cached pod, as `sniffer.states.Derived.judged`).

Rules, in order (the shapes they cover are in tests/test_apps.py):

1. Progressing=False with reason ProgressDeadlineExceeded (a Deployment's controller gave
   up its rollout) → *failed* "ProgressDeadlineExceeded" with the condition's message;
   it holds even once the controller is deleted (the failure came first).
2. A view marked `final_state_unknown` (the controller vanished unseen), a deletion
   requested (`deletionTimestamp`), or `spec.replicas` 0 → *cancelled* "Cancelled" if
   cancel was requested (the controller's annotation `sniffer.io/cancel-requested`, when
   `policy.cancel_annotation`, or the platform run's flag), else *cancelled* "Stopped":
   an app only ends by being stopped.
3. A live replica available (Running, every main container running and started, none
   waiting on a problem), or the controller's status counting one ready or available
   replica → *running*.
4. A live replica whose pod rules give the crash-loop failure (`CrashLoopBackOff`
   restarted `crashloop_failure_restarts` times, or looping `crashloop_failure_after_s`)
   → *failed* "CrashLoopBackOff" with the last exit code and the rule's message.
5. A live replica Running → *running* with its reason (CrashLoopBackOff below the limit,
   a container still starting).
6. Otherwise *queued*, with the newest live replica's reason (Unschedulable,
   ContainerCreating, ImagePullBackOff, ...), else "Pending". After a replacement the
   platform keeps showing running: a state never moves back.

`started_at` is the earliest start of a live replica that runs, None otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable

from sniffer.appview import DEPLOYMENT, STATEFULSET, AppView
from sniffer.failure_rules import CRASHLOOP
from sniffer.podview import PodView
from sniffer.states import Derived, StatePolicy, WorkloadState, derive

__all__ = ["OWNER_OF", "derive_app", "is_replica", "owned_by_app", "replica_owner"]

OWNER_OF = {DEPLOYMENT: "ReplicaSet", STATEFULSET: STATEFULSET}
"""The controller kind of a replica pod, by app controller: a Deployment's pods are its
ReplicaSets', a StatefulSet's its own."""
_CONTROLLER_OF = {owner: controller for controller, owner in OWNER_OF.items()}
Q, R, F, C = (WorkloadState.QUEUED, WorkloadState.RUNNING, WorkloadState.FAILED,
              WorkloadState.CANCELLED)
PROGRESS_DEADLINE = "ProgressDeadlineExceeded"


# --- which pods are replicas --------------------------------------------------------------


def replica_owner(pod: PodView) -> str | None:
    """The app controller ("Deployment" or "StatefulSet") whose replica `pod` would be,
    by its controller reference and run id label; None for any other pod."""
    if pod.run_id is None or pod.owner_kind is None:
        return None
    return _CONTROLLER_OF.get(pod.owner_kind)


def owned_by_app(pod: PodView, watched: Iterable[str]) -> bool:
    """True iff `pod` is a replica of one of the `watched` controllers ("Deployment",
    "StatefulSet"): the pod path leaves it to the app path."""
    owner = replica_owner(pod)
    return owner is not None and owner in watched


def is_replica(app: AppView, pod: PodView) -> bool:
    """True iff `pod` is a replica of `app`: same namespace and run id, made by the
    controller kind `app` makes pods through (and, for a StatefulSet, by `app` itself)."""
    if pod.namespace != app.namespace or pod.run_id != app.run_id or app.run_id is None:
        return False
    if pod.owner_kind != OWNER_OF.get(app.controller):
        return False
    return app.controller != STATEFULSET or pod.owner_uid == app.uid


def _live(app: AppView, pods: Iterable[PodView]) -> list[PodView]:
    return [p for p in pods if is_replica(app, p) and p.deletion_timestamp is None
            and not p.final_state_unknown and p.phase in ("Pending", "Running")]


# --- the derivation -----------------------------------------------------------------------


def derive_app(app: AppView, pods: Iterable[PodView], *, now: float, policy: StatePolicy,
               cancel_requested: bool = False) -> Derived:
    """The workload state `app` and its replica `pods` show at time `now` (epoch s).

    `cancel_requested` is the platform run's cancel flag, as for `sniffer.states.derive`."""
    live = sorted(_live(app, pods), key=lambda p: (p.created_at, p.name), reverse=True)
    started = min((p.start_time for p in live if p.phase == "Running" and p.start_time),
                  default=None)
    gave_up = app.condition("Progressing")
    if (gave_up is not None and gave_up.status == "False"
            and gave_up.reason == PROGRESS_DEADLINE):
        return Derived(F, PROGRESS_DEADLINE, gave_up.message, None, started,
                       gave_up.last_transition)
    if app.final_state_unknown or app.deletion_timestamp is not None or app.replicas == 0:
        return _stopped(app, cancel_requested or (policy.cancel_annotation
                                                 and app.cancel_requested), started)
    if any(_available(p) for p in live) or app.ready > 0 or app.available > 0:
        return Derived(R, None, None, None, started)
    return _unavailable(app, live, now, policy, started)


def _unavailable(app: AppView, live: list[PodView], now: float, policy: StatePolicy,
                 started: float | None) -> Derived:
    """Rules 4 to 6: no replica serves (`live` newest first)."""
    derived = [(p, d) for p in live
               if isinstance(d := derive(p, now=now, policy=policy), Derived)]
    for _, d in derived:
        if d.state is F and d.judged and d.reason == CRASHLOOP:
            return d
    recheck = min((d.recheck_after for _, d in derived if d.recheck_after is not None),
                  default=None)
    for pod, d in derived:
        if pod.phase == "Running":
            return Derived(R, d.reason, d.message, None, started, recheck_after=recheck)
    if derived:
        _, d = derived[0]
        return Derived(Q, d.reason or "Pending", d.message, recheck_after=recheck)
    return Derived(Q, "Pending", f"waiting for the {app.controller.lower()}'s pod")


def _stopped(app: AppView, cancel: bool, started: float | None) -> Derived:
    at = app.deletion_timestamp
    what = "deleted" if at is not None or app.final_state_unknown else "scaled to 0"
    noun = app.controller.lower()
    if cancel:
        return Derived(C, "Cancelled", f"cancel requested; {noun} {what}", None, started, at)
    return Derived(C, "Stopped", f"{app.kind.value} stopped; {noun} {what}", None, started,
                   at)


def _available(pod: PodView) -> bool:
    """Whether a live replica serves: Running, every main container running and started."""
    mains = [c for c in pod.containers if not c.sidecar]
    return (pod.phase == "Running" and bool(mains)
            and all(c.state == "running" and c.started for c in mains))
