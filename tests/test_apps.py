"""sniffer.appview and sniffer.apps: the status shapes the Deployment and StatefulSet
controllers (pkg/controller/deployment, statefulset) produce for replicas 1, with the
replica pods beside them.

A Deployment's pods are owned by its ReplicaSet (the run id label comes from the
template); a StatefulSet's by the StatefulSet. Available/Progressing follow the
deployment controller: Progressing=True NewReplicaSetAvailable once rolled out,
Progressing=False ProgressDeadlineExceeded when it gives up. Zero counts are omitted.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from sniffer.apps import derive_app, is_replica, owned_by_app, replica_owner
from sniffer.appview import AppView, MalformedApp, project_app
from sniffer.podview import CANCEL_ANNOTATION, KIND_LABEL, RUN_ID_LABEL, MalformedPod, project
from sniffer.states import StatePolicy, WorkloadState

T0 = 1_767_225_600.0
POLICY = StatePolicy()
APP_UID = "6f1c2d4e-0000-4000-8000-0000000a0001"
RS_UID = "6f1c2d4e-0000-4000-8000-00000000r501"
Q, R, F, C = (WorkloadState.QUEUED, WorkloadState.RUNNING, WorkloadState.FAILED,
              WorkloadState.CANCELLED)


def at(offset: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + offset))


def app_obj(status: dict[str, Any] | None = None, *, replicas: int | None = 1,
            deleted: float | None = None, cancel: bool = False,
            kind: str = "app") -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "web", "namespace": "apps", "uid": APP_UID, "resourceVersion": "7",
        "creationTimestamp": at(0), "labels": {RUN_ID_LABEL: "run-1", KIND_LABEL: kind},
        "annotations": {CANCEL_ANNOTATION: "true"} if cancel else {}}
    if deleted is not None:
        meta["deletionTimestamp"] = at(deleted)
        meta["finalizers"] = ["sniffer.io/outcome"]
    spec: dict[str, Any] = {"template": {"spec": {"containers": [{"name": "main"}]}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"metadata": meta, "spec": spec, "status": status or {}}


def app(status: dict[str, Any] | None = None, *, controller: str = "Deployment",
        **kw: Any) -> AppView:
    return project_app(app_obj(status, **kw), controller=controller)


def progressing(status: str, reason: str, offset: float = 5) -> dict[str, Any]:
    return {"type": "Progressing", "status": status, "reason": reason,
            "message": f"ReplicaSet web-1 {reason}", "lastUpdateTime": at(offset),
            "lastTransitionTime": at(offset)}


AVAILABLE = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
             "readyReplicas": 1, "availableReplicas": 1,
             "conditions": [{"type": "Available", "status": "True",
                             "reason": "MinimumReplicasAvailable",
                             "lastTransitionTime": at(5)},
                            progressing("True", "NewReplicaSetAvailable")]}
REPLACING = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
             "unavailableReplicas": 1,
             "conditions": [{"type": "Available", "status": "False",
                             "reason": "MinimumReplicasUnavailable",
                             "lastTransitionTime": at(50)},
                            progressing("True", "NewReplicaSetAvailable")]}


def pod(name: str, created: float, phase: str, *, waiting: str | None = None,
        restarts: int = 0, last_exit: int | None = None, deleted: float | None = None,
        owner: str = "ReplicaSet", owner_uid: str = RS_UID,
        run_id: str = "run-1") -> Any:
    status: dict[str, Any] = {"phase": phase}
    if phase != "Pending" or waiting:
        state: dict[str, Any] = ({"waiting": {"reason": waiting, "message": "back-off"}}
                                 if waiting else {"running": {"startedAt": at(created + 2)}})
        c: dict[str, Any] = {"name": "main", "ready": not waiting, "started": not waiting,
                             "restartCount": restarts, "image": "i", "imageID": "",
                             "state": state}
        if last_exit is not None:
            c["lastState"] = {"terminated": {"exitCode": last_exit, "reason": "Error",
                                             "startedAt": at(created + 3),
                                             "finishedAt": at(created + 4)}}
        status["containerStatuses"] = [c]
    if phase == "Running":
        status["startTime"] = at(created + 1)
    meta: dict[str, Any] = {
        "name": name, "namespace": "apps", "uid": f"uid-{name}", "resourceVersion": "1",
        "creationTimestamp": at(created), "labels": {RUN_ID_LABEL: run_id, KIND_LABEL: "app"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner, "name": "web-1",
                             "uid": owner_uid, "controller": True}]}
    if deleted is not None:
        meta["deletionTimestamp"] = at(deleted)
        meta["deletionGracePeriodSeconds"] = 30
    return project({"metadata": meta, "spec": {"containers": [{"name": "main"}]},
                    "status": status})


def derived(view: AppView, pods: list[Any], *, now: float = 100, cancel: bool = False):
    return derive_app(view, pods, now=T0 + now, policy=POLICY, cancel_requested=cancel)


# --- projection -------------------------------------------------------------------------


def test_a_deployment_projects_its_counts_conditions_and_run_labels():
    view = app(AVAILABLE)
    assert (view.controller, view.key, view.run_id, view.replicas) == (
        "Deployment", "apps/web", "run-1", 1)
    assert (view.ready, view.available, view.current) == (1, 1, 1)
    assert [c.type for c in view.conditions] == ["Available", "Progressing"]


def test_absent_replicas_reads_as_the_api_servers_default_of_one():
    assert app(replicas=None).replicas == 1


@pytest.mark.parametrize("bad", [
    None, [], {"metadata": {}}, {"metadata": {"name": "x", "namespace": "n", "uid": "u"}},
    {"metadata": {"name": "x", "namespace": "n", "uid": "u", "creationTimestamp": at(0)},
     "spec": {"replicas": -1}},
    {"metadata": {"name": "x", "namespace": "n", "uid": "u", "creationTimestamp": at(0)},
     "status": {"conditions": [{"type": "Progressing"}]}},
])
def test_a_malformed_controller_raises_malformed_app_which_is_a_malformed_pod(bad):
    with pytest.raises(MalformedApp) as caught:
        project_app(bad, controller="Deployment")
    assert isinstance(caught.value, MalformedPod)


# --- which pods are replicas ------------------------------------------------------------


def test_a_replicaset_pod_with_a_run_id_is_a_deployments_replica():
    p = pod("web-1-a", 10, "Running")
    assert replica_owner(p) == "Deployment"
    assert owned_by_app(p, ("Deployment",))
    assert not owned_by_app(p, ("StatefulSet",))
    assert is_replica(app(), p)


def test_a_bare_pod_and_a_job_pod_are_nobodys_replica():
    bare = project({"metadata": {"name": "b", "namespace": "apps", "uid": "u",
                                 "creationTimestamp": at(0),
                                 "labels": {RUN_ID_LABEL: "run-1"}},
                    "status": {"phase": "Running"}})
    job_pod = pod("j", 1, "Running", owner="Job")
    for p in (bare, job_pod):
        assert replica_owner(p) is None
        assert not owned_by_app(p, ("Deployment", "StatefulSet"))
        assert not is_replica(app(), p)


def test_a_statefulset_replica_is_owned_by_that_statefulset_only():
    sts = app(controller="StatefulSet")
    mine = pod("web-0", 1, "Running", owner="StatefulSet", owner_uid=APP_UID)
    other = pod("web-0", 1, "Running", owner="StatefulSet", owner_uid="someone-else")
    assert is_replica(sts, mine)
    assert not is_replica(sts, other)
    assert not is_replica(app(), mine)  # a Deployment's replicas are a ReplicaSet's


def test_a_pod_of_another_run_is_not_a_replica():
    assert not is_replica(app(), pod("x", 1, "Running", run_id="run-2"))


# --- the derivation -----------------------------------------------------------------------


def test_a_deployment_with_an_available_pod_is_running():
    d = derived(app(AVAILABLE), [pod("web-1-a", 10, "Running")])
    assert (d.state, d.reason) == (R, None)
    assert d.started_at == T0 + 11


def test_the_controllers_ready_count_alone_says_running():
    assert derived(app(AVAILABLE), []).state is R


def test_a_new_deployment_without_pods_is_queued_pending():
    d = derived(app({}), [])
    assert (d.state, d.reason) == (Q, "Pending")


def test_a_pending_replica_gives_its_reason():
    d = derived(app({}), [pod("web-1-a", 10, "Pending", waiting="ContainerCreating")])
    assert (d.state, d.reason) == (Q, "ContainerCreating")


def test_a_deleted_replica_is_never_terminal_and_its_replacement_keeps_it_going():
    drained = pod("web-1-a", 10, "Running", deleted=60)
    replacement = pod("web-1-b", 61, "Pending", waiting="ContainerCreating")
    d = derived(app(REPLACING), [drained, replacement])
    assert not d.state.is_terminal
    assert (d.state, d.reason) == (Q, "ContainerCreating")
    d = derived(app(REPLACING), [drained, pod("web-1-b", 61, "Running")])
    assert d.state is R


def test_a_replica_that_failed_or_was_evicted_is_not_the_runs_end():
    failed = project({"metadata": {
        "name": "web-1-a", "namespace": "apps", "uid": "u1", "creationTimestamp": at(1),
        "labels": {RUN_ID_LABEL: "run-1", KIND_LABEL: "app"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "uid": RS_UID,
                             "controller": True}]},
        "status": {"phase": "Failed", "reason": "Evicted", "message": "node drained"}})
    d = derived(app(REPLACING), [failed])
    assert (d.state, d.reason) == (Q, "Pending")


def test_a_deployment_being_deleted_is_cancelled_stopped():
    d = derived(app(AVAILABLE, deleted=80), [pod("web-1-a", 10, "Running")])
    assert (d.state, d.reason, d.finished_at) == (C, "Stopped", T0 + 80)


def test_a_deletion_after_the_platforms_cancel_is_cancelled_cancelled():
    d = derived(app(AVAILABLE, deleted=80), [], cancel=True)
    assert (d.state, d.reason) == (C, "Cancelled")
    d = derived(app(AVAILABLE, deleted=80, cancel=True), [])
    assert (d.state, d.reason) == (C, "Cancelled")


def test_a_deployment_scaled_to_zero_is_cancelled():
    d = derived(app(AVAILABLE, replicas=0), [pod("web-1-a", 10, "Running")])
    assert (d.state, d.reason, d.finished_at) == (C, "Stopped", None)


def test_a_controller_that_vanished_unseen_was_stopped():
    lost = dataclasses.replace(app(AVAILABLE), final_state_unknown=True)
    assert (derived(lost, []).state, derived(lost, []).reason) == (C, "Stopped")


def test_progress_deadline_exceeded_fails_the_run():
    status = {"observedGeneration": 1, "replicas": 1, "unavailableReplicas": 1,
              "conditions": [progressing("False", "ProgressDeadlineExceeded", 70)]}
    d = derived(app(status), [pod("web-1-a", 10, "Pending", waiting="ImagePullBackOff")])
    assert (d.state, d.reason, d.finished_at) == (F, "ProgressDeadlineExceeded", T0 + 70)
    assert d.message == "ReplicaSet web-1 ProgressDeadlineExceeded"
    # the failure came first; the platform's later clean-up does not make it a cancel
    assert derived(app(status, deleted=90), []).state is F


def test_progressing_false_for_another_reason_is_not_a_failure():
    status = {"conditions": [progressing("False", "ReplicaSetUpdated")]}
    assert derived(app(status), []).state is Q


def test_a_replica_crash_looping_past_the_limit_fails_the_run_with_its_exit_code():
    looping = pod("web-1-a", 10, "Running", waiting="CrashLoopBackOff",
                  restarts=POLICY.crashloop_failure_restarts, last_exit=3)
    d = derived(app(REPLACING), [looping])
    assert (d.state, d.reason, d.exit_code) == (F, "CrashLoopBackOff", 3)
    assert d.judged


def test_a_crash_loop_below_the_limit_shows_running_and_asks_for_a_recheck():
    looping = pod("web-1-a", 10, "Running", waiting="CrashLoopBackOff", restarts=1,
                  last_exit=3)
    d = derived(app(REPLACING), [looping])
    assert (d.state, d.reason) == (R, "CrashLoopBackOff")
    assert d.recheck_after is not None
    assert d.recheck_after > 0


def test_a_crash_looping_new_pod_does_not_fail_a_run_another_replica_serves():
    looping = pod("web-2-a", 60, "Running", waiting="CrashLoopBackOff",
                  restarts=POLICY.crashloop_failure_restarts, last_exit=3)
    d = derived(app(AVAILABLE), [pod("web-1-a", 10, "Running"), looping])
    assert d.state is R


def test_a_deleted_crash_looping_replica_does_not_fail_the_run():
    looping = pod("web-1-a", 10, "Running", waiting="CrashLoopBackOff",
                  restarts=POLICY.crashloop_failure_restarts, last_exit=3, deleted=60)
    assert not derived(app(REPLACING), [looping]).state.is_terminal
