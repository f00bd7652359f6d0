"""Pod statuses shaped as a real kubelet (or scheduler) writes them: one pure function each.

Contract:

* `render(shape, pod, now)` returns the ``status`` object to send as a strategic merge
  patch of the status subresource, for the pod as last read (``pod``: spec and previous
  status). No I/O, no clock but `now`, no randomness: ids are hashes of the pod's uid.
* Kubelet shapes carry what kubelet_pods.go (generateAPIPodStatus, getPhase) and
  status/generate.go produce: phase from the container states; the kubelet-owned conditions
  PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled with their
  reasons (ContainersNotInitialized, ContainersNotReady, PodCompleted, PodFailed) and
  messages ("containers with unready status: [a b]"); a condition keeps its
  lastTransitionTime while its status does not change; running containers keep their
  startedAt; container statuses come in spec order, init containers (regular and native
  sidecars, ``restartPolicy: Always``) in ``initContainerStatuses``.
* Conditions are merged by type on the server, so a condition somebody else set (the
  Eviction API's or the scheduler's DisruptionTarget) survives every kubelet shape; their
  ``reason`` and ``message`` are always sent (null when absent) so none goes stale.
* Scheduler shapes (`Shape.UNSCHEDULABLE`, `Shape.DISRUPTION_TARGET`) carry only their one
  condition.
* Containers answer SIGTERM as their restart policy suggests: a batch container (pod
  ``restartPolicy: Never``) dies of it (143, Error), a server (``Always``) exits 0
  (Completed). Hard evictions kill (137). Native sidecars exit 0 when stopped.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


def timestamp(epoch: float) -> str:
    """RFC 3339 at second precision, as metav1.Time serialises."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    image: str
    init: bool
    sidecar: bool


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What the shapes read from a pod object."""

    name: str
    namespace: str
    uid: str
    node: str | None
    restart_policy: str
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...]
    status: Mapping[str, Any]

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodFacts:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}

        def listed(field: str, init: bool) -> tuple[Container, ...]:
            return tuple(Container(c["name"], c.get("image", ""), init,
                                   init and c.get("restartPolicy") == "Always")
                         for c in spec.get(field) or ())

        return cls(name=meta.get("name", ""), namespace=meta.get("namespace", ""),
                   uid=meta.get("uid", ""), node=spec.get("nodeName") or None,
                   restart_policy=spec.get("restartPolicy") or "Always",
                   containers=listed("containers", False),
                   init_containers=listed("initContainers", True),
                   status=pod.get("status") or {})

    @property
    def sigterm_exit(self) -> int:
        return 143 if self.restart_policy == "Never" else 0

    @property
    def sidecars(self) -> tuple[Container, ...]:
        return tuple(c for c in self.init_containers if c.sidecar)

    @property
    def regular_inits(self) -> tuple[Container, ...]:
        return tuple(c for c in self.init_containers if not c.sidecar)

    def previous(self, name: str) -> Mapping[str, Any]:
        for field in ("containerStatuses", "initContainerStatuses"):
            for cs in self.status.get(field) or ():
                if cs.get("name") == name:
                    return dict(cs)
        return {}


def _hex(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _node_index(node: str | None) -> int:
    digits = "".join(ch for ch in node or "" if ch.isdigit())
    return int(digits[-3:]) % 250 if digits else 0


class _Builder:
    """Container statuses of one pod being assembled for one shape."""

    def __init__(self, facts: PodFacts, now: float) -> None:
        self.facts = facts
        self.now = now
        self.stamp = timestamp(now)
        self.statuses: dict[str, JSON] = {}

    def _base(self, c: Container, restarts: int | None = None) -> JSON:
        prev = self.facts.previous(c.name)
        count = prev.get("restartCount", 0) if restarts is None else restarts
        return {"name": c.name, "image": c.image, "imageID": "", "ready": False,
                "restartCount": count, "started": False, "lastState": prev.get("lastState") or {},
                "state": {}}

    def _ids(self, c: Container, cs: JSON) -> None:
        cs["imageID"] = f"{c.image.split(':')[0]}@sha256:{_hex(c.image)}"
        cs["containerID"] = f"containerd://{_hex(self.facts.uid, c.name, cs['restartCount'])}"

    def waiting(self, c: Container, reason: str, message: str | None = None) -> None:
        cs = self._base(c)
        cs["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        self.statuses[c.name] = cs

    def running(self, c: Container, *, ready: bool = True, restarts: int | None = None) -> None:
        prev = self.facts.previous(c.name)
        cs = self._base(c, restarts)
        old = (prev.get("state") or {}).get("running")
        same_run = old is not None and prev.get("restartCount", 0) == cs["restartCount"]
        cs["state"] = {"running": {
            "startedAt": old["startedAt"] if old is not None and same_run else self.stamp}}
        cs.update(ready=ready, started=True)
        self._ids(c, cs)
        self.statuses[c.name] = cs

    def terminated(self, c: Container, exit_code: int, reason: str | None = None,
                   message: str | None = None) -> None:
        current = self.statuses.get(c.name)
        if current is not None and "terminated" in current["state"]:
            return  # already decided by this shape
        prev = self.facts.previous(c.name)
        state = prev.get("state") or {}
        if "terminated" in state:
            self.statuses[c.name] = dict(prev)
            return
        cs = self._base(c)
        started = (state.get("running") or {}).get("startedAt", self.stamp)
        detail: JSON = {"exitCode": exit_code,
                        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                        "startedAt": started, "finishedAt": self.stamp}
        if message:
            detail["message"] = message
        self._ids(c, cs)
        detail["containerID"] = cs["containerID"]
        cs["state"] = {"terminated": detail}
        cs["ready"] = c.init and not c.sidecar and exit_code == 0
        self.statuses[c.name] = cs

    def crashed(self, c: Container, restarts: int, backoff: bool) -> None:
        """The container crashed (exit 1) `restarts` times; now backing off or running."""
        prev = self.facts.previous(c.name)
        state = prev.get("state") or {}
        last = dict((prev.get("lastState") or {}).get("terminated") or {})
        if "running" in state:  # the run that just crashed becomes lastState
            started = state["running"]["startedAt"]
            last = {"exitCode": 1, "reason": "Error", "startedAt": started,
                    "finishedAt": self.stamp,
                    "containerID": f"containerd://{_hex(self.facts.uid, c.name, restarts - 1)}"}
        if backoff:
            cs = self._base(c, restarts)
            delay = min(10 * 2 ** (restarts - 1), 300)
            cs["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                f"back-off {delay // 60}m{delay % 60}s restarting failed container={c.name} "
                f"pod={self.facts.name}_{self.facts.namespace}({self.facts.uid})"
                if delay >= 60 else
                f"back-off {delay}s restarting failed container={c.name} "
                f"pod={self.facts.name}_{self.facts.namespace}({self.facts.uid})")}}
            self._ids(c, cs)
            cs["containerID"] = last.get("containerID", cs["containerID"])
            self.statuses[c.name] = cs
        else:
            self.running(c, restarts=restarts)
        self.statuses[c.name]["lastState"] = {"terminated": last} if last else {}

    def ordered(self, containers: tuple[Container, ...]) -> list[JSON]:
        return [self.statuses[c.name] for c in containers if c.name in self.statuses]


def _names(names: list[str]) -> str:
    return "[" + " ".join(names) + "]"


def _phase(facts: PodFacts, b: _Builder, terminal: bool) -> str:
    """getPhase: Pending while an init container or a main container waits; Running while a
    main container runs; when all stopped, Succeeded iff all exited 0 (for a pod that will
    not restart them), else Failed."""
    states = {name: cs["state"] for name, cs in b.statuses.items()}
    for c in facts.regular_inits:
        state = states.get(c.name, {})
        if "terminated" in state and state["terminated"]["exitCode"] != 0:
            return "Failed" if facts.restart_policy == "Never" or terminal else "Pending"
        if "terminated" not in state:
            return "Failed" if terminal else "Pending"
    main = [states.get(c.name, {}) for c in facts.containers]
    lasts = [b.statuses.get(c.name, {}).get("lastState") or {} for c in facts.containers]
    if any("waiting" in s and not last for s, last in zip(main, lasts, strict=True)):
        return "Failed" if terminal else "Pending"
    if any("running" in s for s in main):
        return "Running"
    stopped = [s["terminated"]["exitCode"] if "terminated" in s
               else last.get("terminated", {}).get("exitCode", 1)
               for s, last in zip(main, lasts, strict=True)]
    if terminal or facts.restart_policy != "Always":
        if all(code == 0 for code in stopped):
            return "Succeeded"
        if terminal or facts.restart_policy == "Never":
            return "Failed"
    return "Running"


def _conditions(facts: PodFacts, b: _Builder, phase: str, sandbox: bool,
                extra: list[JSON]) -> list[JSON]:
    """The kubelet-owned conditions (status/generate.go), after any `extra` ones."""
    def cond(type_: str, ok: bool, reason: str | None = None,
             message: str | None = None) -> JSON:
        # reason and message are always sent: null deletes a stale one (conditions merge
        # field by field on the server).
        return {"type": type_, "status": "True" if ok else "False", "reason": reason,
                "message": message, "lastProbeTime": None}

    statuses = b.statuses
    main_started = any({"running", "terminated"} & set(statuses.get(c.name, {}).get("state", ()))
                       for c in facts.containers)
    if phase == "Succeeded":
        initialized = cond("Initialized", True, "PodCompleted")
    elif main_started:
        initialized = cond("Initialized", True)
    else:
        incomplete = [c.name for c in facts.init_containers
                      if not (statuses.get(c.name, {}).get("started") if c.sidecar
                              else statuses.get(c.name, {}).get("ready"))]
        initialized = (cond("Initialized", False, "ContainersNotInitialized",
                            f"containers with incomplete status: {_names(incomplete)}")
                       if incomplete else cond("Initialized", True))
    if phase in ("Succeeded", "Failed"):
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        ready = cond("ContainersReady", False, reason)
    else:
        unready = [c.name for c in (*facts.sidecars, *facts.containers)
                   if not statuses.get(c.name, {}).get("ready")]
        ready = (cond("ContainersReady", False, "ContainersNotReady",
                      f"containers with unready status: {_names(unready)}")
                 if unready else cond("ContainersReady", True))
    conditions = [*extra, cond("PodReadyToStartContainers", sandbox), initialized,
                  {**ready, "type": "Ready"}, ready, cond("PodScheduled", True)]
    previous = {c.get("type"): c for c in facts.status.get("conditions") or ()}
    for c in conditions:
        old = previous.get(c["type"])
        since = old.get("lastTransitionTime") if old is not None else None
        same = old is not None and old.get("status") == c["status"]
        c["lastTransitionTime"] = since if same and since else b.stamp
    return conditions


def _scheduler_condition(facts: PodFacts, type_: str, status: str, reason: str,
                         message: str, now: float) -> JSON:
    old = next((c for c in facts.status.get("conditions") or () if c.get("type") == type_), None)
    since = (old["lastTransitionTime"] if old and old.get("status") == status
             and old.get("lastTransitionTime") else timestamp(now))
    return {"conditions": [{"type": type_, "status": status, "reason": reason,
                            "message": message, "lastProbeTime": None,
                            "lastTransitionTime": since}]}


def render(shape: Shape, pod: Mapping[str, Any], now: float, *, restarts: int = 0) -> JSON:
    """The status `shape` gives `pod` at `now` (`restarts`: for crash-loop shapes)."""
    facts = PodFacts.of(pod)
    if shape is Shape.UNSCHEDULABLE:
        return _scheduler_condition(facts, "PodScheduled", "False", "Unschedulable",
                                    UNSCHEDULABLE_MESSAGE, now)
    if shape is Shape.DISRUPTION_TARGET:
        return _scheduler_condition(facts, "DisruptionTarget", "True", "PreemptionByScheduler",
                                    PREEMPTION_MESSAGE, now)
    b = _Builder(facts, now)
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
        stop_all(137 if shape is Shape.EVICTED else kill)
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
    return _status(facts, b, sandbox, terminal, extra, top)


def terminated_on_deletion(pod: Mapping[str, Any], now: float) -> JSON:
    """The kubelet's final status for a pod whose deletion it carries out: running
    containers stop as they answer SIGTERM, containers that never started are reported
    ContainerStatusUnknown (137) once the pod had initialized, and the phase is terminal."""
    facts = PodFacts.of(pod)
    b = _Builder(facts, now)
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
    return _status(facts, b, False, True, [], {})


def _status(facts: PodFacts, b: _Builder, sandbox: bool, terminal: bool, extra: list[JSON],
            top: JSON) -> JSON:
    phase = top.get("phase") or _phase(facts, b, terminal)
    node = _node_index(facts.node)
    status: JSON = {**top, "phase": phase,
                    "conditions": _conditions(facts, b, phase, sandbox, extra),
                    "hostIP": f"10.0.0.{10 + node}", "hostIPs": [{"ip": f"10.0.0.{10 + node}"}],
                    "startTime": facts.status.get("startTime") or b.stamp,
                    "containerStatuses": b.ordered(facts.containers)}
    if facts.init_containers:
        status["initContainerStatuses"] = b.ordered(facts.init_containers)
    ip = facts.status.get("podIP")
    if ip or sandbox:
        ip = ip or f"10.244.{node}.{int(_hex(facts.uid)[:4], 16) % 250 + 2}"
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return status
