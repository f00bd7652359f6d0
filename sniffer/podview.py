"""The projection of a raw Pod object into the small immutable record Sniffer caches.

Contract:

* `project(obj)` returns a `PodView` or raises `MalformedPod` naming the bad field; for any
  JSON-shaped input (whatever `json.loads` can return) it raises nothing else.
* A `PodView` keeps only what Sniffer reads (`sniffer.states.derive`, the handler, the
  store, the reconciler); it is immutable, hashable and compares by value. Fields nothing
  reads are neither kept nor validated.
* Times are float seconds since the Unix epoch (UTC), parsed from RFC 3339; JSON null and a
  missing field are None.
* Strings that repeat across pods (namespace, phase, reasons, condition types, container
  names, finalizers) are interned, and equal conditions are one shared object, so a cache
  of many pods holds one copy of each.
* Messages are cut to `MESSAGE_LIMIT` characters.
* Containers come in spec order (statuses for names absent from the spec follow, in status
  order); of the conditions only PodScheduled and DisruptionTarget are kept (the last of
  each type, if the status repeats one); every condition's lastTransitionTime counts
  towards `changed_at`.
* An absent `status.phase` reads as "Pending" (the API server sets it when the pod is created).
* `owner_kind`/`owner_uid` are the controller owner reference's (`controller: true`), else
  the Job named by the Job controller's uid label; a reference that claims to be the
  controller without a kind, name or uid is malformed.
* An unknown `sniffer.io/kind` value or an invalid run id is malformed; an invalid
  `sniffer.io/traceparent` is ignored (trace context is advisory), giving None.
* Budget: under 1 KiB of heap per cached pod (measured in tests/test_podview.py).
* Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Literal

from sniffer.ownership import pod_owner
from sniffer.podfields import (
    MESSAGE_LIMIT,
    MalformedPod,
    interned,
    message,
    read_bool,
    read_int,
    read_list,
    read_map,
    read_str,
    read_time,
    required_str,
    shared,
    traceparent,
)

__all__ = [
    "CANCEL_ANNOTATION", "INITIAL_EVENTS_END_ANNOTATION", "KEPT_CONDITIONS", "KIND_LABEL",
    "MESSAGE_LIMIT", "OUTCOME_FINALIZER", "RUN_ID_LABEL",
    "RUN_ID_PATTERN", "TRACEPARENT_ANNOTATION", "ConditionView", "ContainerView",
    "MalformedPod", "PodView", "Termination", "WorkloadKind", "project", "run_labels",
]

RUN_ID_LABEL = "sniffer.io/run-id"
KIND_LABEL = "sniffer.io/kind"
CANCEL_ANNOTATION = "sniffer.io/cancel-requested"
TRACEPARENT_ANNOTATION = "sniffer.io/traceparent"
OUTCOME_FINALIZER = "sniffer.io/outcome"
INITIAL_EVENTS_END_ANNOTATION = "k8s.io/initial-events-end"
"""On the bookmark that ends a WatchList stream's initial events (the list part)."""

KEPT_CONDITIONS = ("PodScheduled", "DisruptionTarget")
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,62}")

ContainerStateKind = Literal["waiting", "running", "terminated"]


class WorkloadKind(StrEnum):
    """What the platform runs in the pod (label `sniffer.io/kind`, default job)."""

    JOB = "job"
    NOTEBOOK = "notebook"
    APP = "app"


@dataclass(frozen=True, slots=True)
class ConditionView:
    """One kept pod condition. Equal conditions of different pods are one object."""

    type: str
    status: str
    reason: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class Termination:
    """A container's previous run (`lastState.terminated`), known after a restart."""

    reason: str | None
    message: str | None
    exit_code: int
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class ContainerView:
    """One container's status. `state` is None when the status names no state.

    `reason`/`message` belong to the current waiting or terminated state; `exit_code` is
    set iff `state == "terminated"`; `last` is the previous run (None before a restart, as
    for CrashLoopBackOff or OOMKilled restarts); `sidecar` is True iff this is an init
    container with `restartPolicy: Always` (a native sidecar)."""

    name: str
    started: bool
    restart_count: int
    state: ContainerStateKind | None
    reason: str | None
    message: str | None
    exit_code: int | None
    started_at: float | None
    finished_at: float | None
    last: Termination | None
    sidecar: bool


