"""sniffer.podview: projecting raw pods, rejecting malformed ones, and the memory budget.

Run as a script to print the measured heap per cached pod:
    .venv/bin/python -m tests.test_podview
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
import sys
import time
import tracemalloc
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sniffer.podview import (
    CANCEL_ANNOTATION,
    KIND_LABEL,
    MESSAGE_LIMIT,
    OUTCOME_FINALIZER,
    RUN_ID_LABEL,
    TRACEPARENT_ANNOTATION,
    MalformedPod,
    PodView,
    WorkloadKind,
    project,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def running_job_pod(name: str = "run-7f9c2e-train-0", *, run_id: str = "run-7f9c2e",
                    uid: str = "5f2ad9e4-8f4e-4c1b-9a57-0c1f5e2b8d11", rv: str = "48213",
                    t: float = T0) -> dict[str, Any]:
    """A running batch-job pod as `kubectl get pod -o json` shows it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "team-ml",
            "uid": uid,
            "resourceVersion": rv,
            "creationTimestamp": stamp(t),
            "generateName": name[:-1],
            "labels": {
                RUN_ID_LABEL: run_id,
                KIND_LABEL: "job",
                "batch.kubernetes.io/job-name": run_id,
                "controller-uid": "0c0a4e3e-2bb4-4a4f-a8e6-3f1f6d9e0b7a",
            },
            "annotations": {TRACEPARENT_ANNOTATION: TRACEPARENT},
            "finalizers": [OUTCOME_FINALIZER, "batch.kubernetes.io/job-tracking"],
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": run_id,
                                 "uid": "0c0a4e3e-2bb4-4a4f-a8e6-3f1f6d9e0b7a",
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                {"name": "fetch-data", "image": "busybox:1.36"},
                {"name": "log-shipper", "image": "fluent-bit:3.0", "restartPolicy": "Always"},
            ],
            "containers": [
                {"name": "trainer", "image": "registry.example/trainer:1.4",
                 "resources": {"limits": {"memory": "4Gi"}}},
                {"name": "metrics", "image": "registry.example/exporter:0.9"},
            ],
            "nodeName": "node-a-17",
            "schedulerName": "default-scheduler",
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.3.17",
            "podIP": "10.244.3.41",
            "qosClass": "Burstable",
            "startTime": stamp(t + 2),
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": stamp(t + 4)},
                {"type": "Initialized", "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": stamp(t + 9)},
                {"type": "Ready", "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": stamp(t + 12)},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": stamp(t + 12)},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": stamp(t)},
            ],
            "initContainerStatuses": [
                {"name": "fetch-data", "ready": True, "started": False, "restartCount": 0,
                 "image": "docker.io/library/busybox:1.36", "imageID": "sha256:aa",
                 "containerID": "containerd://11",
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                          "startedAt": stamp(t + 5),
                                          "finishedAt": stamp(t + 8),
                                          "containerID": "containerd://11"}},
                 "lastState": {}},
                {"name": "log-shipper", "ready": True, "started": True, "restartCount": 0,
                 "image": "docker.io/fluent/fluent-bit:3.0", "imageID": "sha256:bb",
                 "containerID": "containerd://22",
                 "state": {"running": {"startedAt": stamp(t + 9)}}, "lastState": {}},
            ],
            "containerStatuses": [
                # kubelet sorts container statuses by name; the projection restores spec order
                {"name": "metrics", "ready": True, "started": True, "restartCount": 0,
                 "image": "registry.example/exporter:0.9", "imageID": "sha256:cc",
                 "containerID": "containerd://33",
                 "state": {"running": {"startedAt": stamp(t + 10)}}, "lastState": {}},
                {"name": "trainer", "ready": True, "started": True, "restartCount": 0,
                 "image": "registry.example/trainer:1.4", "imageID": "sha256:dd",
                 "containerID": "containerd://44",
                 "state": {"running": {"startedAt": stamp(t + 11)}}, "lastState": {}},
            ],
        },
    }


def roundtrip(obj: Any) -> Any:
    """What a watch event's `json.loads` would give."""
    return json.loads(json.dumps(obj))


# --- projecting real shapes ---------------------------------------------------------------


