"""`reconcile.diff` over controller-backed runs: properties over generated worlds.

Each run has zero or one Deployment or StatefulSet (available, replacing, given up, scaled
to zero, being deleted), zero to two of its replica pods in every phase (deleted or not)
and sometimes a bare pod beside them, with the run in every state and bound to nothing,
the controller, a replica or a stranger. The properties are the reconciler's promises
for such runs (issue 14, item 4): one round of repairs leaves nothing repairable, every
proposed state moves an open run forward, and a replica's end is never the run's end
while its controller still serves it.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.diff import diff
from reconcile.mismatch import Mismatch, MismatchKind
from reconcile.snapshot import Snapshot
from sniffer.appview import AppView, project_app
from sniffer.platform_model import Run
from sniffer.podview import KIND_LABEL, OUTCOME_FINALIZER, RUN_ID_LABEL, PodView, project
from sniffer.states import StatePolicy, WorkloadState

NOW = 1_767_225_600.0
NS = "apps"
GRACE = 120.0
POLICY = StatePolicy()
STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: str, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": reason,
            "lastUpdateTime": stamp(NOW - 60), "lastTransitionTime": stamp(NOW - 60)}


CONTROLLER_STATUS: dict[str, dict[str, Any]] = {
    "available": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                  "conditions": [condition("Available", "True", "MinimumReplicasAvailable"),
                                 condition("Progressing", "True", "NewReplicaSetAvailable")]},
    "replacing": {"replicas": 1, "unavailableReplicas": 1,
                  "conditions": [condition("Available", "False", "MinimumReplicasUnavailable"),
                                 condition("Progressing", "True", "ReplicaSetUpdated")]},
    "given-up": {"replicas": 1, "unavailableReplicas": 1,
                 "conditions": [condition("Available", "False", "MinimumReplicasUnavailable"),
                                condition("Progressing", "False",
                                          "ProgressDeadlineExceeded")]},
    "new": {},
}


def controller(draw: st.DrawFn, run_id: str, i: int) -> AppView:
    kind = draw(st.sampled_from(("Deployment", "StatefulSet")))
    meta: dict[str, Any] = {
        "name": f"web{i}", "namespace": NS, "uid": f"app-{i}", "resourceVersion": "7",
        "creationTimestamp": stamp(NOW - 900),
        "labels": {RUN_ID_LABEL: run_id, KIND_LABEL: "app"},
        "finalizers": [OUTCOME_FINALIZER] if draw(st.booleans()) else []}
    if draw(st.booleans()):
        meta["deletionTimestamp"] = stamp(NOW - 10)
    status = dict(CONTROLLER_STATUS[draw(st.sampled_from(sorted(CONTROLLER_STATUS)))])
    replicas = draw(st.sampled_from((1, 1, 0)))
    return project_app({"metadata": meta, "spec": {
        "replicas": replicas, "template": {"spec": {"containers": [{"name": "main"}]}}},
        "status": status}, controller=kind)


def replica(draw: st.DrawFn, app: AppView | None, run_id: str, name: str) -> PodView:
    """A pod of `app` (or, with no controller listed, of a controller that is gone)."""
    kind = app.controller if app is not None else "Deployment"
    owner = ({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": app.name,
              "uid": app.uid, "controller": True} if kind == "StatefulSet" and app else
             {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{name}-rs",
              "uid": f"rs-{app.uid if app else 'gone'}", "controller": True})
    return pod(draw, name, run_id, [owner])


def pod(draw: st.DrawFn, name: str, run_id: str, owners: list[dict[str, Any]]) -> PodView:
    phase = draw(st.sampled_from(("Pending", "Running", "Succeeded", "Failed")))
    created = NOW - draw(st.sampled_from((5, 300, 900)))
    meta: dict[str, Any] = {
        "name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "3",
        "creationTimestamp": stamp(created),
        "labels": {RUN_ID_LABEL: run_id, KIND_LABEL: "app"}, "ownerReferences": owners,
        "finalizers": [OUTCOME_FINALIZER] if draw(st.booleans()) else []}
    if draw(st.booleans()):
        meta |= {"deletionTimestamp": stamp(NOW - 20), "deletionGracePeriodSeconds": 30}
    restarts = draw(st.sampled_from((0, 0, 9)))
    if phase in ("Succeeded", "Failed"):
        code = 0 if phase == "Succeeded" else 1
        state: dict[str, Any] = {"terminated": {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": stamp(created + 2), "finishedAt": stamp(created + 4)}}
    elif phase == "Running":
        state = {"running": {"startedAt": stamp(created + 2)}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    container: dict[str, Any] = {"name": "main", "ready": phase == "Running",
                                 "restartCount": restarts, "image": "i", "imageID": "",
                                 "state": state}
    if restarts:
        container["lastState"] = {"terminated": {
            "exitCode": 3, "reason": "Error", "startedAt": stamp(NOW - 100),
            "finishedAt": stamp(NOW - 99)}}
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [container]}
    if phase != "Pending":
        status["startTime"] = stamp(created + 1)
    return project({"metadata": meta, "spec": {"restartPolicy": "Always",
                                               "containers": [{"name": "main"}]},
                    "status": status})


def run(run_id: str, state: str, *, pod_uid: str | None, pod_name: str | None,
        age: float, cancel: bool) -> Run:
    created = datetime.fromtimestamp(NOW - age, UTC)
    return Run(id=run_id, state=state, version=2, kind="app", created_at=created,
               updated_at=created, started_at=None, finished_at=None, reason=None,
               message=None, exit_code=None, cancel_requested=cancel,
               pod_namespace=NS, pod_name=pod_name, pod_uid=pod_uid)


@st.composite
def worlds(draw: st.DrawFn) -> Snapshot:
    apps: list[AppView] = []
    pods: list[PodView] = []
    runs: list[Run] = []
    for i in range(draw(st.integers(1, 6))):
        run_id = f"r{i}"
        # one run in three has no controller listed: deleted and gone, replicas may remain
        app = controller(draw, run_id, i) if draw(st.sampled_from((1, 1, 0))) else None
        mine = [replica(draw, app, run_id, f"web{i}-{j}")
                for j in range(draw(st.integers(0, 2)))]
        pods.extend(mine)
        if draw(st.sampled_from((False, False, True))):
            pods.append(pod(draw, f"bare{i}", run_id, []))
        if app is not None:
            apps.append(app)
        bound = draw(st.sampled_from([None, "stranger", *(a.uid for a in [app] if a),
                                      *(p.uid for p in mine)]))
        runs.append(run(run_id, draw(st.sampled_from(STATES)), pod_uid=bound,
                        pod_name=draw(st.sampled_from((None, f"web{i}"))),
                        age=draw(st.sampled_from((0.0, 10 * GRACE))),
                        cancel=draw(st.booleans())))
    return Snapshot(pods=tuple(pods), bad_pods=(), runs={r.id: r for r in runs},
                    unknown_run_ids=frozenset(), scope=(NS,), apps=tuple(apps),
                    apps_listed=("Deployment", "StatefulSet"))


def judge(snap: Snapshot) -> list[Mismatch]:
    return diff(snap, now=NOW, policy=POLICY, grace_period_s=GRACE)


def apply(snap: Snapshot, mismatches: list[Mismatch]) -> Snapshot:
    """What the repairs would leave behind, if nobody else moved anything: the run takes
    the target (app_ahead binds it to the controller; pod_ahead to the pod), and a
    released finalizer leaves its pod or controller."""
    runs = dict(snap.runs)
    pods = {p.uid: p for p in snap.pods}
    apps = {a.uid: a for a in snap.apps}
    for m in mismatches:
        if m.target is not None:
            assert m.run_id is not None
            # as reconcile.repair writes it: a run already bound keeps its binding
            bind = (m.pod.uid if m.pod is not None and runs[m.run_id].pod_uid is None
                    and m.kind in (MismatchKind.APP_AHEAD, MismatchKind.POD_AHEAD) else None)
            runs[m.run_id] = dataclasses.replace(
                runs[m.run_id], state=m.target.state.value, reason=m.target.reason,
                pod_uid=bind or runs[m.run_id].pod_uid)
        if m.release_finalizer:
            assert m.pod is not None
            assert m.pod.uid is not None
            if m.pod.uid in apps:
                a = apps[m.pod.uid]
                apps[a.uid] = dataclasses.replace(
                    a, finalizers=tuple(f for f in a.finalizers if f != OUTCOME_FINALIZER))
            else:
                p = pods[m.pod.uid]
                pods[p.uid] = dataclasses.replace(
                    p, finalizers=tuple(f for f in p.finalizers if f != OUTCOME_FINALIZER))
    return dataclasses.replace(snap, pods=tuple(pods.values()), runs=runs,
                               apps=tuple(apps.values()))


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_applying_the_planned_repairs_to_app_runs_leaves_nothing_to_repair(
        snap: Snapshot) -> None:
    # A second round may only release finalizers of a run the first made terminal.
    first = [m for m in judge(snap) if m.kind.repairable]
    once = apply(snap, first)
    second = [m for m in judge(once) if m.kind.repairable]
    assert {m.kind for m in second} <= {MismatchKind.FINALIZER_LEFT}
    assert [m for m in judge(apply(once, second)) if m.kind.repairable] == []


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_every_state_proposed_for_an_app_run_moves_it_forward(snap: Snapshot) -> None:
    for m in judge(snap):
        if m.target is None:
            continue
        assert m.run_id is not None
        current = WorkloadState(snap.runs[m.run_id].state)
        assert not current.is_terminal
        assert m.target.state.rank > current.rank


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_a_replicas_end_is_never_the_end_of_a_run_its_controller_still_serves(
        snap: Snapshot) -> None:
    # A live controller that has not given up and still wants its replica: whatever its
    # pods show (failed, succeeded, deleted), no terminal state is written but a crash
    # loop's, which the platform's rule makes a failure.
    def gave_up(app: AppView) -> bool:
        cond = app.condition("Progressing")
        return cond is not None and cond.status == "False"

    serving = {a.run_id for a in snap.apps if a.deletion_timestamp is None
               and a.replicas != 0 and not gave_up(a)}
    for m in judge(snap):
        if m.target is not None and m.run_id in serving and m.target.state.is_terminal:
            assert m.kind is MismatchKind.APP_AHEAD
            assert (m.target.state, m.target.reason) == (WorkloadState.FAILED,
                                                         "CrashLoopBackOff")