@dataclass(frozen=True, slots=True)
class PodView:
    """The cached projection of one pod.

    `key` is "namespace/name", built once: the store, the work queue and the handler all
    hold this one string. `scheduled` and `disruption` are the PodScheduled and
    DisruptionTarget conditions (None when absent; `conditions` lists those present).
    `containers` are the main containers, `init_containers` the init containers including
    native sidecars. `changed_at` is the latest transition time the status carries (any
    condition's lastTransitionTime, any container's startedAt/finishedAt), None if it
    carries none; `deletion_grace_period_s` is metadata.deletionGracePeriodSeconds, so the
    moment the deletion was requested is `deletion_timestamp - deletion_grace_period_s`."""

    namespace: str
    key: str
    uid: str
    resource_version: str
    run_id: str | None
    kind: WorkloadKind
    cancel_requested: bool
    traceparent: str | None
    phase: str
    reason: str | None
    message: str | None
    created_at: float
    start_time: float | None
    deletion_timestamp: float | None
    deletion_grace_period_s: int | None
    finalizers: tuple[str, ...]
    scheduled: ConditionView | None
    disruption: ConditionView | None
    containers: tuple[ContainerView, ...]
    init_containers: tuple[ContainerView, ...]
    changed_at: float | None
    owner_kind: str | None = None
    owner_uid: str | None = None
    """The pod's controller reference (`controller: true`): kind (Job, ReplicaSet,
    StatefulSet, ...) and uid; None for a bare pod. A pod that has none but carries the
    Job controller's uid label (`batch.kubernetes.io/controller-uid`, or the older
    `controller-uid`), as an orphaning delete of its Job leaves it, reads as kind "Job"
    with that uid: the Job that made it."""
    deleted_while_active: bool = False
    """History, not projection: the cache saw this pod deleting while still Pending or
    Running, so its deletion came before any terminal phase it reaches. Set by the
    store (`watch.store`), which sees the versions in order; `project` leaves it False."""
    final_state_unknown: bool = False
    """History, not projection: a relist found the pod gone and no event ever showed its
    deletion (client-go's DeletedFinalStateUnknown), so this view is the last one seen,
    not its end. Set by the store on such a tombstone; `project` leaves it False."""

    @property
    def name(self) -> str:
        """metadata.name (cut from `key`, so the view holds the name only once)."""
        return self.key[len(self.namespace) + 1:]

    @property
    def conditions(self) -> tuple[ConditionView, ...]:
        """The kept conditions: PodScheduled, DisruptionTarget, those present."""
        return tuple(c for c in (self.scheduled, self.disruption) if c is not None)

    def condition(self, type_: str) -> ConditionView | None:
        """The kept condition of that type, or None."""
        for cond in (self.scheduled, self.disruption):
            if cond is not None and cond.type == type_:
                return cond
        return None


# --- the projection -------------------------------------------------------------------

_STATE_KINDS: tuple[ContainerStateKind, ...] = ("terminated", "running", "waiting")
_KINDS = {kind.value: kind for kind in WorkloadKind}


@lru_cache(maxsize=1024)
def _shared_condition(type_: str, status: str, reason: str | None,
                      message: str | None) -> ConditionView:
    """One object per distinct condition: a scheduled pod's PodScheduled is the same
    for nearly every pod (bounded, so distinct messages cannot grow it)."""
    return ConditionView(type_, status, reason, message)


def _condition(raw: object, field: str, times: list[float]) -> ConditionView | None:
    cond = read_map(raw, field, required=True)
    type_ = required_str(cond.get("type"), f"{field}.type")
    status = required_str(cond.get("status"), f"{field}.status")
    last = read_time(cond.get("lastTransitionTime"), f"{field}.lastTransitionTime")
    if last is not None:
        times.append(last)
    if type_ not in KEPT_CONDITIONS:
        return None
    return _shared_condition(
        sys.intern(type_), sys.intern(status),
        interned(cond.get("reason"), f"{field}.reason"),
        message(cond.get("message"), f"{field}.message"))