def test_projects_a_running_job_pod() -> None:
    view = project(roundtrip(running_job_pod()))
    assert (view.namespace, view.name, view.uid, view.resource_version) == (
        "team-ml", "run-7f9c2e-train-0", "5f2ad9e4-8f4e-4c1b-9a57-0c1f5e2b8d11", "48213")
    assert view.key == "team-ml/run-7f9c2e-train-0"
    assert (view.run_id, view.kind, view.cancel_requested) == ("run-7f9c2e", "job", False)
    assert view.traceparent == TRACEPARENT
    assert (view.phase, view.reason, view.message) == ("Running", None, None)
    assert (view.created_at, view.start_time, view.deletion_timestamp) == (T0, T0 + 2, None)
    assert view.finalizers == (OUTCOME_FINALIZER, "batch.kubernetes.io/job-tracking")
    assert [c.type for c in view.conditions] == ["PodScheduled"]
    assert view.scheduled is not None
    assert view.scheduled.status == "True"
    trainer = view.containers[0]
    assert (trainer.name, trainer.state, trainer.started_at, trainer.started) == (
        "trainer", "running", T0 + 11, True)
    assert [c.name for c in view.init_containers] == ["fetch-data", "log-shipper"]


def test_containers_follow_spec_order_not_status_order() -> None:
    view = project(running_job_pod())
    assert [c.name for c in view.containers] == ["trainer", "metrics"]


def test_native_sidecar_is_an_init_container_with_restart_policy_always() -> None:
    fetch, shipper = project(running_job_pod()).init_containers
    assert (fetch.sidecar, shipper.sidecar) == (False, True)
    assert (fetch.state, fetch.exit_code, fetch.reason) == ("terminated", 0, "Completed")


def test_last_termination_is_kept_for_restarted_containers() -> None:
    raw = running_job_pod()
    raw["status"]["containerStatuses"][1].update({
        "restartCount": 3, "ready": False, "started": False,
        "state": {"waiting": {"reason": "CrashLoopBackOff",
                              "message": "back-off 40s restarting failed container=trainer"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                     "startedAt": stamp(T0 + 60),
                                     "finishedAt": stamp(T0 + 75)}},
    })
    trainer = project(raw).containers[0]
    assert (trainer.state, trainer.reason, trainer.restart_count) == (
        "waiting", "CrashLoopBackOff", 3)
    assert trainer.last is not None
    assert (trainer.last.reason, trainer.last.exit_code) == ("OOMKilled", 137)
    assert (trainer.last.started_at, trainer.last.finished_at) == (T0 + 60, T0 + 75)
    assert project(running_job_pod()).containers[0].last is None


def test_changed_at_is_the_latest_transition_in_the_status() -> None:
    assert project(running_job_pod()).changed_at == T0 + 12
    raw = running_job_pod()
    raw["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": stamp(T0 + 10),
                       "finishedAt": stamp(T0 + 300)}}
    assert project(raw).changed_at == T0 + 300


def test_changed_at_is_none_for_a_status_without_times() -> None:
    raw = running_job_pod()
    raw["status"] = {"phase": "Pending"}
    assert project(raw).changed_at is None


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-01T00:00:00Z", T0),
    ("2026-01-01T01:30:00+01:30", T0),
    ("2025-12-31T23:00:00-01:00", T0),
    ("2026-01-01T00:00:00.250000Z", T0 + 0.25),
    ("2026-01-01t00:00:00z", T0),
    ("2025-12-31T23:59:60Z", T0 - 1),  # a leap second reads as :59
])
def test_times_are_float_epoch_seconds(text: str, expected: float) -> None:
    raw = running_job_pod()
    raw["metadata"]["creationTimestamp"] = text
    assert project(raw).created_at == pytest.approx(expected)


def test_null_times_are_none() -> None:
    raw = running_job_pod()
    raw["status"]["startTime"] = None
    raw["status"]["conditions"][4]["lastTransitionTime"] = None
    view = project(raw)
    assert view.start_time is None
    assert view.condition("PodScheduled") is not None


def test_every_conditions_transition_counts_towards_changed_at() -> None:
    raw = running_job_pod()
    raw["status"]["conditions"][2]["lastTransitionTime"] = stamp(T0 + 900)  # Ready
    assert project(raw).changed_at == T0 + 900


