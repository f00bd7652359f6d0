"""The status shapes a real kubelet (or scheduler) writes: `render(shape, pod, now)`.

Contract:

* `render` returns the ``status`` object to send as a strategic merge patch of the status
  subresource, for the pod as last read (``pod``: spec and previous status). Pure: no I/O,
  no clock but `now`, no randomness.
* Kubelet shapes are whole kubelet statuses (`kubestatus.pod_status`: phase, the
  kubelet-owned conditions, container statuses in spec order, init containers and native
  sidecars in ``initContainerStatuses``). Conditions merge by type on the server, so one
  somebody else set (the Eviction API's or the scheduler's DisruptionTarget) survives.
* Scheduler shapes (`Shape.UNSCHEDULABLE`, `Shape.DISRUPTION_TARGET`) carry only their one
  condition, with the scheduler's reason and message.
* Kubelet-initiated terminations (DeadlineExceeded, Evicted, node shutdown) fail the pod
  whatever its exit codes, with the kubelet's status reason and message; evictions and
  shutdowns add DisruptionTarget (TerminationByKubelet).
* Containers answer SIGTERM as their restart policy suggests: a batch container (pod
  ``restartPolicy: Never``) dies of it (143, Error), a server (``Always``) exits 0
  (Completed). Hard evictions kill (137). Native sidecars exit 0 when stopped.
* A pod past its activeDeadlineSeconds is killed at the end of its grace period (137,
  Error): the container's PID 1 ignores SIGTERM unless it handles it, as the real kubelet
  showed (tests/fixtures/kubelet/deadline.json).
* `terminated_on_deletion` is the kubelet's last status for a pod being deleted: running
  containers stop as they answer SIGTERM, containers that never started are reported
  ContainerStatusUnknown (137) once the pod had initialized, and the phase is terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from testbed.simulator.kubestatus import (
    PodFacts,
    StatusBuilder,
    pod_status,
    timestamp,
)
from testbed.simulator.lifecycles import Shape

JSON = dict[str, Any]

UNSCHEDULABLE_MESSAGE = ("0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes "
                         "are available: 3 No preemption victims found for incoming pod.")
PREEMPTION_MESSAGE = "default-scheduler: preempting to accommodate a higher priority pod"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown."
UNKNOWN_MESSAGE = "The container could not be located when the pod was terminated"


def eviction_message(container: str) -> str:
    """The eviction manager's message (helpers.go format strings, trailing spaces kept)."""
    return ("The node was low on resource: memory. Threshold quantity: 100Mi, available: "
            f"92360Ki. Container {container} was using 1843928Ki, request is 512Mi, has larger "
            "consumption of memory. ")


def _scheduler_condition(facts: PodFacts, type_: str, status: str, reason: str,
                         message: str, now: float) -> JSON:
    old = next((c for c in facts.status.get("conditions") or () if c.get("type") == type_), None)
    since = (old["lastTransitionTime"] if old and old.get("status") == status
             and old.get("lastTransitionTime") else timestamp(now))
    return {"conditions": [{"type": type_, "status": status, "reason": reason,
                            "message": message, "lastProbeTime": None,
                            "lastTransitionTime": since}]}


