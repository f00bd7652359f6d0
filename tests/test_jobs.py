"""sniffer.jobview and sniffer.jobs: one table row per Job status shape the Kubernetes Job
controller (pkg/controller/job, v1.31+) produces, with the attempt pods beside it.

The shapes follow the controller's behaviour: a suspended Job carries Suspended=True
(reason JobSuspended) and no startTime; a running Job counts its pods in active/ready/
failed/succeeded; success is SuccessCriteriaMet=True (reason CompletionsReached) and,
once the pods are gone, Complete=True with completionTime; failure is FailureTarget=True
and then Failed=True with the same reason (BackoffLimitExceeded, DeadlineExceeded,
PodFailurePolicy). Zero counts are omitted, as the API server's JSON omits them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sniffer.jobs import attempts, attempts_behind, derive_job, is_attempt, job_lost, owned_by_job
from sniffer.jobview import JobView, MalformedJob, project_job
from sniffer.podview import CANCEL_ANNOTATION, KIND_LABEL, RUN_ID_LABEL, MalformedPod, project
from sniffer.states import Derived, StatePolicy, WorkloadState

T0 = 1_767_225_600.0
POLICY = StatePolicy()
JOB_UID = "6f1c2d4e-0000-4000-8000-00000000j0b1"
Q, R, S, F, C = (WorkloadState.QUEUED, WorkloadState.RUNNING, WorkloadState.SUCCEEDED,
                 WorkloadState.FAILED, WorkloadState.CANCELLED)


def at(offset: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + offset))


def cond(type_: str, offset: float, reason: str, message: str = "",
         status: str = "True") -> dict[str, Any]:
    out = {"type": type_, "status": status, "lastProbeTime": at(offset),
           "lastTransitionTime": at(offset), "reason": reason}
    if message:
        out["message"] = message
    return out


def job_obj(status: dict[str, Any] | None = None, *, suspend: bool = False,
            deleted: float | None = None, cancel: bool = False, kind: str | None = None,
            backoff_limit: int = 3) -> dict[str, Any]:
    labels = {RUN_ID_LABEL: "run-1"}
    if kind:
        labels[KIND_LABEL] = kind
    meta: dict[str, Any] = {
        "name": "train", "namespace": "ml", "uid": JOB_UID, "resourceVersion": "100",
        "creationTimestamp": at(0), "labels": labels,
        "annotations": {CANCEL_ANNOTATION: "true"} if cancel else {}}
    if deleted is not None:
        meta["deletionTimestamp"] = at(deleted)
        meta["deletionGracePeriodSeconds"] = 0
        meta["finalizers"] = ["foregroundDeletion"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"parallelism": 1, "completions": 1, "backoffLimit": backoff_limit,
                     "suspend": suspend, "completionMode": "NonIndexed",
                     "podReplacementPolicy": "TerminatingOrFailed",
                     "template": {"spec": {"containers": [{"name": "main"}]}}},
            "status": status or {}}


def job(status: dict[str, Any] | None = None, **kw: Any) -> JobView:
    return project_job(job_obj(status, **kw))


def pod_obj(name: str, created: float, phase: str, *, exit_code: int | None = None,
            reason: str | None = None, message: str | None = None,
            waiting: str | None = None, owner_uid: str = JOB_UID,
            deleted: float | None = None) -> dict[str, Any]:
    state: dict[str, Any]
    if exit_code is not None:
        term: dict[str, Any] = {"exitCode": exit_code, "reason": reason or "Error",
                                "startedAt": at(created + 2), "finishedAt": at(created + 9)}
        if message:
            term["message"] = message
        state = {"terminated": term}
    elif waiting:
        state = {"waiting": {"reason": waiting}}
    else:
        state = {"running": {"startedAt": at(created + 2)}}
    meta: dict[str, Any] = {
        "name": name, "namespace": "ml", "uid": f"uid-{name}", "resourceVersion": "7",
        "creationTimestamp": at(created),
        "labels": {RUN_ID_LABEL: "run-1", "batch.kubernetes.io/controller-uid": owner_uid,
                   "batch.kubernetes.io/job-name": "train", "job-name": "train",
                   "controller-uid": owner_uid},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "train",
                             "uid": owner_uid, "controller": True,
                             "blockOwnerDeletion": True}],
        "finalizers": ["batch.kubernetes.io/job-tracking"]}
    if deleted is not None:
        meta["deletionTimestamp"] = at(deleted)
        meta["deletionGracePeriodSeconds"] = 30
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [
        {"name": "main", "restartCount": 0, "started": phase == "Running", "state": state}]}
    if phase != "Pending" or waiting == "ContainerCreating":
        status["startTime"] = at(created + 1)
    return {"metadata": meta, "spec": {"containers": [{"name": "main"}],
                                       "restartPolicy": "Never"}, "status": status}


def pod(name: str, created: float, phase: str, **kw: Any) -> Any:
    return project(pod_obj(name, created, phase, **kw))


def derived(j: JobView, pods: list[Any] = (), *, cancel: bool = False,  # type: ignore[assignment]
            now: float = T0 + 10_000) -> Derived:
    return derive_job(j, pods, now=now, policy=POLICY, cancel_requested=cancel)


SUSPENDED = {"conditions": [cond("Suspended", 0, "JobSuspended", "Job suspended")]}
STARTED = {"startTime": at(1), "active": 1, "uncountedTerminatedPods": {}}
RUNNING = {"startTime": at(1), "active": 1, "ready": 1, "uncountedTerminatedPods": {}}
BACKOFF_MSG = "Job has reached the specified backoff limit"
BACKOFF: dict[str, Any] = {"conditions": [
    cond("FailureTarget", 400, "BackoffLimitExceeded", BACKOFF_MSG),
    cond("Failed", 401, "BackoffLimitExceeded", BACKOFF_MSG)],
    "startTime": at(1), "failed": 4, "uncountedTerminatedPods": {}}
DEADLINE = {"conditions": [
    cond("FailureTarget", 600, "DeadlineExceeded", "Job was active longer than specified deadline"),
    cond("Failed", 631, "DeadlineExceeded", "Job was active longer than specified deadline")],
    "startTime": at(1), "failed": 1}
POD_FAILURE_POLICY_MSG = ("Container main for pod ml/train-a failed with exit code 42 "
                          "matching FailJob rule at index 0")
POLICY_FAILED = {"conditions": [
    cond("FailureTarget", 20, "PodFailurePolicy", POD_FAILURE_POLICY_MSG),
    cond("Failed", 21, "PodFailurePolicy", POD_FAILURE_POLICY_MSG)],
    "startTime": at(1), "failed": 1}
DONE_MSG = "Reached expected number of succeeded pods"
SUCCESS_MET = {"conditions": [cond("SuccessCriteriaMet", 30, "CompletionsReached", DONE_MSG)],
    "startTime": at(1), "succeeded": 1, "terminating": 0, "uncountedTerminatedPods": {}}
COMPLETE = {"conditions": [cond("SuccessCriteriaMet", 30, "CompletionsReached", DONE_MSG),
                           cond("Complete", 31, "CompletionsReached", DONE_MSG)],
    "startTime": at(1), "completionTime": at(31), "succeeded": 1, "ready": 0}
COMPLETE_PRE_131 = {"conditions": [cond("Complete", 31, "")], "startTime": at(1),
                    "completionTime": at(31), "succeeded": 1}


# --- the table --------------------------------------------------------------------------

ROWS = [
    # id, job status, job kwargs, pods, cancel, (state, reason, exit code)
    ("created-suspended-is-queued", SUSPENDED, {"suspend": True}, [], False,
     (Q, "Suspended", None)),
    ("not-yet-synced-is-queued", None, {}, [], False, (Q, "Pending", None)),
    ("first-pod-creating-is-queued", STARTED, {},
     [("train-a", 1, "Pending", {"waiting": "ContainerCreating"})], False,
     (Q, "ContainerCreating", None)),
    ("first-pod-cannot-pull-is-queued-not-failed", STARTED, {},
     [("train-a", 1, "Pending", {"waiting": "ImagePullBackOff"})], False,
     (Q, "ImagePullBackOff", None)),
    ("attempt-running-is-running", RUNNING, {}, [("train-a", 1, "Running", {})], False,
     (R, None, None)),
    ("ready-count-without-pods-is-running", RUNNING, {}, [], False, (R, None, None)),
    ("failed-attempt-with-retry-pending-is-not-terminal",
     {"startTime": at(1), "active": 1, "failed": 1}, {},
     [("train-a", 1, "Failed", {"exit_code": 1}),
      ("train-b", 20, "Pending", {"waiting": "ContainerCreating"})],
     False, (R, "Retrying", None)),
    ("failed-attempt-in-backoff-is-not-terminal", {"startTime": at(1), "failed": 1}, {},
     [("train-a", 1, "Failed", {"exit_code": 1})], False, (R, "Retrying", None)),
    ("failed-count-alone-keeps-it-running", {"startTime": at(1), "failed": 2}, {}, [], False,
     (R, "Retrying", None)),
    ("retry-running-is-running", {"startTime": at(1), "active": 1, "ready": 1, "failed": 2}, {},
     [("train-a", 1, "Failed", {"exit_code": 1}), ("train-b", 20, "Failed", {"exit_code": 1}),
      ("train-c", 40, "Running", {})], False, (R, None, None)),
    ("success-criteria-met-is-succeeded", SUCCESS_MET, {},
     [("train-a", 1, "Succeeded", {"exit_code": 0, "reason": "Completed"})], False,
     (S, "Completed", 0)),
    ("complete-is-succeeded", COMPLETE, {}, [], False, (S, "Completed", 0)),
    ("complete-before-1.31-is-succeeded", COMPLETE_PRE_131, {}, [], False, (S, "Completed", 0)),
    ("backoff-limit-exceeded-with-last-exit-code", BACKOFF, {},
     [("train-a", 1, "Failed", {"exit_code": 1}), ("train-b", 20, "Failed", {"exit_code": 1}),
      ("train-d", 300, "Failed", {"exit_code": 3, "message": "disk full"}),
      ("train-c", 100, "Failed", {"exit_code": 2})], False,
     (F, "BackoffLimitExceeded", 3)),
    ("backoff-limit-exceeded-after-pods-are-gone", BACKOFF, {}, [], False,
     (F, "BackoffLimitExceeded", None)),
    ("failure-target-alone-is-failed", {"conditions": BACKOFF["conditions"][:1], "failed": 4,
                                        "startTime": at(1)}, {},
     [("train-a", 1, "Failed", {"exit_code": 5})], False, (F, "BackoffLimitExceeded", 5)),
    ("deadline-exceeded-is-failed", DEADLINE, {},
     [("train-a", 1, "Failed", {"exit_code": 143, "deleted": 600})], False,
     (F, "DeadlineExceeded", 143)),
    ("pod-failure-policy-fail-job-on-42", POLICY_FAILED, {},
     [("train-a", 1, "Failed", {"exit_code": 42})], False, (F, "PodFailurePolicy", 42)),
    ("deleted-by-cancel-is-cancelled", RUNNING, {"deleted": 50},
     [("train-a", 1, "Running", {"deleted": 50})], True, (C, "Cancelled", None)),
    ("deleted-with-cancel-annotation-is-cancelled", RUNNING, {"deleted": 50, "cancel": True},
     [], False, (C, "Cancelled", None)),
    ("deleted-by-someone-else-is-failed", RUNNING, {"deleted": 50}, [], False,
     (F, "Deleted", None)),
    ("deleted-app-is-stopped", RUNNING, {"deleted": 50, "kind": "app"}, [], False,
     (C, "Stopped", None)),
    ("suspended-by-cancel-is-cancelled", SUSPENDED, {"suspend": True}, [], True,
     (C, "Cancelled", None)),
    ("completed-then-deleted-by-ttl-stays-succeeded", COMPLETE, {"deleted": 3600}, [], False,
     (S, "Completed", 0)),
    ("failed-then-cancelled-stays-failed", BACKOFF, {"deleted": 3600}, [], True,
     (F, "BackoffLimitExceeded", None)),
]


@pytest.mark.parametrize(("status", "kw", "pods", "cancel", "want"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_job_status_shapes_give_the_run_state(status, kw, pods, cancel, want):
    views = [pod(name, created, phase, **pkw) for name, created, phase, pkw in pods]
    got = derived(job(status, **kw), views, cancel=cancel)
    assert (got.state, got.reason, got.exit_code) == want
    assert not got.judged
    assert got.recheck_after is None


def test_failure_carries_the_last_attempts_message_else_the_jobs():
    views = [pod("train-a", 1, "Failed", exit_code=1),
             pod("train-b", 20, "Failed", exit_code=3, message="disk full")]
    assert derived(job(BACKOFF), views).message == "disk full"
    assert derived(job(BACKOFF), views[:1]).message == (
        "Job has reached the specified backoff limit")
    assert derived(job(BACKOFF)).finished_at == T0 + 400  # FailureTarget's moment


def test_success_finished_at_is_the_same_before_and_after_complete():
    assert derived(job(SUCCESS_MET)).finished_at == derived(job(COMPLETE)).finished_at == T0 + 30
    assert derived(job(COMPLETE_PRE_131)).finished_at == T0 + 31


def test_a_terminal_result_does_not_depend_on_now():
    for status in (BACKOFF, COMPLETE, DEADLINE):
        assert derived(job(status), now=T0 + 1) == derived(job(status), now=T0 + 99_999)


def test_pods_of_another_job_are_ignored():
    stranger = pod("other-a", 1, "Running", owner_uid="another-uid")
    assert derived(job(STARTED), [stranger]).state is Q
    assert not is_attempt(job(STARTED), stranger)


def test_cancel_annotation_is_ignored_when_the_policy_says_so():
    view = job(RUNNING, deleted=50, cancel=True)
    got = derive_job(view, [], now=T0, policy=StatePolicy(cancel_annotation=False))
    assert (got.state, got.reason) == (F, "Deleted")


# --- a Job that vanished ------------------------------------------------------------------


def test_a_vanished_running_job_is_lost():
    view = dataclasses.replace(job(RUNNING), final_state_unknown=True)
    assert (derived(view).state, derived(view).reason) == (F, "PodLost")
    assert derived(view, cancel=True).state is C


def test_a_vanished_job_whose_last_view_had_finished_keeps_that_outcome():
    view = dataclasses.replace(job(COMPLETE), final_state_unknown=True)
    assert derived(view).state is S


def test_job_lost_takes_what_the_attempt_pods_still_say():
    ok = pod("train-b", 20, "Succeeded", exit_code=0, reason="Completed")
    failed = pod("train-a", 1, "Failed", exit_code=1)
    running = pod("train-c", 30, "Running")
    assert job_lost([failed, ok], now=T0, policy=POLICY).state is S
    assert job_lost([failed], now=T0, policy=POLICY).reason == "PodLost"
    assert job_lost([failed], now=T0, policy=POLICY, cancel_requested=True).state is C
    assert job_lost([running], now=T0, policy=POLICY).state is R
    assert job_lost([], now=T0, policy=POLICY, started_at=T0 + 1) == Derived(
        F, "PodLost", "pod lost", started_at=T0 + 1)


# --- attempts ---------------------------------------------------------------------------


def test_a_failed_job_is_ahead_of_a_cache_missing_its_last_failed_attempt():
    failed = job(BACKOFF)  # the Job counts 4 failed attempts
    seen = [pod(f"train-{i}", 10 * i, "Failed", exit_code=i) for i in range(3)]
    assert attempts_behind(failed, seen)
    assert attempts_behind(failed, [*seen, pod("train-3", 30, "Running")])
    assert not attempts_behind(failed, [*seen, pod("train-3", 30, "Failed", exit_code=56)])


def test_uncounted_failed_attempts_count_toward_what_the_cache_must_show():
    counting = job({**POLICY_FAILED, "failed": 0,
                    "uncountedTerminatedPods": {"failed": ["uid-train-a"]}})
    assert counting.uncounted_failed == 1
    assert attempts_behind(counting, [pod("train-a", 0, "Running")])
    assert not attempts_behind(counting, [pod("train-a", 0, "Failed", exit_code=42)])


def test_a_running_job_with_every_failure_cached_is_not_behind():
    assert not attempts_behind(job({**STARTED, "failed": 1}),
                               [pod("train-a", 0, "Failed", exit_code=1),
                                pod("train-b", 20, "Running")])


def test_attempts_count_the_status_and_name_the_newest_pod():
    views = [pod("train-b", 20, "Pending", waiting="ContainerCreating"),
             pod("train-a", 1, "Failed", exit_code=1)]
    got = attempts(job({"startTime": at(1), "active": 1, "failed": 1}), views)
    assert (got.count, got.current_pod) == (2, "train-b")


def test_attempts_outlive_removed_pods():
    got = attempts(job({"startTime": at(1), "active": 1, "failed": 3}),
                   [pod("train-d", 90, "Running")])
    assert (got.count, got.current_pod) == (4, "train-d")


def test_attempts_without_the_job_count_the_pods():
    got = attempts(None, [pod("train-a", 1, "Failed", exit_code=1), pod("train-b", 20, "Running")])
    assert (got.count, got.current_pod) == (2, "train-b")


def test_a_suspended_job_has_no_attempts():
    assert attempts(job(SUSPENDED, suspend=True), []) == attempts(None, [])


# --- which pods belong to a Job -----------------------------------------------------------


def test_a_job_pod_is_owned_by_its_job():
    view = pod("train-a", 1, "Running")
    assert owned_by_job(view)
    assert is_attempt(job(RUNNING), view)
    assert (view.owner_kind, view.owner_uid) == ("Job", JOB_UID)


def test_an_orphaned_job_pod_is_still_known_by_its_uid_label():
    raw = pod_obj("train-a", 1, "Running")
    del raw["metadata"]["ownerReferences"]
    view = project(raw)
    assert owned_by_job(view)
    assert is_attempt(job(RUNNING), view)


def test_a_bare_pod_and_a_replicaset_pod_are_not_job_pods():
    raw = pod_obj("web", 1, "Running")
    raw["metadata"]["labels"] = {RUN_ID_LABEL: "run-2"}
    del raw["metadata"]["ownerReferences"]
    assert not owned_by_job(project(raw))
    raw["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                           "name": "web-5d8", "uid": "rs-1", "controller": True}]
    view = project(raw)
    assert not owned_by_job(view)
    assert (view.owner_kind, view.owner_uid) == ("ReplicaSet", "rs-1")


def test_a_non_controller_owner_is_not_the_controller():
    raw = pod_obj("train-a", 1, "Running")
    raw["metadata"]["ownerReferences"][0]["controller"] = False
    del raw["metadata"]["labels"]["batch.kubernetes.io/controller-uid"]
    del raw["metadata"]["labels"]["controller-uid"]
    assert project(raw).owner_kind is None
    assert not owned_by_job(project(raw))


# --- the projection -----------------------------------------------------------------------


def test_the_projection_keeps_spec_status_and_owner():
    raw = job_obj({**BACKOFF, "ready": 0, "terminating": 1, "active": 0})
    raw["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "CronJob",
                                           "name": "nightly", "uid": "cj-1", "controller": True}]
    raw["spec"]["activeDeadlineSeconds"] = 600
    view = project_job(json.loads(json.dumps(raw)))
    assert (view.key, view.name, view.uid, view.run_id) == ("ml/train", "train", JOB_UID, "run-1")
    assert (view.backoff_limit, view.active_deadline_s, view.completions) == (3, 600, 1)
    assert (view.failed, view.terminating, view.active, view.succeeded) == (4, 1, 0, 0)
    assert [c.type for c in view.conditions] == ["FailureTarget", "Failed"]
    assert view.owner is not None
    assert (view.owner.kind, view.owner.name) == ("CronJob", "nightly")
    assert hash(view) == hash(project_job(raw))


def test_a_repeated_condition_keeps_the_last():
    view = job({"conditions": [cond("Suspended", 0, "JobSuspended"),
                               cond("Suspended", 9, "JobResumed", status="False")]})
    assert view.condition("Suspended").status == "False"
    assert view.holds("Suspended") is None


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda j: j["metadata"].pop("uid"), "metadata.uid"),
    (lambda j: j["status"].update(failed=-1), "status.failed"),
    (lambda j: j["status"].update(failed="1"), "status.failed"),
    (lambda j: j["spec"].update(suspend="yes"), "spec.suspend"),
    (lambda j: j["status"].update(startTime="yesterday"), "status.startTime"),
    (lambda j: j["metadata"]["labels"].update({RUN_ID_LABEL: "-bad"}), "run-id"),
    (lambda j: j["metadata"].update(ownerReferences=[{"controller": True}]),
     "metadata.ownerReferences[0].kind"),
    (lambda j: j["status"].update(conditions=[{"status": "True"}]), "status.conditions[0].type"),
])
def test_a_malformed_job_names_the_field(mutate, field):
    raw = job_obj(dict(RUNNING))
    mutate(raw)
    with pytest.raises(MalformedJob, match=field.replace("[", r"\[").replace("]", r"\]")) as err:
        project_job(raw)
    assert isinstance(err.value, MalformedPod)  # callers skip it as they skip a bad pod


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)


@settings(suppress_health_check=[HealthCheck.too_slow])  # a shared, loaded machine
@given(st.dictionaries(st.sampled_from(["metadata", "spec", "status"]), JSON))
def test_any_json_projects_or_raises_malformed_job(obj):
    with contextlib.suppress(MalformedJob):
        project_job(obj)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["metadata", "spec", "status"]), st.text(max_size=8), JSON)
def test_a_real_job_with_any_field_mutated_projects_or_raises_malformed_job(part, key, value):
    raw = job_obj(dict(BACKOFF))
    raw[part][key] = value
    try:
        view = project_job(raw)
    except MalformedJob:
        return
    derived(view, [pod("train-a", 1, "Failed", exit_code=1)])  # and derives without raising
