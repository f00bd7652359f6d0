"""The reconciler's judgement of runs backed by an app controller (Deployment, StatefulSet).

Contract (part of `reconcile.diff`, which calls these only when the snapshot lists the
controller's kind, `Snapshot.apps_listed`):
* Pure: no I/O, no clock but `now`, no logging. It never proposes a write to a terminal
  run, nor a state that does not advance the run.
* `judge_apps` judges a run that has controllers in the snapshot by
  `sniffer.apps.derive_app` over the controller and its replica pods, with the run's
  cancel flag, as the watcher's app path does; a replica's deletion or failure is never
  the run's end. The controller bound to the run (`run.pod_uid`) speaks for it; an
  unbound run is spoken for by the controller its record names, else its oldest. A run
  bound to a replica of a listed controller (bound while the kind was not watched) is
  adopted: that controller speaks for it, and the repair keeps the binding (as the
  watcher's app path does).

  - `app_ahead`: a non-terminal run whose controller shows a state further along → write
    `target`, binding the run to the controller (and, if that is terminal, release the
    controller's outcome finalizer). This is how a controller deleted while no watcher
    ran ends: the finalizer keeps it, Terminating, and it derives *cancelled*
    ("Cancelled" if cancel was requested, else "Stopped": an app ends only by being
    stopped); the release then lets the deletion finish.
  - `finalizer_left`: a terminal run whose controller still carries Sniffer's finalizer
    → release it.
  - `orphan_pod` (the platform has no such run) and `uid_mismatch` (a bare pod beside
    the run's controller, or a controller the run is not bound to) are only reported.
* `judge_app_gone` judges a run none of whose controllers is listed but some of whose
  replica pods remain (the controller was deleted and is gone: finalizer mode off, or
  deleted before a watcher first held it; the garbage collector reaps the replicas next):
  `app_lost` once the run is older than the grace period → *cancelled*, "Cancelled" if
  cancel was requested, else "Stopped", for the same reason. A run with neither
  controller nor pods is `pod_lost`, as any run whose objects are all gone.
"""

from __future__ import annotations

from reconcile.mismatch import Mismatch, MismatchKind, PodRef
from reconcile.snapshot import Snapshot
from sniffer.apps import derive_app, is_replica
from sniffer.appview import AppView
from sniffer.podview import OUTCOME_FINALIZER, PodView
from sniffer.states import Derived, StatePolicy, WorkloadState, advances


def judge_apps(run_id: str, apps: list[AppView], replicas: list[PodView],
               bare_pods: list[PodView], snapshot: Snapshot, *, now: float,
               policy: StatePolicy) -> list[Mismatch]:
    """A run backed by an app controller (see the module docstring)."""
    if run_id in snapshot.unknown_run_ids:
        return [Mismatch(MismatchKind.ORPHAN_POD, run_id, None, app_ref(app),
                         f"the platform has no run {run_id} ({app.controller.lower()})")
                for app in apps]
    run = snapshot.runs.get(run_id)
    if run is None:
        return []
    state = WorkloadState(run.state)
    if state.is_terminal:
        return [Mismatch(MismatchKind.FINALIZER_LEFT, run_id, state, app_ref(app),
                         f"run is {state.value}; {app.controller.lower()} still carries "
                         f"{OUTCOME_FINALIZER}", release_finalizer=True)
                for app in apps if OUTCOME_FINALIZER in app.finalizers]
    out = [Mismatch(MismatchKind.UID_MISMATCH, run_id, state,
                    PodRef(pod.namespace, pod.name, pod.uid),
                    "a bare pod beside the run's controller") for pod in bare_pods]
    if run.pod_uid:
        speaker = next((app for app in apps if app.uid == run.pod_uid), None) or next(
            (app for app in apps for pod in replicas
             if pod.uid == run.pod_uid and is_replica(app, pod)), None)
        out.extend(Mismatch(MismatchKind.UID_MISMATCH, run_id, state, app_ref(app),
                            f"run is bound to another object (uid {run.pod_uid})")
                   for app in apps if app is not speaker)
    else:
        speaker = min(apps, key=lambda a: (
            (a.namespace, a.name) != (run.pod_namespace, run.pod_name),
            a.created_at, a.namespace, a.name))
    if speaker is None:
        return out
    mine = [pod for pod in replicas if is_replica(speaker, pod)]
    derived = derive_app(speaker, mine, now=now, policy=policy,
                         cancel_requested=run.cancel_requested)
    if advances(state, derived.state):
        because = f" ({derived.reason})" if derived.reason else ""
        out.append(Mismatch(
            MismatchKind.APP_AHEAD, run_id, state, app_ref(speaker),
            f"{speaker.controller.lower()} shows {derived.state.value}{because}; platform "
            f"has {state.value}", target=derived,
            release_finalizer=(derived.state.is_terminal
                               and OUTCOME_FINALIZER in speaker.finalizers)))
    return out


def judge_app_gone(run_id: str, replicas: list[PodView], snapshot: Snapshot, *,
                   now: float, grace_period_s: float) -> list[Mismatch]:
    """A run whose controller is gone but some of whose replica pods remain."""
    if run_id in snapshot.unknown_run_ids:
        return [Mismatch(MismatchKind.ORPHAN_POD, run_id, None,
                         PodRef(pod.namespace, pod.name, pod.uid),
                         f"the platform has no run {run_id}") for pod in replicas]
    run = snapshot.runs.get(run_id)
    if run is None:
        return []
    state = WorkloadState(run.state)
    if state.is_terminal or now - run.created_at.timestamp() < grace_period_s:
        return []
    target = (Derived(WorkloadState.CANCELLED, "Cancelled",
                      "cancel requested; controller gone")
              if run.cancel_requested else
              Derived(WorkloadState.CANCELLED, "Stopped", f"{run.kind} stopped; controller "
                      "gone"))
    newest = max(replicas, key=lambda p: (p.created_at, p.name))
    return [Mismatch(MismatchKind.APP_LOST, run_id, state,
                     PodRef(newest.namespace, newest.name, newest.uid),
                     f"controller gone, {len(replicas)} replica pod(s) left; platform has "
                     f"{state.value}", target=target)]


def app_ref(app: AppView) -> PodRef:
    return PodRef(app.namespace, app.name, app.uid, app.controller)
