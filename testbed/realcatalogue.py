"""The lifecycles the real node plays, each with the platform outcome it must end in.

Contract:

* Pure data and pure functions: no I/O, no clock, no randomness.
* A `RealLifecycle` is a pod written as users write it (no hostNetwork, the testbed's
  busybox image, `imagePullPolicy: Never`), plus what the driver does to it (`Act`) and
  what the platform must finally hold (`Expectation`: state, reason, exit code). Nothing
  in it writes a status: the kubelet, the scheduler and the controllers do.
* The expectations are this module's own account of the platform contract
  (docs/platform-api.yaml): a finished job succeeds or fails with the kubelet's reason, a
  user's cancel is *cancelled* "Cancelled" (with or without the pod annotation), a server
  stopped behind the platform's back is *cancelled* "Stopped", a job deleted that way is
  *failed* "Deleted", disruptions fail with their DisruptionTarget reason. They are
  written independently of ``sniffer/states.py``, which they judge.
* `manifest(lifecycle, ...)` gives the pod. Every pod but the taint lifecycle's tolerates
  `TAINT_KEY`, so one NoExecute taint on the shared node evicts only that pod. Every pod
  but the preemption victim and its preemptor requests no resources, so the two of them
  decide alone who fits.
* `SIMULATED_AS` names, for each lifecycle the simulator also plays, its simulator
  lifecycle (`testbed.simulator.lifecycles.CATALOGUE`): the conformance test holds the
  simulator to the kubelet's recorded statuses through this map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sniffer.podview import KIND_LABEL, RUN_ID_LABEL
from testbed.simulator.lifecycles import Expectation, Kind, State

LIFECYCLE_LABEL = "sim.sniffer.io/lifecycle"
MANAGED_BY = {"app.kubernetes.io/managed-by": "sniffer-realnode-driver"}
TAINT_KEY = "sniffer.io/truth-noexecute"
SCHEDULE_PREFIX = "truth.sniffer.io/"
"""A pod waiting to be schedulable selects the node label SCHEDULE_PREFIX + its run id,
which no node has until the driver adds it (the late-scheduled lifecycle)."""
LOW_PRIORITY, HIGH_PRIORITY = "sniffer-truth-low", "sniffer-truth-high"
VICTIM_CPU = "1200m"
"""The victim and the preemptor each request this: on a 2-core node only one fits."""
GRACE_S = 2
"""terminationGracePeriodSeconds of every pod: a process ignoring SIGTERM is killed then."""
DEADLINE_S = 3
"""activeDeadlineSeconds of the deadline lifecycle."""

# PID 1 of a container ignores SIGTERM unless it handles it: `sleep` as PID 1 is
# SIGKILLed at the end of the grace period (137). These handle it and exit at once.
TRAPS_TERM = "trap 'exit 0' TERM; while true; do sleep 1 & wait; done"
IGNORES_TERM = "exec sleep 3600"


class Act(StrEnum):
    """What the driver does to the pod once it is created."""

    NOTHING = "nothing"            # the pod ends by itself (its phase turns terminal)
    CANCEL = "cancel"              # user cancels on the platform; platform annotates, deletes
    CANCEL_NO_ANNOTATION = "cancel-no-annotation"  # platform cancel, delete, no annotation
    DELETE = "delete"              # somebody deletes the running pod without the platform
    EVICT = "evict"                # the Eviction API
    TAINT = "taint"                # a NoExecute taint on the node (the taint manager)
    PREEMPT = "preempt"            # a higher-priority pod that needs the victim's room
    SCHEDULE_LATER = "schedule-later"  # the node gets the label the pod selects
    CANCEL_PENDING = "cancel-pending"  # user cancels while it is unschedulable
    REAP_CRASHLOOP = "reap-crashloop"  # the platform reaps it past the restart threshold
    REAP_WHEN_DECIDED = "reap-when-decided"  # stuck for good: reaped once the platform ruled
    AWAIT_POD_GC = "await-pod-gc"  # ends by itself, then pod GC deletes it (a low
    # --terminated-pod-gc-threshold and newer finished pods)


@dataclass(frozen=True, slots=True)
class RealLifecycle:
    name: str
    description: str
    kind: Kind
    script: str
    """The main container's ``sh -c`` script."""
    outcome: Expectation
    act: Act = Act.NOTHING
    restart_policy: str | None = None
    """None: Never for jobs, Always for notebooks and apps."""
    init_script: str | None = None
    """A regular init container (`fetch-inputs`) running this script."""
    sidecar_script: str | None = None
    """A native sidecar (`log-shipper`, restartPolicy Always) running this script."""
    image: str | None = None
    """The main container's image when not the testbed's (a missing or invalid one)."""
    memory_limit: str | None = None
    deadline_s: int | None = None
    """activeDeadlineSeconds, set by the driver once the main container runs: the deadline
    counts from status.startTime, before the container starts, so in the manifest it could
    fire first on a loaded node (Failed/DeadlineExceeded with no exit code at all)."""
    waits_running: bool = True
    """The driver acts once the main container runs (else once the pod is created)."""
    extra: dict[str, Any] = field(default_factory=dict)


