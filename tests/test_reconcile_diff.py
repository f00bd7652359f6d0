"""reconcile.diff: the pure judgement of one snapshot (table-driven and property-based).

The pod shapes here (`manifest`, `kubelet_status`) are what the API server stores for a
pod the kubelet runs; tests/test_reconcile.py creates the same shapes on the testbed.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import Settings
from reconcile.app import state_policy
from reconcile.diff import POD_LOST_MESSAGE, POD_LOST_REASON, diff
from reconcile.mismatch import Mismatch, MismatchKind
from reconcile.snapshot import BadPod, Snapshot, needs_run_lookup
from sniffer.platform_model import Run
from sniffer.podview import (
    CANCEL_ANNOTATION,
    KIND_LABEL,
    OUTCOME_FINALIZER,
    RUN_ID_LABEL,
    PodView,
    project,
)
from sniffer.states import Derived, StatePolicy, WorkloadState, derive

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
GRACE = 120.0
NS = "team-ml"
POLICY = StatePolicy()


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- pod shapes (shared with tests/test_reconcile.py) ---------------------------------------


def manifest(name: str, run_id: str | None, *, namespace: str = NS, finalizer: bool = True,
             kind: str = "job", cancel: bool = False) -> dict[str, Any]:
    """A tracked pod as the platform creates it (metadata and spec; no status yet)."""
    labels = {KIND_LABEL: kind}
    if run_id is not None:
        labels[RUN_ID_LABEL] = run_id
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if cancel:
        meta["annotations"] = {CANCEL_ANNOTATION: "true"}
    if finalizer:
        meta["finalizers"] = [OUTCOME_FINALIZER]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": "node-a-1", "restartPolicy": "Never",
                     "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "main", "image": "registry.example/job:1.4"}]}}


def kubelet_status(phase: str, t: float, *, reason: str = "OOMKilled",
                   exit_code: int = 137) -> dict[str, Any]:
    """`status` as the kubelet writes it for a one-container pod started at `t`."""
    def cond(type_: str, status: str, at: float, why: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None,
                               "lastTransitionTime": stamp(at)}
        if why:
            out["reason"] = why
        return out

    container: dict[str, Any] = {
        "name": "main", "image": "registry.example/job:1.4", "imageID": "",
        "ready": False, "started": False, "restartCount": 0, "lastState": {}}
    base: dict[str, Any] = {"phase": phase, "hostIP": "10.0.3.17", "qosClass": "BestEffort",
                            "startTime": stamp(t)}
    if phase == "Pending":
        container["state"] = {"waiting": {"reason": "ContainerCreating"}}
        base["conditions"] = [cond("PodScheduled", "True", t),
                              cond("Ready", "False", t, "ContainersNotReady")]
    elif phase in ("Running", "Unknown"):
        container.update(ready=True, started=True, containerID="containerd://1",
                         imageID="sha256:aa", state={"running": {"startedAt": stamp(t + 2)}})
        base["podIP"] = "10.244.3.41"
        base["conditions"] = [cond("PodScheduled", "True", t), cond("Initialized", "True", t),
                              cond("ContainersReady", "True", t + 3),
                              cond("Ready", "True", t + 3)]
    else:
        code = 0 if phase == "Succeeded" else exit_code
        container.update(containerID="containerd://1", imageID="sha256:aa", state={
            "terminated": {"exitCode": code, "reason": "Completed" if code == 0 else reason,
                           "startedAt": stamp(t + 2), "finishedAt": stamp(t + 30),
                           "containerID": "containerd://1"}})
        base["podIP"] = "10.244.3.41"
        base["conditions"] = [cond("PodScheduled", "True", t), cond("Initialized", "True", t),
                              cond("ContainersReady", "False", t + 30, "PodCompleted"),
                              cond("Ready", "False", t + 30, "PodCompleted")]
    base["containerStatuses"] = [container]
    return base


def pod(name: str, run_id: str | None, phase: str = "Running", *, uid: str | None = None,
        namespace: str = NS, created: float = NOW - 600, finalizer: bool = True,
        kind: str = "job", cancel: bool = False, deleting: bool = False,
        deleted_at: float | None = None, reason: str = "OOMKilled",
        exit_code: int = 137) -> PodView:
    """`deleting`: a graceful deletion (30 s) requested 30 s before NOW, still under way.
    `deleted_at`: a deletion completed at that moment, as the object then shows it: the
    kubelet's final grace-0 DELETE (or the API server, for a pod already finished) leaves
    ``deletionGracePeriodSeconds`` 0 and ``deletionTimestamp`` at that moment."""
    raw = manifest(name, run_id, namespace=namespace, finalizer=finalizer, kind=kind,
                   cancel=cancel)
    raw["metadata"].update(uid=uid or f"uid-{name}", resourceVersion="1",
                           creationTimestamp=stamp(created))
    if deleting:
        raw["metadata"].update(deletionTimestamp=stamp(NOW - 30),
                               deletionGracePeriodSeconds=30)
    if deleted_at is not None:
        raw["metadata"].update(deletionTimestamp=stamp(deleted_at),
                               deletionGracePeriodSeconds=0)
    raw["status"] = kubelet_status(phase, created + 1, reason=reason, exit_code=exit_code)
    return project(raw)


def stopped_job(name: str, run_id: str, *, deleted_ago: float) -> PodView:
    """A job pod stopped by a graceful deletion whose final grace-0 DELETE came
    `deleted_ago` seconds before NOW: SIGTERM ended its container (Error, exit 143) a
    second before that DELETE, which left no trace of when the deletion was requested."""
    finished = NOW - deleted_ago - 1
    return pod(name, run_id, "Failed", created=finished - 31, deleted_at=NOW - deleted_ago,
               reason="Error", exit_code=143)


def run(run_id: str, state: str = "running", *, age: float = 600.0, cancel: bool = False,
        pod_uid: str | None = None, pod_namespace: str | None = NS,
        pod_name: str | None = None) -> Run:
    created = datetime.fromtimestamp(NOW - age, UTC)
    return Run(id=run_id, state=state, version=2, kind="job", created_at=created,
               updated_at=created, started_at=None, finished_at=None, reason=None,
               message=None, exit_code=None, cancel_requested=cancel,
               pod_namespace=pod_namespace, pod_name=pod_name, pod_uid=pod_uid)


def snapshot(pods: list[PodView] = (), runs: list[Run] = (),  # type: ignore[assignment]
             unknown: set[str] = frozenset(),  # type: ignore[assignment]
             bad: list[BadPod] = (), scope: tuple[str, ...] = (NS,)) -> Snapshot:  # type: ignore[assignment]
    return Snapshot(pods=tuple(pods), bad_pods=tuple(bad), runs={r.id: r for r in runs},
                    unknown_run_ids=frozenset(unknown), scope=scope)


def judge(snap: Snapshot, now: float = NOW) -> list[Mismatch]:
    return diff(snap, now=now, policy=POLICY, grace_period_s=GRACE)


# --- table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    kind: MismatchKind
    run_id: str | None
    state: str | None = None
    reason: str | None = None
    release: bool = False


CASES: list[tuple[str, Snapshot, list[Expect]]] = [
    ("running pod of a running run is consistent",
     snapshot([pod("p1", "r1")], [run("r1")]), []),
    ("running pod of a queued run is ahead",
     snapshot([pod("p1", "r1", finalizer=False)], [run("r1", "queued")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "running")]),
    ("succeeded pod of a running run is ahead and its finalizer goes with the write",
     snapshot([pod("p1", "r1", "Succeeded")], [run("r1")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "succeeded", "Completed", release=True)]),
    ("failed pod without finalizer is ahead with the container's reason",
     snapshot([pod("p1", "r1", "Failed", finalizer=False)], [run("r1")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "failed", "OOMKilled")]),
    ("a pending pod of a running run is behind, not a mismatch",
     snapshot([pod("p1", "r1", "Pending")], [run("r1")]), []),
    ("a deleted pod of a run whose cancel was requested on the platform is cancelled",
     snapshot([pod("p1", "r1", deleting=True)], [run("r1", cancel=True)]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "cancelled", "Cancelled", release=True)]),
    ("a deleted job pod without cancel is failed Deleted",
     snapshot([pod("p1", "r1", deleting=True)], [run("r1")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "failed", "Deleted", release=True)]),
    ("a job whose graceful deletion is still under way is failed Deleted at once",
     snapshot([pod("p1", "r1", "Failed", created=NOW - 60, deleting=True, reason="Error",
                   exit_code=143)], [run("r1")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "failed", "Deleted", release=True)]),
    ("a job stopped by a deletion completed within the grace period is left to the watcher",
     snapshot([stopped_job("p1", "r1", deleted_ago=30)], [run("r1")]), []),
    ("a job that succeeded and whose deletion completed within the grace period is left "
     "to the watcher",
     snapshot([pod("p1", "r1", "Succeeded", created=NOW - 60, deleted_at=NOW - 28)],
              [run("r1")]), []),
    ("a job stopped by a deletion completed a grace period ago is failed by its exit",
     snapshot([stopped_job("p1", "r1", deleted_ago=GRACE)], [run("r1")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "failed", "Error", release=True)]),
    ("a completed deletion of a run whose cancel was requested is cancelled at once",
     snapshot([stopped_job("p1", "r1", deleted_ago=30)], [run("r1", cancel=True)]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "cancelled", "Cancelled", release=True)]),
    ("a notebook whose deletion completed is cancelled Stopped at once",
     snapshot([pod("p1", "r1", "Succeeded", kind="notebook", created=NOW - 60,
                   deleted_at=NOW - 28)], [run("r1")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "cancelled", "Stopped", release=True)]),
    ("a pod whose deletion completed still loses its finalizer at once if the run is "
     "terminal",
     snapshot([stopped_job("p1", "r1", deleted_ago=30)], [run("r1", "failed")]),
     [Expect(MismatchKind.FINALIZER_LEFT, "r1", release=True)]),
    ("finalizer on the pod of a succeeded run is left over",
     snapshot([pod("p1", "r1", "Succeeded")], [run("r1", "succeeded")]),
     [Expect(MismatchKind.FINALIZER_LEFT, "r1", release=True)]),
    ("a terminal run is never moved, even by a pod that disagrees",
     snapshot([pod("p1", "r1", "Succeeded", finalizer=False)], [run("r1", "failed")]), []),
    ("a still-running pod of a terminal run only loses its finalizer",
     snapshot([pod("p1", "r1")], [run("r1", "cancelled")]),
     [Expect(MismatchKind.FINALIZER_LEFT, "r1", release=True)]),
    ("a run without pod past the grace period is lost",
     snapshot([], [run("r1", age=GRACE)]),
     [Expect(MismatchKind.POD_LOST, "r1", "failed", POD_LOST_REASON)]),
    ("a lost run whose cancel was requested is cancelled",
     snapshot([], [run("r1", "queued", age=GRACE + 1, cancel=True)]),
     [Expect(MismatchKind.POD_LOST, "r1", "cancelled", "Cancelled")]),
    ("a fresh run without pod is within the grace period",
     snapshot([], [run("r1", "queued", age=GRACE - 1)]), []),
    ("a run whose pod would live outside the listed namespaces is never lost",
     snapshot([], [run("r1", pod_namespace="elsewhere")]), []),
    ("a run naming no namespace is not judged lost when only some namespaces were listed",
     snapshot([], [run("r1", pod_namespace=None)]), []),
    ("a run naming no namespace is lost when all namespaces were listed",
     snapshot([], [run("r1", pod_namespace=None)], scope=()),
     [Expect(MismatchKind.POD_LOST, "r1", "failed", POD_LOST_REASON)]),
    ("a terminal run without pod is consistent",
     snapshot([], [run("r1", "succeeded")]), []),
    ("a pod whose run the platform does not know is an orphan",
     snapshot([pod("p1", "r9")], [], unknown={"r9"}),
     [Expect(MismatchKind.ORPHAN_POD, "r9")]),
    ("a finished pod whose run was not worth reading is left alone",
     snapshot([pod("p1", "r9", "Succeeded", finalizer=False)], []), []),
    ("a pod in phase Unknown is underivable",
     snapshot([pod("p1", "r1", "Unknown")], [run("r1")]),
     [Expect(MismatchKind.UNDERIVABLE, "r1")]),
    ("a malformed pod is underivable and keeps its run from being judged lost",
     snapshot([], [run("r1")], bad=[BadPod(NS, "p1", "u1", "r1", "status.phase: bad")]),
     [Expect(MismatchKind.UNDERIVABLE, "r1")]),
    ("a pod of a run bound to another uid is a uid mismatch and the run is not lost",
     snapshot([pod("p2", "r1", "Succeeded", uid="u2")], [run("r1", pod_uid="u1")]),
     [Expect(MismatchKind.UID_MISMATCH, "r1")]),
    ("the bound pod speaks for its run; another pod is a uid mismatch",
     snapshot([pod("p1", "r1", "Succeeded", uid="u1", finalizer=False),
               pod("p2", "r1", "Failed", uid="u2", finalizer=False)],
              [run("r1", pod_uid="u1")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "succeeded", "Completed"),
      Expect(MismatchKind.UID_MISMATCH, "r1")]),
    ("an unbound run is spoken for by the pod its record names",
     snapshot([pod("p1", "r1", "Failed", created=NOW - 900),
               pod("p2", "r1", "Succeeded", created=NOW - 600)],
              [run("r1", pod_name="p2")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "succeeded", "Completed", release=True)]),
    ("an unbound run naming no pod is spoken for by its oldest pod",
     snapshot([pod("p2", "r1", "Succeeded", created=NOW - 600),
               pod("p1", "r1", "Failed", created=NOW - 900)], [run("r1")]),
     [Expect(MismatchKind.POD_AHEAD, "r1", "failed", "OOMKilled", release=True)]),
]


@pytest.mark.parametrize(("snap", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_diff_finds_exactly_the_expected_mismatches(snap: Snapshot,
                                                    expected: list[Expect]) -> None:
    got = judge(snap)
    assert [(m.kind, m.run_id) for m in got] == [(e.kind, e.run_id) for e in expected]
    for m, e in zip(got, expected, strict=True):
        assert m.release_finalizer == e.release
        if e.state is None:
            assert m.target is None
        else:
            assert m.target is not None
            assert (m.target.state.value, m.target.reason) == (e.state, e.reason)


def test_pod_lost_says_pod_lost_and_names_the_pod_the_run_recorded() -> None:
    [m] = judge(snapshot([], [run("r1", pod_name="p1", pod_uid="u1")]))
    assert m.target is not None
    assert m.target.message == POD_LOST_MESSAGE
    assert m.pod is not None
    assert (m.pod.key, m.pod.uid) == (f"{NS}/p1", "u1")
    assert m.run_state is WorkloadState.RUNNING


def test_a_pod_ahead_carries_the_pod_to_bind_the_run_to() -> None:
    [m] = judge(snapshot([pod("p1", "r1", "Succeeded", uid="u1")], [run("r1")]))
    assert m.pod is not None
    assert (m.pod.namespace, m.pod.name, m.pod.uid) == (NS, "p1", "u1")
    assert m.target is not None
    assert m.target.exit_code == 0


def test_the_grace_period_counts_from_the_run_creation_to_now() -> None:
    snap = snapshot([], [run("r1", age=60)])
    assert judge(snap) == []
    assert [m.kind for m in judge(snap, now=NOW + GRACE - 60)] == [MismatchKind.POD_LOST]


def test_a_completed_deletion_is_left_to_the_watcher_until_a_grace_period_after_it(
        ) -> None:
    stopped = stopped_job("p1", "r1", deleted_ago=0)
    assert stopped.deletion_timestamp == NOW
    assert stopped.deletion_grace_period_s == 0
    snap = snapshot([stopped], [run("r1", age=10 * GRACE)])  # the run's age is no matter
    assert judge(snap, now=NOW + GRACE - 1) == []
    [m] = judge(snap, now=NOW + GRACE)
    assert m.kind is MismatchKind.POD_AHEAD
    assert m.release_finalizer
    assert m.target is not None
    assert (m.target.state, m.target.reason, m.target.exit_code) == (
        WorkloadState.FAILED, "Error", 143)


def test_a_completed_deletion_is_left_to_the_watcher_only_where_it_would_differ() -> None:
    # What the watcher writes for the same pod, having seen it deleting while it ran.
    stopped = stopped_job("p1", "r1", deleted_ago=30)
    seen_deleting = derive(dataclasses.replace(stopped, deleted_while_active=True),
                           now=NOW, policy=POLICY)
    assert isinstance(seen_deleting, Derived)
    assert (seen_deleting.state, seen_deleting.reason) == (WorkloadState.FAILED, "Deleted")
    # Seen deleting by the watcher's store, the pod is judged at once, like the watcher.
    snap = snapshot([dataclasses.replace(stopped, deleted_while_active=True)], [run("r1")])
    [m] = judge(snap)
    assert m.target == seen_deleting


def test_time_rules_fire_as_in_the_watcher() -> None:
    raw = manifest("p1", "r1")
    raw["metadata"].update(uid="u1", creationTimestamp=stamp(NOW - 3600))
    raw["status"] = kubelet_status("Pending", NOW - 3600)
    raw["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
    snap = snapshot([project(raw)], [run("r1", "queued")])
    [m] = judge(snap)
    assert m.kind is MismatchKind.POD_AHEAD
    assert m.target is not None
    assert (m.target.state, m.target.reason) == (
        WorkloadState.FAILED, "ImagePullBackOff")
    assert judge(snap, now=NOW - 3600 + 10) == []  # before image_pull_failure_after_s


def test_only_finalizers_and_unfinished_pods_need_their_run_read() -> None:
    assert needs_run_lookup(pod("p", "r", "Succeeded", finalizer=True))
    assert needs_run_lookup(pod("p", "r", "Running", finalizer=False))
    assert needs_run_lookup(pod("p", "r", "Pending", finalizer=False))
    assert not needs_run_lookup(pod("p", "r", "Succeeded", finalizer=False))
    assert not needs_run_lookup(pod("p", "r", "Failed", finalizer=False))


def test_the_policy_is_the_watchers() -> None:
    from watch.app import state_policy as watcher_policy

    custom = Settings(states=dataclasses.replace(
        Settings().states, image_pull_failure_after_s=7.0, crashloop_failure_restarts=2,
        crashloop_failure_after_s=9.0, pending_failure_after_s=11.0))
    for s in (Settings(), custom):
        assert state_policy(s) == watcher_policy(s)


# --- properties -------------------------------------------------------------------------------

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
STATES = ("queued", "running", "succeeded", "failed", "cancelled")


@st.composite
def worlds(draw: st.DrawFn, *, max_pods_per_run: int = 1,
           completed_deletions: bool = False) -> Snapshot:
    """Runs in every state, each with 0..max_pods_per_run pods in every phase, plus
    orphans and pods of runs not worth reading. With `completed_deletions`, every pod is
    a finished pod whose deletion completed (the shape the watcher's history may judge
    otherwise), so that such pods meet every kind of run often."""
    runs: list[Run] = []
    pods: list[PodView] = []
    unknown: set[str] = set()
    for i in range(draw(st.integers(0, 8))):
        run_id = f"r{i}"
        n = draw(st.integers(0, max_pods_per_run))
        uids = [f"u{i}-{j}" for j in range(n)]
        for j, uid in enumerate(uids):
            created = NOW - draw(st.integers(0, 900))
            deletion = "deleted" if completed_deletions else draw(
                st.sampled_from((None, "deleting", "deleted")))
            phases = ("Succeeded", "Failed") if completed_deletions else PHASES
            deleted_at = None
            if deletion == "deleted":
                # Its final DELETE within or past the grace period before NOW, from the
                # containers' end (created + 31 s) to long after it.
                deleted_at = NOW - draw(st.sampled_from((0, 30, GRACE - 1, GRACE, 600)))
                created = deleted_at - 31 - draw(st.sampled_from((0, 1, 45, 90)))
            pods.append(pod(f"p{i}-{j}", run_id, draw(st.sampled_from(phases)), uid=uid,
                            finalizer=draw(st.booleans()), deleting=deletion == "deleting",
                            deleted_at=deleted_at, cancel=draw(st.booleans()),
                            kind=draw(st.sampled_from(("job", "notebook"))),
                            created=created, reason=draw(st.sampled_from(("OOMKilled",
                                                                          "Error"))),
                            exit_code=draw(st.sampled_from((137, 143, 1)))))
        fate = draw(st.sampled_from(("listed", "listed", "unknown", "unread")))
        if fate == "unknown":
            unknown.add(run_id)
            continue
        if fate == "unread":
            continue
        bound = draw(st.sampled_from([None, "stranger", *uids]))
        runs.append(run(run_id, draw(st.sampled_from(STATES)),
                        age=draw(st.sampled_from((0.0, GRACE - 1, GRACE, 10 * GRACE))),
                        cancel=draw(st.booleans()), pod_uid=bound,
                        pod_namespace=draw(st.sampled_from((NS, "elsewhere", None))),
                        pod_name=draw(st.sampled_from((None, f"p{i}-0")))))
    return snapshot(pods, runs, unknown, scope=draw(st.sampled_from(((NS,), ()))))


def apply(snap: Snapshot, mismatches: list[Mismatch]) -> Snapshot:
    """What the repairs would leave behind, if nobody else moved anything."""
    runs = dict(snap.runs)
    pods = {p.uid: p for p in snap.pods}
    for m in mismatches:
        if m.target is not None:
            assert m.run_id is not None
            bind = m.pod.uid if m.kind is MismatchKind.POD_AHEAD and m.pod else None
            runs[m.run_id] = dataclasses.replace(
                runs[m.run_id], state=m.target.state.value, reason=m.target.reason,
                pod_uid=bind or runs[m.run_id].pod_uid)
        if m.release_finalizer:
            assert m.pod is not None
            assert m.pod.uid is not None
            p = pods[m.pod.uid]
            pods[m.pod.uid] = dataclasses.replace(
                p, finalizers=tuple(f for f in p.finalizers if f != OUTCOME_FINALIZER))
    return dataclasses.replace(snap, pods=tuple(pods.values()), runs=runs)


@settings(max_examples=300, deadline=None)
@given(st.one_of(worlds(), worlds(completed_deletions=True)))
def test_applying_the_planned_repairs_leaves_nothing_to_repair(snap: Snapshot) -> None:
    planned = [m for m in judge(snap) if m.kind.repairable]
    after = judge(apply(snap, planned))
    assert [m for m in after if m.kind.repairable] == []


@settings(max_examples=200, deadline=None)
@given(worlds(max_pods_per_run=3))
def test_runs_with_several_pods_are_repaired_within_two_rounds(snap: Snapshot) -> None:
    # The second round can only release finalizers of the other pods of a run the first
    # round made terminal.
    first = [m for m in judge(snap) if m.kind.repairable]
    once = apply(snap, first)
    second = [m for m in judge(once) if m.kind.repairable]
    assert {m.kind for m in second} <= {MismatchKind.FINALIZER_LEFT}
    assert [m for m in judge(apply(once, second)) if m.kind.repairable] == []


@settings(max_examples=300, deadline=None)
@given(worlds(max_pods_per_run=2))
def test_every_proposed_state_moves_an_open_run_forward(snap: Snapshot) -> None:
    for m in judge(snap):
        if m.target is None:
            continue
        assert m.run_id is not None
        current = WorkloadState(snap.runs[m.run_id].state)
        assert not current.is_terminal
        assert m.target.state.rank > current.rank
        if m.kind is MismatchKind.POD_LOST:
            assert NOW - snap.runs[m.run_id].created_at.timestamp() >= GRACE


@settings(max_examples=300, deadline=None)
@given(st.one_of(worlds(max_pods_per_run=2),
                 worlds(max_pods_per_run=2, completed_deletions=True)))
def test_only_completed_deletions_younger_than_the_grace_period_wait_for_the_watcher(
        snap: Snapshot) -> None:
    def repairs(mismatches: list[Mismatch]) -> dict[tuple[object, ...], Mismatch]:
        return {(m.kind, m.run_id, m.pod, m.target, m.release_finalizer): m
                for m in mismatches}  # the detail names the grace period

    pods = {p.uid: p for p in snap.pods}
    eager = repairs(diff(snap, now=NOW, policy=POLICY, grace_period_s=0))
    patient = repairs(judge(snap))
    assert patient.keys() <= eager.keys()
    for key in eager.keys() - patient.keys():
        m = eager[key]
        if m.kind is MismatchKind.POD_LOST:
            continue  # the other thing the grace period waits for
        assert m.kind is MismatchKind.POD_AHEAD
        assert m.pod is not None
        assert m.pod.uid
        assert m.target is not None
        assert m.target.state.is_terminal
        p = pods[m.pod.uid]
        assert p.deletion_timestamp is not None
        assert p.deletion_grace_period_s == 0
        assert NOW - p.deletion_timestamp < GRACE


@settings(max_examples=300, deadline=None)
@given(phase=st.sampled_from(("Succeeded", "Failed")),
       kind=st.sampled_from(("job", "notebook", "app")),
       run_state=st.sampled_from(("queued", "running")), pod_cancel=st.booleans(),
       run_cancel=st.booleans(), deleted_ago=st.sampled_from((0.0, 30.0, GRACE - 1, GRACE)),
       gap=st.sampled_from((0, 1, 45, 90)), exit_code=st.sampled_from((143, 137, 1)))
def test_a_completed_deletion_waits_only_where_the_watcher_would_differ_then_is_repaired(
        phase: str, kind: str, run_state: str, pod_cancel: bool, run_cancel: bool,
        deleted_ago: float, gap: int, exit_code: int) -> None:
    deleted_at = NOW - deleted_ago
    p = pod("p1", "r1", phase, kind=kind, cancel=pod_cancel, deleted_at=deleted_at,
            created=deleted_at - 31 - gap, reason="Error", exit_code=exit_code)
    r = run("r1", run_state, cancel=run_cancel)
    snap = snapshot([p], [r])
    own = derive(p, now=NOW, policy=POLICY, cancel_requested=run_cancel)
    watchers = derive(dataclasses.replace(p, deleted_while_active=True), now=NOW,
                      policy=POLICY, cancel_requested=run_cancel)
    assert isinstance(own, Derived)
    now_judged = judge(snap)
    if deleted_ago < GRACE and own != watchers:
        assert now_judged == []
    else:
        [m] = now_judged
        assert m.kind is MismatchKind.POD_AHEAD
        assert m.target == own
        assert [m for m in judge(apply(snap, now_judged)) if m.kind.repairable] == []
    [later] = judge(snap, now=deleted_at + GRACE)
    assert later.kind is MismatchKind.POD_AHEAD
    assert later.target == own
    assert [m for m in judge(apply(snap, [later]), now=deleted_at + GRACE)
            if m.kind.repairable] == []


@settings(max_examples=200, deadline=None)
@given(worlds(max_pods_per_run=2), st.randoms())
def test_diff_does_not_depend_on_listing_order(snap: Snapshot, rng: random.Random) -> None:
    pods = list(snap.pods)
    rng.shuffle(pods)
    runs = list(snap.runs.items())
    rng.shuffle(runs)
    shuffled = dataclasses.replace(snap, pods=tuple(pods), runs=dict(runs))
    assert judge(shuffled) == judge(snap)


@settings(max_examples=200, deadline=None)
@given(worlds(max_pods_per_run=2))
def test_orphans_and_report_only_kinds_carry_no_repair(snap: Snapshot) -> None:
    for m in judge(snap):
        if not m.kind.repairable:
            assert m.target is None
            assert not m.release_finalizer
        if m.kind is MismatchKind.ORPHAN_POD:
            assert m.run_id in snap.unknown_run_ids
