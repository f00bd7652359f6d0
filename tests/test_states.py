"""sniffer.states: one table row per pod shape real kubelets and controllers produce.

Each fixture is a pod object shaped as the API server returns it (what `kubectl get pod
-o json` prints, trimmed of fields Sniffer never reads); times are offsets from T0.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sniffer.podview import (
    CANCEL_ANNOTATION,
    KIND_LABEL,
    OUTCOME_FINALIZER,
    RUN_ID_LABEL,
    MalformedPod,
    PodView,
    project,
)
from sniffer.states import (
    Derived,
    StatePolicy,
    Underivable,
    WorkloadState,
    advances,
    derive,
)

T0 = 1_767_225_600.0  # creation time of every fixture pod
POLICY = StatePolicy()
Q, R, S, F, C = (WorkloadState.QUEUED, WorkloadState.RUNNING, WorkloadState.SUCCEEDED,
                 WorkloadState.FAILED, WorkloadState.CANCELLED)


def at(offset: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + offset))


# --- building blocks shaped like the API's -------------------------------------------------


def cond(type_: str, status: str, offset: float, reason: str | None = None,
         message: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None,
                           "lastTransitionTime": at(offset)}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def running(name: str, started: float, *, restarts: int = 0, ready: bool = True,
            last: dict[str, Any] | None = None, probe_started: bool = True) -> dict[str, Any]:
    return {"name": name, "ready": ready, "started": probe_started, "restartCount": restarts,
            "image": f"registry.example/{name}:1", "imageID": f"sha256:{name}",
            "containerID": f"containerd://{name}",
            "state": {"running": {"startedAt": at(started)}},
            "lastState": {"terminated": last} if last else {}}


def waiting(name: str, reason: str, message: str | None = None, *, restarts: int = 0,
            last: dict[str, Any] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"reason": reason}
    if message:
        state["message"] = message
    return {"name": name, "ready": False, "started": False, "restartCount": restarts,
            "image": f"registry.example/{name}:1", "imageID": "",
            "state": {"waiting": state}, "lastState": {"terminated": last} if last else {}}


def terminated(name: str, exit_code: int, reason: str, started: float, finished: float,
               message: str | None = None, *, restarts: int = 0) -> dict[str, Any]:
    return {"name": name, "ready": False, "started": False, "restartCount": restarts,
            "image": f"registry.example/{name}:1", "imageID": f"sha256:{name}",
            "containerID": f"containerd://{name}",
            "state": {"terminated": term(exit_code, reason, started, finished, message)},
            "lastState": {}}


def term(exit_code: int, reason: str, started: float, finished: float,
         message: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"exitCode": exit_code, "reason": reason, "startedAt": at(started),
                           "finishedAt": at(finished), "containerID": "containerd://old"}
    if message:
        out["message"] = message
    return out


def pod(status: dict[str, Any], *, kind: str = "job", restart_policy: str = "Never",
        containers: tuple[str, ...] = ("main",), init: tuple[str, ...] = (),
        sidecars: tuple[str, ...] = (), annotations: dict[str, str] | None = None,
        deleted_at: float | None = None, grace: int = 30) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "run-42-main-0", "namespace": "team-a", "uid": "7d9a1c9e-2f0b-4b8e-9c1e-1",
        "resourceVersion": "918273", "creationTimestamp": at(0),
        "labels": {RUN_ID_LABEL: "run-42", KIND_LABEL: kind},
        "annotations": dict(annotations or {}),
        "finalizers": [OUTCOME_FINALIZER],
    }
    if deleted_at is not None:
        metadata["deletionTimestamp"] = at(deleted_at + grace)
        metadata["deletionGracePeriodSeconds"] = grace
    init_specs: list[dict[str, Any]] = [{"name": n, "image": f"registry.example/{n}:1"}
                                        for n in init]
    init_specs += [{"name": n, "image": f"registry.example/{n}:1", "restartPolicy": "Always"}
                   for n in sidecars]
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy, "nodeName": "node-7",
        "containers": [{"name": n, "image": f"registry.example/{n}:1"} for n in containers],
    }
    if init_specs:
        spec["initContainers"] = init_specs
    return json.loads(json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                                  "spec": spec, "status": status}))


SCHEDULED = cond("PodScheduled", "True", 0)


def started_status(phase: str, *, conditions: list[dict[str, Any]] | None = None,
                   start: float = 1, **fields: Any) -> dict[str, Any]:
    return {"phase": phase, "hostIP": "10.0.0.7", "podIP": "10.244.1.9", "qosClass": "Burstable",
            "startTime": at(start), "conditions": conditions or [SCHEDULED], **fields}


# --- the table ----------------------------------------------------------------------------


@dataclass
class Case:
    raw: dict[str, Any]
    now: float  # offset from T0
    expect: dict[str, Any]
    policy: StatePolicy = field(default_factory=StatePolicy)
    cancel_requested: bool = False


PULL_MSG = 'Back-off pulling image "registry.example/main:1"'
OOM = term(137, "OOMKilled", 100, 160)
CRASH = term(1, "Error", 100, 103, "Traceback (most recent call last): ...")
UNSCHEDULABLE_MSG = ("0/12 nodes are available: 12 Insufficient nvidia.com/gpu. preemption: "
                     "0/12 nodes are available: 12 No preemption victims found.")

CASES: dict[str, Case] = {
    # --- Pending ------------------------------------------------------------------------
    "unschedulable": Case(
        pod({"phase": "Pending", "qosClass": "Burstable", "conditions": [
            cond("PodScheduled", "False", 0, "Unschedulable", UNSCHEDULABLE_MSG)]}),
        now=60, expect={"state": Q, "reason": "Unschedulable", "message": UNSCHEDULABLE_MSG,
                        "started_at": None, "recheck_after": None}),
    "unschedulable_with_deadline_not_yet": Case(
        pod({"phase": "Pending", "conditions": [
            cond("PodScheduled", "False", 0, "Unschedulable", UNSCHEDULABLE_MSG)]}),
        now=100, policy=StatePolicy(pending_failure_after_s=900),
        expect={"state": Q, "reason": "Unschedulable", "recheck_after": 800}),
    "unschedulable_past_deadline": Case(
        pod({"phase": "Pending", "conditions": [
            cond("PodScheduled", "False", 0, "Unschedulable", UNSCHEDULABLE_MSG)]}),
        now=5000, policy=StatePolicy(pending_failure_after_s=900),
        expect={"state": F, "reason": "Unschedulable", "finished_at": T0 + 900}),
    "scheduling_gated": Case(
        pod({"phase": "Pending", "conditions": [
            cond("PodScheduled", "False", 0, "SchedulingGated",
                 "Scheduling is blocked due to non-empty scheduling gates")]}),
        now=10, expect={"state": Q, "reason": "SchedulingGated"}),
    "not_yet_scheduled": Case(
        pod({"phase": "Pending", "qosClass": "BestEffort"}),
        now=0, expect={"state": Q, "reason": "Scheduling"}),
    "container_creating": Case(
        pod(started_status("Pending", containerStatuses=[waiting("main", "ContainerCreating")])),
        now=5, expect={"state": Q, "reason": "ContainerCreating", "started_at": None,
                       "recheck_after": None}),
    "scheduled_without_statuses_yet": Case(
        pod(started_status("Pending")),
        now=1, expect={"state": Q, "reason": "ContainerCreating"}),
    "init_containers_running": Case(
        pod(started_status("Pending",
                           initContainerStatuses=[running("migrate", 3, ready=False)],
                           containerStatuses=[waiting("main", "PodInitializing")]),
            init=("migrate",)),
        now=20, expect={"state": Q, "reason": "Initializing"}),
    "pod_initializing": Case(
        pod(started_status("Pending",
                           initContainerStatuses=[terminated("migrate", 0, "Completed", 3, 9)],
                           containerStatuses=[waiting("main", "PodInitializing")]),
            init=("migrate",)),
        now=10, expect={"state": Q, "reason": "PodInitializing"}),
    "sidecar_not_started_yet": Case(
        pod(started_status("Pending",
                           initContainerStatuses=[running("proxy", 3, ready=False,
                                                          probe_started=False)],
                           containerStatuses=[waiting("main", "PodInitializing")]),
            sidecars=("proxy",)),
        now=10, expect={"state": Q, "reason": "Initializing"}),
    "image_pull_backoff_within_grace": Case(
        pod(started_status("Pending", containerStatuses=[
            waiting("main", "ImagePullBackOff", PULL_MSG)])),
        now=61, expect={"state": Q, "reason": "ImagePullBackOff",
                        "message": f"container main: {PULL_MSG}", "recheck_after": 240}),
    "err_image_pull_within_grace": Case(
        pod(started_status("Pending", containerStatuses=[
            waiting("main", "ErrImagePull", "failed to pull and unpack image: 401 Unauthorized")
        ])),
        now=31, expect={"state": Q, "reason": "ErrImagePull", "recheck_after": 270}),
    "image_pull_backoff_past_limit": Case(
        pod(started_status("Pending", containerStatuses=[
            waiting("main", "ImagePullBackOff", PULL_MSG)])),
        now=400, expect={"state": F, "reason": "ImagePullBackOff", "started_at": None,
                         "finished_at": T0 + 301, "exit_code": None}),
    "invalid_image_name_fails_at_once": Case(
        pod(started_status("Pending", containerStatuses=[
            waiting("main", "InvalidImageName",
                    'Failed to apply default image tag "registry.example/Main:1": '
                    "invalid reference format")])),
        now=2, expect={"state": F, "reason": "InvalidImageName"}),
    "create_container_config_error_within_grace": Case(
        pod(started_status("Pending", containerStatuses=[
            waiting("main", "CreateContainerConfigError", 'secret "db-creds" not found')])),
        now=11, expect={"state": Q, "reason": "CreateContainerConfigError",
                        "message": 'container main: secret "db-creds" not found',
                        "recheck_after": 290}),
    "create_container_config_error_past_limit": Case(
        pod(started_status("Pending", containerStatuses=[
            waiting("main", "CreateContainerConfigError", 'secret "db-creds" not found')])),
        now=302, expect={"state": F, "reason": "CreateContainerConfigError",
                         "finished_at": T0 + 301}),
    "init_container_image_pull_backoff": Case(
        pod(started_status("Pending",
                           initContainerStatuses=[waiting("migrate", "ImagePullBackOff",
                                                          PULL_MSG)],
                           containerStatuses=[waiting("main", "PodInitializing")]),
            init=("migrate",)),
        now=100, expect={"state": Q, "reason": "ImagePullBackOff", "recheck_after": 201}),
    "init_container_crash_looping": Case(
        pod(started_status("Pending",
                           initContainerStatuses=[waiting(
                               "migrate", "CrashLoopBackOff",
                               "back-off 2m40s restarting failed container=migrate",
                               restarts=5, last=CRASH)],
                           containerStatuses=[waiting("main", "PodInitializing")]),
            init=("migrate",), restart_policy="OnFailure"),
        now=200, expect={"state": F, "reason": "CrashLoopBackOff", "exit_code": 1,
                         "finished_at": T0 + 103}),
    # --- Running ------------------------------------------------------------------------
    "running_with_native_sidecar": Case(
        pod(started_status("Running", conditions=[SCHEDULED, cond("Ready", "True", 9)],
                           initContainerStatuses=[running("proxy", 3)],
                           containerStatuses=[running("main", 8)]),
            sidecars=("proxy",)),
        now=100, expect={"state": R, "reason": None, "started_at": T0 + 1,
                         "finished_at": None, "recheck_after": None}),
    "running_without_start_time_uses_container_start": Case(
        pod({"phase": "Running", "conditions": [SCHEDULED],
             "containerStatuses": [running("main", 8)]}),
        now=100, expect={"state": R, "started_at": T0 + 8}),
    "crash_loop_below_limits": Case(
        pod(started_status("Running", containerStatuses=[waiting(
            "main", "CrashLoopBackOff", "back-off 20s restarting failed container=main",
            restarts=2, last=CRASH)]), restart_policy="OnFailure"),
        now=110, expect={"state": R, "reason": "CrashLoopBackOff",
                         "recheck_after": 100 + 600 - 110}),
    "crash_loop_past_restart_limit": Case(
        pod(started_status("Running", containerStatuses=[waiting(
            "main", "CrashLoopBackOff", "back-off 5m0s restarting failed container=main",
            restarts=5, last=OOM)]), restart_policy="OnFailure"),
        now=200, expect={"state": F, "reason": "CrashLoopBackOff", "exit_code": 137,
                         "finished_at": T0 + 160, "started_at": T0 + 1}),
    "crash_loop_of_slow_crashes_past_time_limit": Case(
        pod(started_status("Running", containerStatuses=[waiting(
            "main", "CrashLoopBackOff", "back-off 1m20s restarting failed container=main",
            restarts=3, last=term(1, "Error", 1000, 1400))]), restart_policy="OnFailure"),
        now=1700, expect={"state": F, "reason": "CrashLoopBackOff", "finished_at": T0 + 1600}),
    "notebook_crash_after_days_of_running_is_not_failed_at_once": Case(
        pod(started_status("Running", containerStatuses=[waiting(
            "main", "CrashLoopBackOff", "back-off 10s restarting failed container=main",
            restarts=1, last=term(137, "OOMKilled", 10, 260_000))]),
            kind="notebook", restart_policy="Always"),
        now=260_010, expect={"state": R, "reason": "CrashLoopBackOff", "recheck_after": 590}),
    "app_image_gone_after_restart": Case(
        pod(started_status("Running", containerStatuses=[waiting(
            "main", "ImagePullBackOff", PULL_MSG, restarts=1,
            last=term(143, "Error", 10, 50_000))]), kind="app", restart_policy="Always"),
        now=50_100, expect={"state": R, "reason": "ImagePullBackOff", "recheck_after": 200}),
    "running_with_one_container_restarting_in_place": Case(
        pod(started_status("Running", containerStatuses=[
            running("main", 300, restarts=1, last=OOM)]), restart_policy="OnFailure"),
        now=400, expect={"state": R, "reason": None}),
    # --- Succeeded ----------------------------------------------------------------------
    "succeeded": Case(
        pod(started_status("Succeeded", conditions=[SCHEDULED, cond(
                "Ready", "False", 3600, "PodCompleted")],
            initContainerStatuses=[terminated("proxy", 0, "Completed", 3, 3605)],
            containerStatuses=[terminated("main", 0, "Completed", 8, 3600)]),
            sidecars=("proxy",)),
        now=4000, expect={"state": S, "reason": "Completed", "exit_code": 0,
                          "started_at": T0 + 1, "finished_at": T0 + 3600}),
    # --- Failed ---------------------------------------------------------------------------
    "failed_with_error_exit": Case(
        pod(started_status("Failed", containerStatuses=[
            terminated("main", 2, "Error", 8, 70, "ValueError: bad input")])),
        now=100, expect={"state": F, "reason": "Error", "exit_code": 2,
                         "message": "ValueError: bad input", "finished_at": T0 + 70}),
    "oom_killed": Case(
        pod(started_status("Failed", containerStatuses=[
            terminated("main", 137, "OOMKilled", 8, 70)])),
        now=100, expect={"state": F, "reason": "OOMKilled", "exit_code": 137}),
    "evicted_by_kubelet": Case(
        pod(started_status(
            "Failed", reason="Evicted",
            message="The node was low on resource: memory. Threshold quantity: 100Mi, "
                    "available: 52Mi. Container main was using 3Gi, request is 1Gi.",
            conditions=[SCHEDULED, cond("DisruptionTarget", "True", 500, "TerminationByKubelet",
                                        "The node was low on resource: memory.")],
            containerStatuses=[terminated("main", 137, "Error", 8, 530)])),
        now=600, expect={"state": F, "reason": "Evicted", "exit_code": 137,
                         "finished_at": T0 + 530}),
    "active_deadline_exceeded": Case(
        pod(started_status("Failed", reason="DeadlineExceeded",
                           message="Pod was active on the node longer than the specified "
                                   "deadline",
                           containerStatuses=[terminated("main", 143, "Error", 8, 3601)])),
        now=3700, expect={"state": F, "reason": "DeadlineExceeded", "exit_code": 143}),
    # activeDeadlineSeconds counts from status.startTime: on a loaded node it can pass
    # while the container is still being created, and the kubelet writes no exit code.
    "active_deadline_exceeded_before_the_container_started": Case(
        pod(started_status("Failed", reason="DeadlineExceeded",
                           message="Pod was active on the node longer than the specified "
                                   "deadline",
                           containerStatuses=[waiting("main", "ContainerCreating")])),
        now=3700, expect={"state": F, "reason": "DeadlineExceeded", "exit_code": None}),
    "preempted": Case(
        pod(started_status("Failed", conditions=[SCHEDULED, cond(
                "DisruptionTarget", "True", 900, "PreemptionByScheduler",
                "default-scheduler: preempting to accommodate a higher priority pod")],
            containerStatuses=[terminated("main", 137, "Error", 8, 930)])),
        now=1000, expect={"state": F, "reason": "PreemptionByScheduler", "exit_code": 137}),
    "init_container_failed": Case(
        pod(started_status("Failed",
                           initContainerStatuses=[terminated("migrate", 3, "Error", 3, 6,
                                                             "relation does not exist")],
                           containerStatuses=[waiting("main", "PodInitializing")]),
            init=("migrate",)),
        now=100, expect={"state": F, "reason": "Error", "exit_code": 3,
                         "message": "relation does not exist", "finished_at": T0 + 6}),
    "first_of_two_failed_containers_decides": Case(
        pod(started_status("Failed", containerStatuses=[
            terminated("main", 137, "Error", 8, 95),
            terminated("worker", 1, "Error", 8, 90, "worker crashed")]),
            containers=("main", "worker")),
        now=100, expect={"state": F, "exit_code": 1, "message": "worker crashed",
                         "finished_at": T0 + 95}),
    "failed_with_nothing_to_say": Case(
        pod({"phase": "Failed"}), now=10,
        expect={"state": F, "reason": "Failed", "exit_code": None}),
    # --- deletion before a terminal phase -------------------------------------------------
    "job_cancelled_by_annotation": Case(
        pod(started_status("Running", containerStatuses=[running("main", 8)]),
            annotations={CANCEL_ANNOTATION: "true"}, deleted_at=600),
        now=610, expect={"state": C, "reason": "Cancelled", "finished_at": T0 + 600,
                         "started_at": T0 + 1}),
    "job_cancelled_by_platform_flag": Case(
        pod(started_status("Running", containerStatuses=[running("main", 8)]), deleted_at=600),
        now=610, cancel_requested=True,
        expect={"state": C, "reason": "Cancelled", "finished_at": T0 + 600}),
    "cancel_annotation_not_honoured_when_policy_says_so": Case(
        pod(started_status("Running", containerStatuses=[running("main", 8)]),
            annotations={CANCEL_ANNOTATION: "true"}, deleted_at=600),
        now=610, policy=StatePolicy(cancel_annotation=False),
        expect={"state": F, "reason": "Deleted"}),
    "queued_job_cancelled": Case(
        pod({"phase": "Pending", "conditions": [
            cond("PodScheduled", "False", 0, "Unschedulable", UNSCHEDULABLE_MSG)]},
            deleted_at=50), now=60, cancel_requested=True,
        expect={"state": C, "reason": "Cancelled", "started_at": None,
                "finished_at": T0 + 50}),
    "notebook_stopped": Case(
        pod(started_status("Running", containerStatuses=[running("main", 8)]),
            kind="notebook", restart_policy="Always", deleted_at=7200),
        now=7201, expect={"state": C, "reason": "Stopped", "finished_at": T0 + 7200}),
    "app_evicted_by_api": Case(
        pod(started_status("Running", conditions=[SCHEDULED, cond(
                "DisruptionTarget", "True", 7200, "EvictionByEvictionAPI",
                "Eviction API: evicting")],
            containerStatuses=[running("main", 8)]),
            kind="app", restart_policy="Always", deleted_at=7200),
        now=7201, expect={"state": F, "reason": "EvictionByEvictionAPI"}),
    "job_deleted": Case(
        pod(started_status("Running", containerStatuses=[running("main", 8)]), deleted_at=300),
        now=301, expect={"state": F, "reason": "Deleted", "finished_at": T0 + 300}),
    "job_on_lost_node_deleted_by_taint_manager": Case(
        pod(started_status("Running", conditions=[SCHEDULED, cond(
                "DisruptionTarget", "True", 900, "DeletionByTaintManager",
                "Taint manager: deleting due to NoExecute taint")],
            containerStatuses=[running("main", 8)]), deleted_at=900),
        now=901, expect={"state": F, "reason": "DeletionByTaintManager"}),
    "unknown_phase_pod_deleted_by_pod_gc": Case(
        pod({"phase": "Unknown", "conditions": [SCHEDULED, cond(
                "DisruptionTarget", "True", 900, "DeletionByPodGC",
                "PodGC: node no longer exists")]}, deleted_at=900),
        now=901, expect={"state": F, "reason": "DeletionByPodGC"}),
    # --- deletion and a terminal phase (the Terminating update may be coalesced away) -----
    "cancelled_job_seen_only_after_it_failed_from_sigterm": Case(
        pod(started_status("Failed", containerStatuses=[terminated("main", 143, "Error", 8,
                                                                     605)]),
            deleted_at=600), now=610, cancel_requested=True,
        expect={"state": C, "reason": "Cancelled", "exit_code": 143,
                "finished_at": T0 + 600}),
    "job_failed_before_a_later_cancel": Case(
        pod(started_status("Failed", containerStatuses=[terminated("main", 137, "OOMKilled",
                                                                     8, 300)]),
            deleted_at=600), now=610, cancel_requested=True,
        expect={"state": F, "reason": "OOMKilled"}),
    "succeeded_job_deleted_by_ttl": Case(
        pod(started_status("Succeeded", containerStatuses=[terminated("main", 0, "Completed",
                                                                        8, 300)]),
            deleted_at=400), now=401, expect={"state": S}),
    # The API server grants a grace period only to a pod not yet terminal (it sets 0 for a
    # Succeeded or Failed one), so a terminal pod still showing one ended after its
    # deletion was accepted, even when the seconds tie (the watcher-sigkill finding).
    "job_stopped_in_the_second_of_its_deletion_seen_only_after_it_failed": Case(
        pod(started_status("Failed", containerStatuses=[terminated("main", 143, "Error", 8,
                                                                     600)]),
            deleted_at=600), now=610,
        expect={"state": F, "reason": "Deleted", "exit_code": 143, "finished_at": T0 + 600}),
    "job_failed_and_deleted_in_the_same_second_at_once": Case(
        pod(started_status("Failed", containerStatuses=[terminated("main", 3, "Error", 8,
                                                                     600)]),
            deleted_at=600, grace=0), now=610,
        expect={"state": F, "reason": "Error", "exit_code": 3}),
    "job_succeeded_and_deleted_in_the_same_second_at_once": Case(
        pod(started_status("Succeeded", containerStatuses=[terminated(
                "main", 0, "Completed", 8, 600)]), deleted_at=600, grace=0), now=610,
        expect={"state": S, "reason": "Completed"}),
    "notebook_exiting_cleanly_on_stop": Case(
        pod(started_status("Succeeded", containerStatuses=[terminated("main", 0, "Completed",
                                                                        8, 7203)]),
            kind="notebook", restart_policy="Always", deleted_at=7200),
        now=7210, expect={"state": C, "reason": "Stopped", "finished_at": T0 + 7200}),
    # Seen only after the kubelet's final grace-0 DELETE, which moved deletionTimestamp to
    # the moment the containers had stopped (deletionGracePeriodSeconds 0).
    "preempted_notebook_seen_only_after_the_final_delete": Case(
        pod(started_status("Succeeded", conditions=[SCHEDULED, cond(
                "DisruptionTarget", "True", 470, "PreemptionByScheduler", "preempted")],
                containerStatuses=[terminated("main", 0, "Completed", 8, 498)]),
            kind="notebook", restart_policy="Always", deleted_at=500, grace=0),
        now=501, expect={"state": F, "reason": "PreemptionByScheduler"}),
    "cancelled_job_seen_only_after_the_final_delete": Case(
        pod(started_status("Failed", containerStatuses=[terminated("main", 143, "Error",
                                                                     8, 499)]),
            deleted_at=500, grace=0), now=501, cancel_requested=True,
        expect={"state": C, "reason": "Cancelled"}),
    "preempted_job_seen_only_after_the_final_delete": Case(
        pod(started_status("Failed", conditions=[SCHEDULED, cond(
                "DisruptionTarget", "True", 470, "PreemptionByScheduler", "preempted")],
                containerStatuses=[terminated("main", 143, "Error", 8, 498)]),
            deleted_at=500, grace=0), now=501,
        expect={"state": F, "reason": "PreemptionByScheduler"}),
    "evicted_job_garbage_collected_soon_after": Case(
        pod(started_status("Failed", reason="Evicted", message="low on memory",
                           containerStatuses=[terminated("main", 137, "Error", 8, 480)]),
            deleted_at=500, grace=0), now=501, expect={"state": F, "reason": "Evicted"}),
}


@pytest.mark.parametrize("name", CASES)
def test_pod_shape_derives_expected_state(name: str) -> None:
    case = CASES[name]
    result = derive(project(case.raw), now=T0 + case.now, policy=case.policy,
                    cancel_requested=case.cancel_requested)
    assert isinstance(result, Derived), result
    for attr, expected in case.expect.items():
        actual = getattr(result, attr)
        if isinstance(expected, float):
            assert actual == pytest.approx(expected), (attr, result)
        else:
            assert actual == expected, (attr, result)


def test_unknown_phase_is_underivable() -> None:
    raw = pod({"phase": "Unknown", "conditions": [SCHEDULED]})
    result = derive(project(raw), now=T0 + 10, policy=POLICY)
    assert isinstance(result, Underivable)
    assert result.reason == "PhaseUnknown"


def test_unrecognised_phase_is_underivable() -> None:
    raw = pod({"phase": "Hibernating"})
    result = derive(project(raw), now=T0, policy=POLICY)
    assert isinstance(result, Underivable)
    assert result.reason == "UnrecognisedPhase"


def test_terminal_result_does_not_change_with_time() -> None:
    for case in CASES.values():
        view = project(case.raw)
        first = derive(view, now=T0 + case.now, policy=case.policy,
                       cancel_requested=case.cancel_requested)
        later = derive(view, now=T0 + case.now + 86_400, policy=case.policy,
                       cancel_requested=case.cancel_requested)
        if isinstance(first, Derived) and first.state.is_terminal:
            assert later == first


# --- states, ranks and the policy ---------------------------------------------------------


def test_states_rank_queued_below_running_below_terminal() -> None:
    assert [s.rank for s in (Q, R, S, F, C)] == [0, 1, 2, 2, 2]
    assert [s.is_terminal for s in (Q, R, S, F, C)] == [False, False, True, True, True]


@pytest.mark.parametrize(("current", "proposed", "forward"), [
    (Q, R, True), (Q, S, True), (R, F, True), (R, C, True),
    (Q, Q, False), (R, R, False), (R, Q, False), (S, F, False), (F, C, False), (C, R, False)])
def test_only_a_higher_rank_advances(current: WorkloadState, proposed: WorkloadState,
                                     forward: bool) -> None:
    assert advances(current, proposed) is forward


def test_states_are_the_platform_strings() -> None:
    assert [s.value for s in WorkloadState] == [
        "queued", "running", "succeeded", "failed", "cancelled"]
    assert WorkloadState("failed") is F


@pytest.mark.parametrize("kwargs", [
    {"image_pull_failure_after_s": -1}, {"crashloop_failure_after_s": float("nan")},
    {"pending_failure_after_s": -5}, {"crashloop_failure_restarts": 0}])
def test_policy_rejects_bad_values_naming_the_field(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        StatePolicy(**kwargs)


# --- properties ---------------------------------------------------------------------------

REASONS = ["ContainerCreating", "PodInitializing", "ImagePullBackOff", "ErrImagePull",
           "InvalidImageName", "CreateContainerConfigError", "CrashLoopBackOff",
           "RunContainerError", "Completed", "Error", "OOMKilled", None]
offsets = st.floats(-100, 1e6, allow_nan=False)
maybe_offset = st.none() | offsets


@st.composite
def termination(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(offsets)
    out = {"exitCode": draw(st.sampled_from([0, 1, 2, 137, 143, -1])),
           "startedAt": at(start), "finishedAt": at(start + draw(st.floats(0, 1e5)))}
    if (reason := draw(st.sampled_from(REASONS))) is not None:
        out["reason"] = reason
    return out


@st.composite
def container_status(draw: st.DrawFn, name: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["waiting", "running", "terminated", None]))
    state: dict[str, Any] = {}
    if kind == "waiting":
        reason = draw(st.sampled_from(REASONS))
        state = {"waiting": {"reason": reason} if reason else {}}
    elif kind == "running":
        state = {"running": {"startedAt": at(draw(offsets))}}
    elif kind == "terminated":
        state = {"terminated": draw(termination())}
    return {"name": name, "ready": draw(st.booleans()), "started": draw(st.booleans()),
            "restartCount": draw(st.integers(0, 20)), "state": state,
            "lastState": {"terminated": draw(termination())} if draw(st.booleans()) else {}}


@st.composite
def any_pod(draw: st.DrawFn) -> dict[str, Any]:
    phase = draw(st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Unknown"]))
    conditions = [
        cond(t, draw(st.sampled_from(["True", "False", "Unknown"])), draw(offsets),
             draw(st.sampled_from([None, "Unschedulable", "PreemptionByScheduler"])))
        for t in draw(st.lists(st.sampled_from(["PodScheduled", "Ready", "DisruptionTarget",
                                                "Initialized"]), max_size=4))]
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if (start := draw(maybe_offset)) is not None:
        status["startTime"] = at(start)
    if draw(st.booleans()):
        status["reason"] = draw(st.sampled_from(["Evicted", "DeadlineExceeded", "NodeLost"]))
    inits = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True))
    sidecars = tuple(draw(st.lists(st.sampled_from(["s1", "s2"]), max_size=2, unique=True)))
    mains = tuple(draw(st.lists(st.sampled_from(["m1", "m2", "m3"]), min_size=1, max_size=3,
                                unique=True)))
    status["initContainerStatuses"] = [draw(container_status(n)) for n in (*inits, *sidecars)]
    status["containerStatuses"] = [draw(container_status(n)) for n in mains]
    annotations = {CANCEL_ANNOTATION: "true"} if draw(st.booleans()) else {}
    return pod(status, kind=draw(st.sampled_from(["job", "notebook", "app"])),
               restart_policy=draw(st.sampled_from(["Never", "OnFailure", "Always"])),
               containers=mains, init=tuple(inits), sidecars=sidecars, annotations=annotations,
               deleted_at=draw(maybe_offset), grace=draw(st.integers(0, 60)))


policies = st.builds(StatePolicy,
                     image_pull_failure_after_s=st.floats(0, 1e4),
                     crashloop_failure_restarts=st.integers(1, 10),
                     crashloop_failure_after_s=st.floats(0, 1e4),
                     pending_failure_after_s=st.none() | st.floats(0, 1e4),
                     cancel_annotation=st.booleans())


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(any_pod(), offsets, policies, st.booleans())
def test_derive_never_raises_and_terminal_phases_give_terminal_states(
        raw: dict[str, Any], now: float, policy: StatePolicy, cancel: bool) -> None:
    view = project(raw)
    result = derive(view, now=T0 + now, policy=policy, cancel_requested=cancel)
    if view.phase in ("Succeeded", "Failed"):
        assert isinstance(result, Derived)
        assert result.state.is_terminal
    if isinstance(result, Derived):
        if result.recheck_after is not None:
            assert result.recheck_after > 0
            assert not result.state.is_terminal
        if result.state.is_terminal:
            later = derive(view, now=T0 + now + 1e6, policy=policy, cancel_requested=cancel)
            assert later == result
        if view.deletion_timestamp is not None:
            assert result.state.is_terminal


@st.composite
def troubled_pod(draw: st.DrawFn) -> dict[str, Any]:
    """A pending or running pod whose container is stuck in a reason a time rule watches."""
    reason = draw(st.sampled_from(["ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff",
                                   "CreateContainerConfigError", "ContainerCreating"]))
    last = draw(termination()) if draw(st.booleans()) else None
    stuck = waiting("main", reason, restarts=draw(st.integers(0, 8)), last=last)
    phase = draw(st.sampled_from(["Pending", "Running"]))
    conditions = [SCHEDULED] if draw(st.booleans()) else [
        cond("PodScheduled", "False", 0, "Unschedulable")]
    status = {"phase": phase, "conditions": conditions, "containerStatuses": [stuck]}
    if (start := draw(maybe_offset)) is not None:
        status["startTime"] = at(start)
    return pod(status, restart_policy="OnFailure")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.filter_too_much])
@given(troubled_pod(), offsets, policies)
def test_a_time_rule_fires_exactly_when_recheck_after_says(raw: dict[str, Any], now: float,
                                                           policy: StatePolicy) -> None:
    view = project(raw)
    first = derive(view, now=T0 + now, policy=policy)
    assume(isinstance(first, Derived) and first.recheck_after is not None)
    assert isinstance(first, Derived)
    assert first.recheck_after is not None
    assume(first.recheck_after > 0.01)  # clear of float rounding at epoch magnitudes
    before = derive(view, now=T0 + now + first.recheck_after * 0.999, policy=policy)
    assert isinstance(before, Derived)
    assert before.state == first.state
    after = derive(view, now=T0 + now + first.recheck_after + 1e-3, policy=policy)
    assert isinstance(after, Derived)
    assert after.state is F


def _views_from_fuzz() -> st.SearchStrategy[PodView]:
    """Pods from arbitrary JSON that happen to project: derive must take them too."""
    def attempt(raw: dict[str, Any]) -> PodView | None:
        try:
            return project(raw)
        except MalformedPod:
            return None
    json_leaf = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(
        ["Running", "Pending", "Failed", "Succeeded", at(0), at(500), "True", "Always"])
    status = st.fixed_dictionaries({}, optional={
        "phase": json_leaf, "startTime": json_leaf, "reason": json_leaf,
        "containerStatuses": st.lists(st.fixed_dictionaries({"name": st.just("main")}, optional={
            "restartCount": st.integers(0, 9),
            "state": st.sampled_from([{}, {"waiting": {"reason": "CrashLoopBackOff"}},
                                      {"terminated": {"exitCode": 1}},
                                      {"running": {}}])}), max_size=2)})
    return status.map(lambda s: attempt(pod(s))).filter(lambda v: v is not None)  # type: ignore[return-value]


@given(_views_from_fuzz(), offsets)
def test_derive_takes_any_pod_that_projects(view: PodView, now: float) -> None:
    assert isinstance(derive(view, now=T0 + now, policy=POLICY), Derived | Underivable)


# --- a pod that vanished unseen (a relist found it gone) ------------------------------------

def _vanished(status: dict[str, Any], *, kind: str = "notebook") -> PodView:
    """The store's tombstone for a pod a relist found gone: the last view seen, with the
    deletion time the store stamps on it."""
    view = project(pod(status, kind=kind, restart_policy="Always"))
    return dataclasses.replace(view, deletion_timestamp=T0 + 90, final_state_unknown=True)


RUNNING_STATUS = {"phase": "Running", "startTime": at(1), "conditions": [SCHEDULED],
                  "containerStatuses": [running("main", 2)]}


@pytest.mark.parametrize("kind", ["job", "notebook", "app"])
def test_a_running_pod_that_vanished_unseen_is_lost_not_stopped_or_deleted(kind: str) -> None:
    result = derive(_vanished(RUNNING_STATUS, kind=kind), now=T0 + 100, policy=POLICY)
    assert isinstance(result, Derived)
    assert (result.state, result.reason) == (WorkloadState.FAILED, "PodLost")
    assert result.started_at == pytest.approx(T0 + 1)


def test_a_vanished_pod_whose_cancel_was_requested_is_cancelled() -> None:
    result = derive(_vanished(RUNNING_STATUS), now=T0 + 100, policy=POLICY,
                    cancel_requested=True)
    assert isinstance(result, Derived)
    assert (result.state, result.reason) == (WorkloadState.CANCELLED, "Cancelled")


def test_a_vanished_pod_last_seen_finished_keeps_the_outcome_it_showed() -> None:
    status = {"phase": "Succeeded", "startTime": at(1), "conditions": [SCHEDULED],
              "containerStatuses": [terminated("main", 0, "Completed", 2, 30)]}
    result = derive(_vanished(status, kind="job"), now=T0 + 100, policy=POLICY)
    assert isinstance(result, Derived)
    assert (result.state, result.reason) == (WorkloadState.SUCCEEDED, "Completed")