def test_repeated_strings_are_shared_between_pods() -> None:
    one = project(roundtrip(running_job_pod("a-0")))
    two = project(roundtrip(running_job_pod("b-0")))
    assert one.namespace is two.namespace
    assert one.phase is two.phase
    assert one.containers[0].name is two.containers[0].name
    assert one.finalizers is two.finalizers
    assert one.scheduled is two.scheduled


def test_the_name_is_cut_from_the_key() -> None:
    view = project(running_job_pod("a-0"))
    assert (view.key, view.name) == ("team-ml/a-0", "a-0")


def test_messages_are_cut_to_the_limit() -> None:
    raw = running_job_pod()
    raw["status"]["message"] = "x" * 10_000
    raw["status"]["conditions"][4].update(status="False", message="y" * 300)
    view = project(raw)
    assert view.message == "x" * MESSAGE_LIMIT
    assert view.condition("PodScheduled").message == "y" * MESSAGE_LIMIT


def test_only_scheduling_and_disruption_conditions_are_kept() -> None:
    raw = running_job_pod()
    raw["status"]["conditions"].append({
        "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
        "message": "Preempted in order to admit critical pod", "lastProbeTime": None,
        "lastTransitionTime": stamp(T0 + 500)})
    view = project(raw)
    assert [c.type for c in view.conditions] == ["PodScheduled", "DisruptionTarget"]
    disruption = view.condition("DisruptionTarget")
    assert disruption is not None
    assert (disruption.status, disruption.reason) == ("True", "PreemptionByScheduler")
    assert view.condition("Initialized") is None
    assert view.condition("Ready") is None


@pytest.mark.parametrize(("label", "kind"), [
    (None, WorkloadKind.JOB), ("job", WorkloadKind.JOB), ("notebook", WorkloadKind.NOTEBOOK),
    ("app", WorkloadKind.APP)])
def test_kind_comes_from_the_kind_label_and_defaults_to_job(label: str | None,
                                                            kind: WorkloadKind) -> None:
    raw = running_job_pod()
    del raw["metadata"]["labels"][KIND_LABEL]
    if label is not None:
        raw["metadata"]["labels"][KIND_LABEL] = label
    assert project(raw).kind is kind


@pytest.mark.parametrize(("value", "cancel"), [("true", True), ("false", False),
                                               ("True", False), ("yes", False), (None, False)])
def test_cancel_is_requested_only_by_the_annotation_value_true(value: str | None,
                                                               cancel: bool) -> None:
    raw = running_job_pod()
    if value is not None:
        raw["metadata"]["annotations"][CANCEL_ANNOTATION] = value
    assert project(raw).cancel_requested is cancel


@pytest.mark.parametrize("value", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    TRACEPARENT + "-extra",  # version 00 has exactly four fields
    "garbage",
])
def test_invalid_traceparent_is_ignored(value: str) -> None:
    raw = running_job_pod()
    raw["metadata"]["annotations"][TRACEPARENT_ANNOTATION] = value
    assert project(raw).traceparent is None


def test_future_traceparent_version_keeps_the_version_00_fields() -> None:
    raw = running_job_pod()
    raw["metadata"]["annotations"][TRACEPARENT_ANNOTATION] = "01" + TRACEPARENT[2:] + "-more"
    assert project(raw).traceparent == "01" + TRACEPARENT[2:]


def test_pod_without_status_reads_as_pending() -> None:
    raw = running_job_pod()
    del raw["status"]
    view = project(raw)
    assert (view.phase, view.containers, view.conditions) == ("Pending", (), ())


def test_pod_without_run_id_label_has_no_run_id() -> None:
    raw = running_job_pod()
    del raw["metadata"]["labels"][RUN_ID_LABEL]
    assert project(raw).run_id is None


def test_deletion_is_projected_with_its_grace_period() -> None:
    raw = running_job_pod()
    raw["metadata"]["deletionTimestamp"] = stamp(T0 + 630)
    raw["metadata"]["deletionGracePeriodSeconds"] = 30
    view = project(raw)
    assert (view.deletion_timestamp, view.deletion_grace_period_s) == (T0 + 630, 30)


