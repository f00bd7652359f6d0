"""The projection of a raw Pod object into the small immutable record Sniffer caches.

Contract:

* `project(obj)` returns a `PodView` or raises `MalformedPod` naming the bad field; for any
  JSON-shaped input (whatever `json.loads` can return) it raises nothing else.
* A `PodView` keeps only what Sniffer uses; it is immutable, hashable and compares by value.
* Times are float seconds since the Unix epoch (UTC), parsed from RFC 3339; JSON null and a
  missing field are None.
* Strings that repeat across pods (namespace, phase, reasons, condition types, container
  names, finalizers) are interned, so a cache of many pods holds one copy of each.
* Messages are cut to `MESSAGE_LIMIT` characters.
* Containers come in spec order (statuses for names absent from the spec follow, in status
  order); of the conditions only PodScheduled, Ready and DisruptionTarget are kept (the
  last of each type, if the status repeats one).
* An absent `status.phase` reads as "Pending" (the API server sets it when the pod is created).
* An unknown `sniffer.io/kind` value or an invalid run id is malformed; an invalid
  `sniffer.io/traceparent` is ignored (trace context is advisory), giving None.
* Budget: about 1 KiB of heap per cached pod (measured in tests/test_podview.py).
* Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Literal

RUN_ID_LABEL = "sniffer.io/run-id"
KIND_LABEL = "sniffer.io/kind"
CANCEL_ANNOTATION = "sniffer.io/cancel-requested"
TRACEPARENT_ANNOTATION = "sniffer.io/traceparent"
OUTCOME_FINALIZER = "sniffer.io/outcome"

MESSAGE_LIMIT = 256
KEPT_CONDITIONS = ("PodScheduled", "Ready", "DisruptionTarget")
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,62}")

ContainerStateKind = Literal["waiting", "running", "terminated"]


class WorkloadKind(StrEnum):
    """What the platform runs in the pod (label `sniffer.io/kind`, default job)."""

    JOB = "job"
    NOTEBOOK = "notebook"
    APP = "app"


class MalformedPod(ValueError):
    """The object is not a pod Sniffer can use; `reason` names the bad field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ConditionView:
    """One kept pod condition."""

    type: str
    status: str
    reason: str | None
    message: str | None
    last_transition: float | None


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
    ready: bool
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

    `scheduled`, `ready` and `disruption` are the PodScheduled, Ready and DisruptionTarget
    conditions (None when absent; `conditions` lists those present). `containers` are the
    main containers, `init_containers` the init containers including native sidecars.
    `changed_at` is the latest transition time the status carries (any condition's
    lastTransitionTime, any container's startedAt/finishedAt), None if it carries none;
    `deletion_grace_period_s` is metadata.deletionGracePeriodSeconds, so the moment the
    deletion was requested is `deletion_timestamp - deletion_grace_period_s`."""

    namespace: str
    name: str
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
    restart_policy: str
    scheduled: ConditionView | None
    ready: ConditionView | None
    disruption: ConditionView | None
    containers: tuple[ContainerView, ...]
    init_containers: tuple[ContainerView, ...]
    changed_at: float | None
    deleted_while_active: bool = False
    """History, not projection: the cache saw this pod deleting while still Pending or
    Running, so its deletion came before any terminal phase it reaches. Set by the
    store (`watch.store`), which sees the versions in order; `project` leaves it False."""

    @property
    def key(self) -> str:
        """The cache key, "namespace/name"."""
        return f"{self.namespace}/{self.name}"

    @property
    def conditions(self) -> tuple[ConditionView, ...]:
        """The kept conditions: PodScheduled, Ready, DisruptionTarget, those present."""
        return tuple(c for c in (self.scheduled, self.ready, self.disruption) if c is not None)

    def condition(self, type_: str) -> ConditionView | None:
        """The kept condition of that type, or None."""
        for cond in (self.scheduled, self.ready, self.disruption):
            if cond is not None and cond.type == type_:
                return cond
        return None


# --- field readers: each raises MalformedPod naming the field ---------------------------

_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}"
    r"(?P<more>-.*)?", re.DOTALL)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATE_KINDS: tuple[ContainerStateKind, ...] = ("terminated", "running", "waiting")
_KINDS = {kind.value: kind for kind in WorkloadKind}


def _kind_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


@lru_cache(maxsize=256)
def _parse_rfc3339(text: str) -> float:
    """Seconds since the epoch; ValueError if `text` is not RFC 3339. Cached, so pods
    stamped in the same second share one float object."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(text)
    base, fraction, offset = m.groups()
    if base.endswith("60"):
        base = base[:-2] + "59"  # a leap second reads as :59
    # fromisoformat checks the ranges (month 13, offset +24:00, ...).
    moment = datetime.fromisoformat(base + ("+00:00" if offset in "Zz" else offset))
    seconds = (moment - _EPOCH).total_seconds()
    return seconds + float(fraction) if fraction else seconds


def _time(value: object, field: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPod(f"{field}: expected an RFC 3339 timestamp, got {_kind_name(value)}")
    try:
        return _parse_rfc3339(str(value))
    except (ValueError, OverflowError):
        raise MalformedPod(f"{field}: unparseable timestamp {value[:64]!r}") from None


def _map(value: object, field: str, *, required: bool = False) -> Mapping[str, object]:
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedPod(f"{field}: expected an object, got {_kind_name(value)}")
    return value


def _list(value: object, field: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPod(f"{field}: expected a list, got {_kind_name(value)}")
    return value


def _str(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPod(f"{field}: expected a string, got {_kind_name(value)}")
    return value if type(value) is str else str.__str__(value)


def _required_str(value: object, field: str) -> str:
    if text := _str(value, field):
        return text
    raise MalformedPod(f"{field}: required, got {'nothing' if value is None else 'empty'}")


def _intern(value: object, field: str) -> str | None:
    text = _str(value, field)
    return None if text is None else sys.intern(text)


def _message(value: object, field: str) -> str | None:
    text = _str(value, field)
    if not text:
        return None
    return text[:MESSAGE_LIMIT] if len(text) > MESSAGE_LIMIT else text


def _int(value: object, field: str, *, minimum: int | None = None) -> int | None:
    if value is None:
        return None
    if type(value) is not int:  # bool is an int subclass; 1.0 is not an int.
        raise MalformedPod(f"{field}: expected an integer, got {_kind_name(value)}")
    if minimum is not None and value < minimum:
        raise MalformedPod(f"{field}: must be >= {minimum}, got {value}")
    return value


def _bool(value: object, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedPod(f"{field}: expected a boolean, got {_kind_name(value)}")
    return value


def _traceparent(value: str | None) -> str | None:
    """The W3C traceparent's version-00 fields if valid, else None."""
    m = _TRACEPARENT.fullmatch(value or "")
    if (m is None or m["version"] == "ff" or (m["version"] == "00" and m["more"])
            or m["trace"] == "0" * 32 or m["parent"] == "0" * 16):
        return None
    return m.string[:55]


@lru_cache(maxsize=64)
def _shared(names: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple object per distinct finalizer list: most pods carry the same one."""
    return names


# --- the projection -------------------------------------------------------------------


def _condition(raw: object, field: str, times: list[float]) -> ConditionView | None:
    cond = _map(raw, field, required=True)
    type_ = _required_str(cond.get("type"), f"{field}.type")
    status = _required_str(cond.get("status"), f"{field}.status")
    last = _time(cond.get("lastTransitionTime"), f"{field}.lastTransitionTime")
    if last is not None:
        times.append(last)
    if type_ not in KEPT_CONDITIONS:
        return None
    return ConditionView(
        type=sys.intern(type_),
        status=sys.intern(status),
        reason=_intern(cond.get("reason"), f"{field}.reason"),
        message=_message(cond.get("message"), f"{field}.message"),
        last_transition=last,
    )


def _termination(detail: Mapping[str, object], field: str) -> Termination:
    exit_code = _int(detail.get("exitCode"), f"{field}.exitCode")
    if exit_code is None:
        raise MalformedPod(f"{field}.exitCode: required, got nothing")
    return Termination(
        reason=_intern(detail.get("reason"), f"{field}.reason"),
        message=_message(detail.get("message"), f"{field}.message"),
        exit_code=exit_code,
        started_at=_time(detail.get("startedAt"), f"{field}.startedAt"),
        finished_at=_time(detail.get("finishedAt"), f"{field}.finishedAt"),
    )


def _container(raw: object, field: str, sidecars: frozenset[str],
               times: list[float]) -> ContainerView:
    cs = _map(raw, field, required=True)
    name = sys.intern(_required_str(cs.get("name"), f"{field}.name"))
    states = _map(cs.get("state"), f"{field}.state")
    kind = next((k for k in _STATE_KINDS if states.get(k) is not None), None)
    sub = f"{field}.state.{kind}"
    detail = _map(states.get(kind) if kind else None, sub)
    ended = _termination(detail, sub) if kind == "terminated" else None
    started_at = ended.started_at if ended else _time(detail.get("startedAt"), f"{sub}.startedAt")
    last_field = f"{field}.lastState.terminated"
    last_state = _map(_map(cs.get("lastState"), f"{field}.lastState").get("terminated"),
                      last_field)
    times.extend(t for t in (started_at, ended.finished_at if ended else None) if t is not None)
    return ContainerView(
        name=name,
        ready=_bool(cs.get("ready"), f"{field}.ready"),
        started=_bool(cs.get("started"), f"{field}.started"),
        restart_count=_int(cs.get("restartCount"), f"{field}.restartCount", minimum=0) or 0,
        state=kind,
        reason=ended.reason if ended else _intern(detail.get("reason"), f"{sub}.reason"),
        message=ended.message if ended else _message(detail.get("message"), f"{sub}.message"),
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
    for i, raw in enumerate(_list(spec.get(field), f"spec.{field}")):
        item = _map(raw, f"spec.{field}[{i}]", required=True)
        name = _required_str(item.get("name"), f"spec.{field}[{i}].name")
        order.setdefault(name, i)
        policy = _str(item.get("restartPolicy"), f"spec.{field}[{i}].restartPolicy")
        if policy == "Always":
            sidecars.add(name)
    return order, frozenset(sidecars)


def _containers(status: Mapping[str, object], field: str, order: dict[str, int],
                sidecars: frozenset[str], times: list[float]) -> tuple[ContainerView, ...]:
    views = [_container(raw, f"status.{field}[{i}]", sidecars, times)
             for i, raw in enumerate(_list(status.get(field), f"status.{field}"))]
    if len(views) > 1:
        views.sort(key=lambda v: order.get(v.name, len(order)))
    return tuple(views)


def _labels(meta: Mapping[str, object]) -> tuple[str | None, WorkloadKind]:
    labels = _map(meta.get("labels"), "metadata.labels")
    run_field = f"metadata.labels[{RUN_ID_LABEL!r}]"
    run_id = _str(labels.get(RUN_ID_LABEL), run_field)
    if run_id is not None and RUN_ID_PATTERN.fullmatch(run_id) is None:
        raise MalformedPod(f"{run_field}: not a valid run id: {run_id[:80]!r}")
    kind_field = f"metadata.labels[{KIND_LABEL!r}]"
    kind_value = _str(labels.get(KIND_LABEL), kind_field) or WorkloadKind.JOB.value
    if kind_value not in _KINDS:
        raise MalformedPod(f"{kind_field}: unknown kind {kind_value[:40]!r} "
                           "(expected job, notebook or app)")
    return run_id, _KINDS[kind_value]


def project(obj: object) -> PodView:
    """Project a Pod object (as `json.loads` gives it) into a `PodView`.

    Raises `MalformedPod` for anything that is not a usable pod: missing or mistyped
    metadata, name or uid, wrong types anywhere it reads, unparseable timestamps, an
    invalid run id or kind label. Raises nothing else for JSON-shaped input."""
    pod = _map(obj, "pod", required=True)
    meta = _map(pod.get("metadata"), "metadata", required=True)
    spec = _map(pod.get("spec"), "spec")
    status = _map(pod.get("status"), "status")
    run_id, kind = _labels(meta)
    annotations = _map(meta.get("annotations"), "metadata.annotations")
    cancel = _str(annotations.get(CANCEL_ANNOTATION),
                  f"metadata.annotations[{CANCEL_ANNOTATION!r}]")
    trace = _str(annotations.get(TRACEPARENT_ANNOTATION),
                 f"metadata.annotations[{TRACEPARENT_ANNOTATION!r}]")
    created_at = _time(meta.get("creationTimestamp"), "metadata.creationTimestamp")
    if created_at is None:
        raise MalformedPod("metadata.creationTimestamp: required, got nothing")

    times: list[float] = []
    kept: dict[str, ConditionView] = {}
    for i, raw in enumerate(_list(status.get("conditions"), "status.conditions")):
        if (view := _condition(raw, f"status.conditions[{i}]", times)) is not None:
            kept[view.type] = view
    order, _ = _spec_order(spec, "containers")
    init_order, sidecars = _spec_order(spec, "initContainers")
    containers = _containers(status, "containerStatuses", order, frozenset(), times)
    init_containers = _containers(status, "initContainerStatuses", init_order, sidecars, times)

    return PodView(
        namespace=sys.intern(_required_str(meta.get("namespace"), "metadata.namespace")),
        name=_required_str(meta.get("name"), "metadata.name"),
        uid=_required_str(meta.get("uid"), "metadata.uid"),
        resource_version=_str(meta.get("resourceVersion"), "metadata.resourceVersion") or "",
        run_id=run_id,
        kind=kind,
        cancel_requested=cancel == "true",
        traceparent=_traceparent(trace),
        phase=_intern(status.get("phase"), "status.phase") or "Pending",
        reason=_intern(status.get("reason"), "status.reason"),
        message=_message(status.get("message"), "status.message"),
        created_at=created_at,
        start_time=_time(status.get("startTime"), "status.startTime"),
        deletion_timestamp=_time(meta.get("deletionTimestamp"), "metadata.deletionTimestamp"),
        deletion_grace_period_s=_int(meta.get("deletionGracePeriodSeconds"),
                                     "metadata.deletionGracePeriodSeconds", minimum=0),
        finalizers=_shared(tuple(
            sys.intern(_required_str(item, f"metadata.finalizers[{i}]"))
            for i, item in enumerate(_list(meta.get("finalizers"), "metadata.finalizers")))),
        restart_policy=_intern(spec.get("restartPolicy"), "spec.restartPolicy") or "Always",
        scheduled=kept.get("PodScheduled"),
        ready=kept.get("Ready"),
        disruption=kept.get("DisruptionTarget"),
        containers=containers,
        init_containers=init_containers,
        changed_at=max(times) if times else None,
    )