def _job(state: State, reason: str, code: int | None) -> Expectation:
    return Expectation(state, reason, code)


_F, _C, _S = State.FAILED, State.CANCELLED, State.SUCCEEDED
_CANCELLED = Expectation(_C, "Cancelled", None)

CATALOGUE: dict[str, RealLifecycle] = {lc.name: lc for lc in (
    RealLifecycle("succeeded", "runs a second, exits 0", Kind.JOB, "sleep 1; exit 0",
                  _job(_S, "Completed", 0)),
    RealLifecycle("failed", "runs a second, exits 1", Kind.JOB, "sleep 1; exit 1",
                  _job(_F, "Error", 1)),
    RealLifecycle("exit-3", "exits 3 at once", Kind.JOB, "exit 3", _job(_F, "Error", 3)),
    RealLifecycle("oom", "allocates 200 MB under a 20Mi limit: the memcg OOM killer",
                  Kind.JOB, "exec dd if=/dev/zero of=/dev/null bs=200M count=1",
                  _job(_F, "OOMKilled", 137), memory_limit="20Mi"),
    RealLifecycle("deadline", f"sleeps past activeDeadlineSeconds {DEADLINE_S}; the kubelet "
                  "kills it (PID 1 ignores SIGTERM: 137)", Kind.JOB, IGNORES_TERM,
                  _job(_F, "DeadlineExceeded", 137), deadline_s=DEADLINE_S),
    RealLifecycle("crashloop-job", "exits 1 again and again (OnFailure) until the platform "
                  "fails it at the restart threshold; then reaped", Kind.JOB, "exit 1",
                  _job(_F, "CrashLoopBackOff", 1), act=Act.REAP_CRASHLOOP,
                  restart_policy="OnFailure", waits_running=False),
    RealLifecycle("crashloop-app", "a server crash-looping (Always) past the restart "
                  "threshold; then reaped", Kind.APP, "sleep 1; exit 1",
                  _job(_F, "CrashLoopBackOff", 1), act=Act.REAP_CRASHLOOP,
                  waits_running=False),
    RealLifecycle("init-error", "an init container exits 1: the pod fails before it runs",
                  Kind.JOB, "exit 0", _job(_F, "Error", 1), init_script="exit 1",
                  waits_running=False),
    RealLifecycle("sidecar", "a native sidecar beside a main container that exits 0",
                  Kind.JOB, "sleep 1; exit 0", _job(_S, "Completed", 0),
                  sidecar_script=TRAPS_TERM),
    RealLifecycle("image-never-pull", "its image is not on the node (pull policy Never): "
                  "failed by the platform's stuck-image rule, then reaped", Kind.JOB,
                  "exit 0", _job(_F, "ErrImageNeverPull", None),
                  act=Act.REAP_WHEN_DECIDED, image="localhost/sniffer/not-imported:1",
                  waits_running=False),
    RealLifecycle("invalid-image", "its image reference cannot parse: failed at once, "
                  "then reaped", Kind.JOB, "exit 0", _job(_F, "InvalidImageName", None),
                  act=Act.REAP_WHEN_DECIDED, image="localhost/Sniffer/UPPER:case",
                  waits_running=False),
    RealLifecycle("pod-gc", "exits 0 at once; then pod GC deletes it (a low "
                  "terminated-pod-gc-threshold, newer finished pods)", Kind.JOB, "exit 0",
                  _job(_S, "Completed", 0), act=Act.AWAIT_POD_GC, waits_running=False),
    RealLifecycle("unschedulable", "selects a node label no node has; the user cancels it "
                  "while pending", Kind.JOB, "exit 0", _CANCELLED, act=Act.CANCEL_PENDING,
                  waits_running=False),
    RealLifecycle("late-scheduled", "unschedulable until the node gets its label; then runs "
                  "and succeeds", Kind.JOB, "sleep 1; exit 0", _job(_S, "Completed", 0),
                  act=Act.SCHEDULE_LATER, waits_running=False),
    RealLifecycle("cancelled", "the user cancels; the platform annotates and deletes; the "
                  "process traps SIGTERM and exits 0", Kind.JOB, TRAPS_TERM, _CANCELLED,
                  act=Act.CANCEL),
    RealLifecycle("cancelled-no-annotation", "the user cancels; the platform deletes without "
                  "the annotation; the process ignores SIGTERM (killed after the grace "
                  "period)", Kind.JOB, IGNORES_TERM, _CANCELLED,
                  act=Act.CANCEL_NO_ANNOTATION),
    RealLifecycle("deleted", "somebody deletes the running job without the platform; it "
                  "traps SIGTERM", Kind.JOB, TRAPS_TERM, _job(_F, "Deleted", None),
                  act=Act.DELETE),
    RealLifecycle("deleted-ignoring-term", "somebody deletes the running job; it ignores "
                  "SIGTERM and is killed after the grace period", Kind.JOB, IGNORES_TERM,
                  _job(_F, "Deleted", None), act=Act.DELETE),
    RealLifecycle("notebook-stopped", "a notebook stopped by deleting its pod", Kind.NOTEBOOK,
                  TRAPS_TERM, Expectation(_C, "Stopped", None), act=Act.DELETE),
    RealLifecycle("app-cancelled", "an app the user stops on the platform", Kind.APP,
                  IGNORES_TERM, _CANCELLED, act=Act.CANCEL),
    RealLifecycle("evicted-api", "drained through the Eviction API", Kind.JOB, TRAPS_TERM,
                  _job(_F, "EvictionByEvictionAPI", None), act=Act.EVICT),
    RealLifecycle("noexecute-taint", "a NoExecute taint it does not tolerate: the taint "
                  "manager deletes it", Kind.JOB, TRAPS_TERM,
                  _job(_F, "DeletionByTaintManager", None), act=Act.TAINT),
    RealLifecycle("preempted", "preempted by a pod of a higher PriorityClass that needs "
                  "its CPU", Kind.JOB, TRAPS_TERM,
                  _job(_F, "PreemptionByScheduler", None), act=Act.PREEMPT),
)}