def _termination(detail: Mapping[str, object], field: str) -> Termination:
    exit_code = read_int(detail.get("exitCode"), f"{field}.exitCode")
    if exit_code is None:
        raise MalformedPod(f"{field}.exitCode: required, got nothing")
    return Termination(
        reason=interned(detail.get("reason"), f"{field}.reason"),
        message=message(detail.get("message"), f"{field}.message"),
        exit_code=exit_code,
        started_at=read_time(detail.get("startedAt"), f"{field}.startedAt"),
        finished_at=read_time(detail.get("finishedAt"), f"{field}.finishedAt"),
    )


def _container(raw: object, field: str, sidecars: frozenset[str],
               times: list[float]) -> ContainerView:
    cs = read_map(raw, field, required=True)
    name = sys.intern(required_str(cs.get("name"), f"{field}.name"))
    states = read_map(cs.get("state"), f"{field}.state")
    kind = next((k for k in _STATE_KINDS if states.get(k) is not None), None)
    sub = f"{field}.state.{kind}"
    detail = read_map(states.get(kind) if kind else None, sub)
    ended = _termination(detail, sub) if kind == "terminated" else None
    started_at = (ended.started_at if ended
                  else read_time(detail.get("startedAt"), f"{sub}.startedAt"))
    last_field = f"{field}.lastState.terminated"
    last_state = read_map(read_map(cs.get("lastState"), f"{field}.lastState").get("terminated"),
                          last_field)
    times.extend(t for t in (started_at, ended.finished_at if ended else None) if t is not None)
    return ContainerView(
        name=name,
        started=read_bool(cs.get("started"), f"{field}.started"),
        restart_count=read_int(cs.get("restartCount"), f"{field}.restartCount", minimum=0) or 0,
        state=kind,
        reason=ended.reason if ended else interned(detail.get("reason"), f"{sub}.reason"),
        message=ended.message if ended else message(detail.get("message"), f"{sub}.message"),
        exit_code=ended.exit_code if ended else None,
        started_at=started_at,
        finished_at=ended.finished_at if ended else None,
        last=_termination(last_state, last_field) if last_state else None,
        sidecar=name in sidecars,
    )


def _spec_order(spec: Mapping[str, object], field: str) -> tuple[dict[str, int], frozenset[str]]:
    """Container names in spec order, and those that are native sidecars."""
    order: dict[str, int] = {}
    sidecars: set[str] = set()
    for i, raw in enumerate(read_list(spec.get(field), f"spec.{field}")):
        item = read_map(raw, f"spec.{field}[{i}]", required=True)
        name = required_str(item.get("name"), f"spec.{field}[{i}].name")
        order.setdefault(name, i)
        policy = read_str(item.get("restartPolicy"), f"spec.{field}[{i}].restartPolicy")
        if policy == "Always":
            sidecars.add(name)
    return order, frozenset(sidecars)


def _containers(status: Mapping[str, object], field: str, order: dict[str, int],
                sidecars: frozenset[str], times: list[float]) -> tuple[ContainerView, ...]:
    views = [_container(raw, f"status.{field}[{i}]", sidecars, times)
             for i, raw in enumerate(read_list(status.get(field), f"status.{field}"))]
    if len(views) > 1:
        views.sort(key=lambda v: order.get(v.name, len(order)))
    return tuple(views)


