"""The kubelet's status machinery: container statuses, phase and conditions of a pod.

Contract (what kubelet_pods.go generateAPIPodStatus/getPhase and status/generate.go do):

* `StatusBuilder` assembles container statuses one container at a time (waiting, running,
  terminated, crashed), keeping what the previous status says: a running container keeps
  its startedAt, a terminated one stays as it was, ids are hashes of the pod uid (so no
  randomness), restarts move the last run into ``lastState.terminated``.
* `pod_status(...)` turns them into a whole status: the phase (`getPhase`: Pending while an
  init container or a main container waits; Running while a main container runs; when
  all stopped, Succeeded iff all exited 0, for a pod that will not restart them, else
  Failed; native sidecars do not count), the kubelet-owned conditions
  PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled with their
  reasons and messages, hostIP/podIP and startTime. A condition keeps its
  lastTransitionTime while its status holds. ``reason`` and ``message`` are always sent
  (null when absent) because conditions merge field by field on the server.
* Pure: no I/O, no clock but the `now` given.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


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


def stable_hex(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _node_index(node: str | None) -> int:
    digits = "".join(ch for ch in node or "" if ch.isdigit())
    return int(digits[-3:]) % 250 if digits else 0


class StatusBuilder:
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

    def container_id(self, c: Container, restart: int) -> str:
        return f"containerd://{stable_hex(self.facts.uid, c.name, restart)}"

    def _ids(self, c: Container, cs: JSON) -> None:
        cs["imageID"] = f"{c.image.split(':')[0]}@sha256:{stable_hex(c.image)}"
        cs["containerID"] = self.container_id(c, cs["restartCount"])

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
                    "containerID": self.container_id(c, restarts - 1)}
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


def _phase(facts: PodFacts, b: StatusBuilder, terminal: bool) -> str:
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


def _conditions(facts: PodFacts, b: StatusBuilder, phase: str, sandbox: bool,
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


def pod_status(facts: PodFacts, b: StatusBuilder, sandbox: bool, terminal: bool, extra: list[JSON],
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
        ip = ip or f"10.244.{node}.{int(stable_hex(facts.uid)[:4], 16) % 250 + 2}"
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return status