SIMULATED_AS: dict[str, str] = {
    "succeeded": "succeeded", "failed": "failed", "oom": "oom", "deadline": "deadline",
    "crashloop-app": "crashloop", "init-error": "init-error", "cancelled": "cancelled",
    "deleted": "stopped", "notebook-stopped": "stopped", "app-cancelled": "cancelled",
    "evicted-api": "evicted-api", "preempted": "preempted", "unschedulable": "unschedulable",
    "late-scheduled": "late-scheduled",
}


def _container(name: str, image: str, script: str) -> dict[str, Any]:
    return {"name": name, "image": image, "imagePullPolicy": "Never",
            "command": ["sh", "-c", script]}


def manifest(lc: RealLifecycle, *, name: str, namespace: str, run_id: str,
             image: str, finalizers: tuple[str, ...] = ()) -> dict[str, Any]:
    """The pod the platform's runtime creates for one play of `lc` (with `finalizers`, as
    if a watcher had already added its own before it went down)."""
    main = _container("main" if lc.kind is Kind.JOB else lc.kind.value, lc.image or image,
                      lc.script)
    if lc.memory_limit:
        main["resources"] = {"limits": {"memory": lc.memory_limit}}
    if lc.act is Act.PREEMPT:
        main["resources"] = {"requests": {"cpu": VICTIM_CPU}}
    spec: dict[str, Any] = {
        "restartPolicy": lc.restart_policy or ("Never" if lc.kind is Kind.JOB else "Always"),
        "terminationGracePeriodSeconds": GRACE_S,
        "containers": [main],
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    inits = []
    if lc.sidecar_script is not None:
        inits.append({**_container("log-shipper", image, lc.sidecar_script),
                      "restartPolicy": "Always"})
    if lc.init_script is not None:
        inits.append(_container("fetch-inputs", image, lc.init_script))
    if inits:
        spec["initContainers"] = inits
    if lc.act is not Act.TAINT:
        spec["tolerations"] = [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoExecute"}]
    if lc.act in (Act.SCHEDULE_LATER, Act.CANCEL_PENDING):
        spec["nodeSelector"] = {SCHEDULE_PREFIX + run_id: "true"}
    if lc.act is Act.PREEMPT:
        spec["priorityClassName"] = LOW_PRIORITY
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {RUN_ID_LABEL: run_id, KIND_LABEL: lc.kind.value,
                                LIFECYCLE_LABEL: lc.name, **MANAGED_BY},
                     **({"finalizers": list(finalizers)} if finalizers else {})},
        "spec": spec,
    }


def preemptor(*, name: str, namespace: str, image: str) -> dict[str, Any]:
    """An untracked high-priority pod that needs the victim's CPU."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                 "priorityClassName": HIGH_PRIORITY, "automountServiceAccountToken": False,
                 "tolerations": [{"key": TAINT_KEY, "operator": "Exists",
                                  "effect": "NoExecute"}],
                 "containers": [{**_container("main", image, "exec sleep 3600"),
                                 "resources": {"requests": {"cpu": VICTIM_CPU}}}]},
    }


def newer_finished(*, name: str, namespace: str, image: str) -> dict[str, Any]:
    """An untracked pod that exits 0 at once. Pod GC keeps the newest-created finished
    pods (ties broken by the greater name), so created after a pod ended, under that
    pod's name plus a suffix, it makes that pod collectable with a threshold of 1."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                 "automountServiceAccountToken": False,
                 "containers": [_container("main", image, "exit 0")]},
    }


def priority_classes() -> list[dict[str, Any]]:
    """The two PriorityClasses the preemption lifecycle needs."""
    return [{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
             "metadata": {"name": name}, "value": value,
             "preemptionPolicy": "PreemptLowerPriority",
             "description": "sniffer testbed: the preemption lifecycle"}
            for name, value in ((LOW_PRIORITY, 100), (HIGH_PRIORITY, 1000))]