def test_views_are_immutable_and_compare_by_value() -> None:
    one, two = project(running_job_pod()), project(roundtrip(running_job_pod()))
    assert one == two
    assert hash(one) == hash(two)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.phase = "Failed"  # type: ignore[misc]


# --- rejecting malformed pods ---------------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    """A mutation setting (with _DELETE: removing) the value at a "/"-separated path; the
    key after labels/ or annotations/ is taken whole (it contains a "/" itself)."""
    parts = path.split("/")
    for i, part in enumerate(parts[:-1]):
        if part in ("labels", "annotations"):
            parts[i + 1:] = ["/".join(parts[i + 1:])]
            break

    def mutate(raw: dict[str, Any]) -> None:
        *parents, last = parts
        node: Any = raw
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


_DELETE = object()


@pytest.mark.parametrize(("mutate", "field"), [
    (_set("metadata", _DELETE), "metadata"),
    (_set("metadata", []), "metadata"),
    (_set("metadata/name", _DELETE), "metadata.name"),
    (_set("metadata/name", ""), "metadata.name"),
    (_set("metadata/uid", 42), "metadata.uid"),
    (_set("metadata/namespace", None), "metadata.namespace"),
    (_set("metadata/creationTimestamp", _DELETE), "metadata.creationTimestamp"),
    (_set("metadata/creationTimestamp", "yesterday"), "metadata.creationTimestamp"),
    (_set("metadata/creationTimestamp", "2026-02-30T00:00:00Z"), "metadata.creationTimestamp"),
    (_set("metadata/creationTimestamp", "2026-01-01T00:00:00"), "metadata.creationTimestamp"),
    (_set("metadata/creationTimestamp", "2026-01-01T00:00:00+24:00"),
     "metadata.creationTimestamp"),
    (_set("metadata/creationTimestamp", 1767225600), "metadata.creationTimestamp"),
    (_set("metadata/labels", ["a"]), "metadata.labels"),
    (_set(f"metadata/labels/{RUN_ID_LABEL}", "-starts-with-dash"), RUN_ID_LABEL),
    (_set(f"metadata/labels/{RUN_ID_LABEL}", "x" * 64), RUN_ID_LABEL),
    (_set(f"metadata/labels/{RUN_ID_LABEL}", "has space"), RUN_ID_LABEL),
    (_set(f"metadata/labels/{RUN_ID_LABEL}", "run\n"), RUN_ID_LABEL),
    (_set(f"metadata/labels/{RUN_ID_LABEL}", 7), RUN_ID_LABEL),
    (_set(f"metadata/labels/{KIND_LABEL}", "cronjob"), KIND_LABEL),
    (_set(f"metadata/annotations/{CANCEL_ANNOTATION}", True), CANCEL_ANNOTATION),
    (_set("metadata/finalizers", "sniffer.io/outcome"), "metadata.finalizers"),
    (_set("metadata/deletionGracePeriodSeconds", -1), "deletionGracePeriodSeconds"),
    (_set("spec", "Never"), "spec"),
    (_set("spec/initContainers/0/name", None), "spec.initContainers[0].name"),
    (_set("status", 3), "status"),
    (_set("status/phase", 3), "status.phase"),
    (_set("status/conditions", {}), "status.conditions"),
    (_set("status/conditions/0/type", _DELETE), "status.conditions[0].type"),
    (_set("status/containerStatuses/0/restartCount", "3"), "restartCount"),
    (_set("status/containerStatuses/0/restartCount", True), "restartCount"),
    (_set("status/containerStatuses/0/restartCount", -1), "restartCount"),
    (_set("status/containerStatuses/0/started", "true"), "started"),
    (_set("status/containerStatuses/0/state/running", "yes"), "state.running"),
    (_set("status/containerStatuses/0/state", {"terminated": {"reason": "Error"}}),
     "state.terminated.exitCode"),
    (_set("status/containerStatuses/0/state", {"terminated": {"exitCode": 1.0}}),
     "state.terminated.exitCode"),
    (_set("status/containerStatuses/0/lastState", {"terminated": {"reason": "Error"}}),
     "lastState.terminated.exitCode"),
    (_set("status/initContainerStatuses/0/state/terminated/finishedAt", "soon"),
     "status.initContainerStatuses[0].state.terminated.finishedAt"),
])
def test_malformed_pod_is_rejected_naming_the_field(mutate: Any, field: str) -> None:
    raw = running_job_pod()
    mutate(raw)
    with pytest.raises(MalformedPod) as caught:
        project(raw)
    assert field in caught.value.reason


@pytest.mark.parametrize("obj", [None, [], "pod", 3, 2.5, True, {}])
def test_non_pod_values_are_malformed(obj: Any) -> None:
    with pytest.raises(MalformedPod):
        project(obj)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=25)


@given(JSON)
def test_any_json_value_projects_or_is_malformed(value: Any) -> None:
    with contextlib.suppress(MalformedPod):
        project(value)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out.extend(_paths(child, (*prefix, key)))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out.extend(_paths(child, (*prefix, i)))
    return out


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.data())
def test_any_mutation_of_a_real_pod_projects_or_is_malformed(data: st.DataObject) -> None:
    raw = running_job_pod()
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from(_paths(raw)[1:]))
        *parents, last = path
        node = raw
        for part in parents:
            node = node[part]
        node[last] = data.draw(JSON | st.sampled_from(
            ["", "2026-13-01T00:00:00Z", "Running", "Failed", "waiting", -1, 0, 10**30]))
    try:
        view = project(copy.deepcopy(raw))
    except MalformedPod:
        return
    assert isinstance(view, PodView)


# --- memory budget --------------------------------------------------------------------------


def _shaped(raw: dict[str, Any], shape: str) -> dict[str, Any]:
    """Cut the full fixture down to a shape: "job" (one container), "sidecar" (one
    container and a native sidecar, as notebooks and apps run) or "rich" (all four)."""
    spec, status = raw["spec"], raw["status"]
    if shape in ("job", "sidecar"):
        spec["containers"] = spec["containers"][:1]
        status["containerStatuses"] = status["containerStatuses"][1:]
        keep = 1 if shape == "sidecar" else 0  # the sidecar is the last init container
        spec["initContainers"] = spec["initContainers"][2 - keep:]
        status["initContainerStatuses"] = status["initContainerStatuses"][2 - keep:]
    return raw


def _realistic_pods(count: int, shape: str, seed: int = 0) -> list[str]:
    """`count` running pods of one shape as JSON text, with unique names, uids, run ids and
    trace ids, created one per second."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        run_id = f"run-{uuid.UUID(int=rng.getrandbits(128)).hex[:20]}"
        raw = running_job_pod(f"{run_id}-{i % 4}", run_id=run_id,
                              uid=str(uuid.UUID(int=rng.getrandbits(128))),
                              rv=str(10_000_000 + i), t=T0 + i)
        raw["metadata"]["annotations"][TRACEPARENT_ANNOTATION] = (
            f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01")
        out.append(json.dumps(_shaped(raw, shape)))
    return out


def measure_bytes_per_pod(count: int = 10_000, shape: str = "job") -> float:
    """Heap held per pod by `count` projected pods (each decoded from JSON, projected, and
    its raw object dropped, as the reflector does), including the timestamp cache."""
    texts = _realistic_pods(count, shape)
    views: list[PodView] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text in texts:
            views.append(project(json.loads(text)))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(views) == count
    return (after - before - 8 * count) / count  # less the list's own pointer per view


def test_shapes_used_for_measuring_are_what_they_claim() -> None:
    job, sidecar, rich = (project(json.loads(_realistic_pods(1, shape)[0]))
                          for shape in ("job", "sidecar", "rich"))
    assert ([c.name for c in job.containers], job.init_containers) == (["trainer"], ())
    assert [(c.name, c.sidecar) for c in sidecar.init_containers] == [("log-shipper", True)]
    assert (len(rich.containers), len(rich.init_containers)) == (2, 2)


def test_a_cached_single_container_pod_costs_at_most_one_kib_of_heap() -> None:
    assert measure_bytes_per_pod(10_000, "job") <= 1024


if __name__ == "__main__":
    print(f"heap per cached PodView, 10,000 running pods each (Python {sys.version.split()[0]}):")
    for shape in ("job", "sidecar", "rich"):
        print(f"  {shape:8} {measure_bytes_per_pod(10_000, shape):6.0f} bytes")