def run_labels(meta: Mapping[str, object], malformed: type[MalformedPod] = MalformedPod,
               ) -> tuple[str | None, WorkloadKind]:
    """The run id and workload kind an object's labels give (pods and Jobs alike); raises
    `malformed` for an invalid run id or an unknown kind."""
    labels = read_map(meta.get("labels"), "metadata.labels")
    run_field = f"metadata.labels[{RUN_ID_LABEL!r}]"
    run_id = read_str(labels.get(RUN_ID_LABEL), run_field)
    if run_id is not None and RUN_ID_PATTERN.fullmatch(run_id) is None:
        raise malformed(f"{run_field}: not a valid run id: {run_id[:80]!r}")
    kind_field = f"metadata.labels[{KIND_LABEL!r}]"
    kind_value = read_str(labels.get(KIND_LABEL), kind_field) or WorkloadKind.JOB.value
    if kind_value not in _KINDS:
        raise malformed(f"{kind_field}: unknown kind {kind_value[:40]!r} "
                           "(expected job, notebook or app)")
    return run_id, _KINDS[kind_value]


def project(obj: object) -> PodView:
    """Project a Pod object (as `json.loads` gives it) into a `PodView`.

    Raises `MalformedPod` for anything that is not a usable pod: missing or mistyped
    metadata, name or uid, wrong types anywhere it reads, unparseable timestamps, an
    invalid run id or kind label. Raises nothing else for JSON-shaped input."""
    pod = read_map(obj, "pod", required=True)
    meta = read_map(pod.get("metadata"), "metadata", required=True)
    spec = read_map(pod.get("spec"), "spec")
    status = read_map(pod.get("status"), "status")
    run_id, kind = run_labels(meta)
    annotations = read_map(meta.get("annotations"), "metadata.annotations")
    cancel = read_str(annotations.get(CANCEL_ANNOTATION),
                      f"metadata.annotations[{CANCEL_ANNOTATION!r}]")
    trace = read_str(annotations.get(TRACEPARENT_ANNOTATION),
                     f"metadata.annotations[{TRACEPARENT_ANNOTATION!r}]")
    created_at = read_time(meta.get("creationTimestamp"), "metadata.creationTimestamp")
    if created_at is None:
        raise MalformedPod("metadata.creationTimestamp: required, got nothing")

    times: list[float] = []
    kept: dict[str, ConditionView] = {}
    for i, raw in enumerate(read_list(status.get("conditions"), "status.conditions")):
        if (view := _condition(raw, f"status.conditions[{i}]", times)) is not None:
            kept[view.type] = view
    order, _ = _spec_order(spec, "containers")
    init_order, sidecars = _spec_order(spec, "initContainers")
    containers = _containers(status, "containerStatuses", order, frozenset(), times)
    init_containers = _containers(status, "initContainerStatuses", init_order, sidecars, times)
    namespace = sys.intern(required_str(meta.get("namespace"), "metadata.namespace"))
    name = required_str(meta.get("name"), "metadata.name")

    owner_kind, owner_uid = pod_owner(meta)
    return PodView(
        namespace=namespace,
        key=f"{namespace}/{name}",
        uid=required_str(meta.get("uid"), "metadata.uid"),
        resource_version=read_str(meta.get("resourceVersion"), "metadata.resourceVersion") or "",
        run_id=run_id,
        kind=kind,
        cancel_requested=cancel == "true",
        traceparent=traceparent(trace),
        phase=interned(status.get("phase"), "status.phase") or "Pending",
        reason=interned(status.get("reason"), "status.reason"),
        message=message(status.get("message"), "status.message"),
        created_at=created_at,
        start_time=read_time(status.get("startTime"), "status.startTime"),
        deletion_timestamp=read_time(meta.get("deletionTimestamp"), "metadata.deletionTimestamp"),
        deletion_grace_period_s=read_int(meta.get("deletionGracePeriodSeconds"),
                                         "metadata.deletionGracePeriodSeconds", minimum=0),
        finalizers=shared(tuple(
            sys.intern(required_str(item, f"metadata.finalizers[{i}]"))
            for i, item in enumerate(read_list(meta.get("finalizers"), "metadata.finalizers")))),
        scheduled=kept.get("PodScheduled"),
        disruption=kept.get("DisruptionTarget"),
        containers=containers,
        init_containers=init_containers,
        changed_at=max(times) if times else None,
        owner_kind=owner_kind,
        owner_uid=owner_uid,
    )