def render(shape: Shape, pod: Mapping[str, Any], now: float, *, restarts: int = 0,
           exit_code: int | None = None) -> JSON:
    """The status `shape` gives `pod` at `now` (`restarts`: for crash-loop shapes;
    `exit_code`: the main container's, for `Shape.FAILED_ERROR`, 1 if None)."""
    facts = PodFacts.of(pod)
    if shape is Shape.UNSCHEDULABLE:
        return _scheduler_condition(facts, "PodScheduled", "False", "Unschedulable",
                                    UNSCHEDULABLE_MESSAGE, now)
    if shape is Shape.DISRUPTION_TARGET:
        return _scheduler_condition(facts, "DisruptionTarget", "True", "PreemptionByScheduler",
                                    PREEMPTION_MESSAGE, now)
    b = StatusBuilder(facts, now)
    sandbox, terminal = True, False
    extra: list[JSON] = []
    top: JSON = {}
    main = facts.containers[0]
    kill = facts.sigterm_exit

    def start_all() -> None:
        for c in facts.init_containers:
            b.running(c) if c.sidecar else b.terminated(c, 0)
        for c in facts.containers:
            b.running(c)

    def stop_all(code: int, reason: str | None = None) -> None:
        for c in facts.init_containers:
            b.terminated(c, 0 if c.sidecar and code != 137 else code, reason if code else None)
        for c in facts.containers:
            b.terminated(c, code, reason)

    if shape is Shape.CONTAINER_CREATING:
        sandbox = False
        for c in facts.init_containers:
            b.waiting(c, "PodInitializing")
        for c in facts.containers:
            b.waiting(c, "PodInitializing" if facts.init_containers else "ContainerCreating")
    elif shape is Shape.INIT_RUNNING:
        pending = list(facts.regular_inits)
        for c in facts.init_containers:
            if c.sidecar:
                b.running(c)
            elif pending and c is pending[0]:
                b.running(c, ready=False)
            else:
                b.waiting(c, "PodInitializing")
        for c in facts.containers:
            b.waiting(c, "PodInitializing" if pending else "ContainerCreating")
    elif shape in (Shape.RUNNING, Shape.RESTARTED):
        start_all()
        if shape is Shape.RESTARTED:
            b.crashed(main, restarts, backoff=False)
    elif shape is Shape.CRASH_LOOP_BACKOFF:
        start_all()
        b.crashed(main, restarts, backoff=True)
    elif shape in (Shape.ERR_IMAGE_PULL, Shape.IMAGE_PULL_BACKOFF):
        start_all()
        pull = (f'rpc error: code = NotFound desc = failed to pull and unpack image '
                f'"{main.image}": failed to resolve reference "{main.image}": '
                f'{main.image}: not found')
        if shape is Shape.ERR_IMAGE_PULL:
            b.waiting(main, "ErrImagePull", pull)
        else:
            b.waiting(main, "ImagePullBackOff",
                      f'Back-off pulling image "{main.image}": ErrImagePull: {pull}')
    elif shape in (Shape.SUCCEEDED, Shape.FAILED_ERROR, Shape.OOM_KILLED):
        start_all()
        code, reason = {Shape.SUCCEEDED: (0, "Completed"), Shape.FAILED_ERROR: (1, "Error"),
                        Shape.OOM_KILLED: (137, "OOMKilled")}[shape]
        if shape is Shape.FAILED_ERROR and exit_code is not None:
            code = exit_code
        b.terminated(main, code, reason)
        stop_all(0)
        sandbox, terminal = False, True
    elif shape in (Shape.DEADLINE_EXCEEDED, Shape.EVICTED, Shape.NODE_SHUTDOWN):
        start_all()
        message = {Shape.DEADLINE_EXCEEDED: DEADLINE_MESSAGE,
                   Shape.EVICTED: eviction_message(main.name),
                   Shape.NODE_SHUTDOWN: SHUTDOWN_MESSAGE}[shape]
        # The kubelet fails the pod itself (whatever the exit codes), then kills it.
        reason = {Shape.DEADLINE_EXCEEDED: "DeadlineExceeded", Shape.EVICTED: "Evicted",
                  Shape.NODE_SHUTDOWN: "Terminated"}[shape]
        top = {"phase": "Failed", "reason": reason, "message": message}
        stop_all(kill if shape is Shape.NODE_SHUTDOWN else 137)
        if shape is not Shape.DEADLINE_EXCEEDED:
            extra.append({"type": "DisruptionTarget", "status": "True",
                          "reason": "TerminationByKubelet", "message": message,
                          "lastProbeTime": None})
        sandbox, terminal = False, True
    elif shape is Shape.INIT_ERROR:
        failing = facts.regular_inits[0]
        for c in facts.init_containers:
            if c is failing:
                b.terminated(c, 1, "Error")
            elif c.sidecar:
                b.terminated(c, 0)
            else:
                b.waiting(c, "PodInitializing")
        for c in facts.containers:
            b.waiting(c, "PodInitializing")
        sandbox, terminal = False, True
    elif shape is Shape.TERMINATED_ON_DELETION:
        return terminated_on_deletion(pod, now)
    else:
        raise ValueError(f"shape {shape.value!r} is not a status the kubelet writes")
    return pod_status(facts, b, sandbox, terminal, extra, top)


def terminated_on_deletion(pod: Mapping[str, Any], now: float) -> JSON:
    """The kubelet's final status for a pod whose deletion it carries out: running
    containers stop as they answer SIGTERM, containers that never started are reported
    ContainerStatusUnknown (137) once the pod had initialized, and the phase is terminal."""
    facts = PodFacts.of(pod)
    b = StatusBuilder(facts, now)
    initialized = all("terminated" in (facts.previous(c.name).get("state") or {})
                      for c in facts.regular_inits)
    for c in (*facts.init_containers, *facts.containers):
        prev = facts.previous(c.name)
        state = prev.get("state") or {}
        if "running" in state or "terminated" in state:
            b.terminated(c, 0 if c.sidecar else facts.sigterm_exit)
        elif prev and not c.init and initialized:
            b.terminated(c, 137, "ContainerStatusUnknown", UNKNOWN_MESSAGE)
        elif prev:
            b.statuses[c.name] = dict(prev)
    return pod_status(facts, b, False, True, [], {})
