"""Pods off the wire: LIST pages, single-pod GETs and watch lines decoded straight into
slim dicts.

Contract:

* `slim_list(body)`, `slim_pod(body)` and `slim_event(line)` decode JSON bytes into
  plain dicts and lists holding only the fields `sniffer.podview.project` reads (the
  rest of each pod: managedFields, the spec beyond container names, images, IDs, ... is
  skipped, never materialised), or return None when this schema cannot decode the
  bytes. They raise nothing.
* For any bytes both decode, `project(slim)` equals `project(json.loads(bytes))`, value
  for value (tests/test_fuzz_watch.py checks it on mutated real pods): the schema only
  drops keys; it never converts, defaults or validates a value `project` reads (those
  are typed `Any` here and judged by `project`, which names the bad field).
* None means "decode it the general way" (`json.loads`): what this schema refuses is
  non-UTF-8 or non-standard JSON (NaN, BOM, lone surrogates), an object where it expects
  an array or the reverse, and ERROR events (whose Status object it would strip). The
  caller's general path then accepts, rejects and reports exactly as before.
* Pure: no I/O, no logging.
"""

from __future__ import annotations

from typing import Any, TypedDict

import msgspec

# Each TypedDict lists the keys `project` reads at that level (total=False: any may be
# absent). Nested levels are typed `X | None` so JSON null decodes as `project` expects.

# (The label and annotation keys are spelt out: a TypedDict takes literals only; the
# tests check they are sniffer.podview's.)
Labels = TypedDict("Labels", {"sniffer.io/run-id": Any, "sniffer.io/kind": Any,
                              "batch.kubernetes.io/controller-uid": Any,
                              "controller-uid": Any}, total=False)
Annotations = TypedDict("Annotations", {"sniffer.io/cancel-requested": Any,
                                        "sniffer.io/traceparent": Any,
                                        "k8s.io/initial-events-end": Any}, total=False)


class OwnerReference(TypedDict, total=False):
    kind: Any
    name: Any
    uid: Any
    controller: Any


class Metadata(TypedDict, total=False):
    name: Any
    namespace: Any
    uid: Any
    resourceVersion: Any
    creationTimestamp: Any
    deletionTimestamp: Any
    deletionGracePeriodSeconds: Any
    labels: Labels | None
    annotations: Annotations | None
    ownerReferences: list[OwnerReference] | None
    finalizers: Any


class SpecContainer(TypedDict, total=False):
    name: Any
    restartPolicy: Any


class Spec(TypedDict, total=False):
    containers: list[SpecContainer] | None
    initContainers: list[SpecContainer] | None


class StateDetail(TypedDict, total=False):
    exitCode: Any
    reason: Any
    message: Any
    startedAt: Any
    finishedAt: Any


class ContainerState(TypedDict, total=False):
    waiting: StateDetail | None
    running: StateDetail | None
    terminated: StateDetail | None


class LastState(TypedDict, total=False):
    terminated: StateDetail | None


class ContainerStatus(TypedDict, total=False):
    name: Any
    started: Any
    restartCount: Any
    state: ContainerState | None
    lastState: LastState | None


class Condition(TypedDict, total=False):
    type: Any
    status: Any
    reason: Any
    message: Any
    lastTransitionTime: Any


class Status(TypedDict, total=False):
    phase: Any
    reason: Any
    message: Any
    startTime: Any
    conditions: list[Condition] | None
    containerStatuses: list[ContainerStatus] | None
    initContainerStatuses: list[ContainerStatus] | None


class Pod(TypedDict, total=False):
    metadata: Metadata | None
    spec: Spec | None
    status: Status | None


class PodList(TypedDict, total=False):
    metadata: Any
    items: list[Pod] | None


class Event(TypedDict, total=False):
    type: Any
    object: Pod


_LIST = msgspec.json.Decoder(PodList)
_POD = msgspec.json.Decoder(Pod)
_EVENT = msgspec.json.Decoder(Event)
# What msgspec raises for bytes it will not decode into the schema: DecodeError and
# ValidationError (MsgspecError), UnicodeDecodeError (a ValueError), deep nesting.
_REFUSED = (msgspec.MsgspecError, ValueError, RecursionError)


def slim_list(body: bytes) -> dict[str, Any] | None:
    """A LIST response with slim items, or None: decode it the general way."""
    try:
        return _LIST.decode(body)  # type: ignore[return-value]
    except _REFUSED:
        return None


def slim_pod(body: bytes) -> dict[str, Any] | None:
    """One pod (a GET response), slim, or None: decode it the general way."""
    try:
        return _POD.decode(body)  # type: ignore[return-value]
    except _REFUSED:
        return None


def slim_event(line: bytes) -> dict[str, Any] | None:
    """A watch event with a slim object, or None: decode it the general way (always for
    ERROR events, whose Status object the pod schema would strip)."""
    try:
        event: dict[str, Any] = _EVENT.decode(line)  # type: ignore[assignment]
    except _REFUSED:
        return None
    return None if event.get("type") == "ERROR" else event
