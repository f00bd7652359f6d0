"""Pods off the wire in the API server's protobuf encoding, decoded straight into slim dicts.

Contract:

* `proto_list(body)`, `proto_pod(body)` and `proto_event(frame)` decode the bytes of an
  ``application/vnd.kubernetes.protobuf`` LIST response, GET response and watch frame
  (one length-delimited frame of a ``;stream=watch`` response, without its length: see
  `sniffer.protowire.FrameSplitter`) into the dicts `sniffer.podwire` gives for the JSON
  of the same object: only the fields `sniffer.podview.project` reads, every other field
  skipped, never materialised (a main container of the spec carries only its name: its
  restartPolicy is read for init containers alone).
* For any pod the API server sends, `project(proto_pod(pb))` equals
  `project(slim_pod(json))`, value for value (tests/test_podproto.py checks it against a
  real kube-apiserver). The values are what Go's JSON encoding of the decoded object
  would carry (`sniffer.protowire.decode`); every string field `project` reads is
  ``omitempty`` or required non-empty, so an empty one reads as absent as in JSON, and a
  missing ``exitCode`` reads as 0 (never omitted in JSON).
* Bytes that are not that (a bad envelope, another kind, a truncated or overlong field, a
  known field with the wrong wire type, an unknown event type) raise
  `sniffer.protowire.ProtoError` naming what was wrong; for any bytes nothing else
  escapes (tests/test_fuzz_proto.py). Judging the values (a bad run id, a missing name)
  is left to `project`, as on the JSON path.
* ERROR events carry their Status as ``{"kind": "Status", "code", "reason", "message"}``
  so the caller judges them as it judges JSON ones; `proto_status(body)` reads the
  Status of an error answer (the server encodes errors as it would have the object).
* Pure: no I/O, no logging.
"""

from __future__ import annotations

from typing import Any

from sniffer.ownership import JOB_UID_LABEL, LEGACY_JOB_UID_LABEL
from sniffer.podview import (
    CANCEL_ANNOTATION,
    INITIAL_EVENTS_END_ANNOTATION,
    KIND_LABEL,
    RUN_ID_LABEL,
    TRACEPARENT_ANNOTATION,
)
from sniffer.protowire import (
    BOOL,
    INT,
    LEN,
    MAP,
    MSG,
    MSGS,
    NAME,
    STR,
    STRS,
    TIME,
    VARINT,
    ProtoError,
    Table,
    decode,
    field,
    raw_field,
    strict,
    unwrap,
    with_defaults,
)

__all__ = ["proto_event", "proto_list", "proto_pod", "proto_status"]

_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})

# --- the schema: for each message, the fields kept ------------------------------------
# Field numbers are k8s.io/api core/v1 and apimachinery meta/v1 generated.proto (v0.36).

_WAITING: Table = {field(1, LEN): ("reason", STR, None), field(2, LEN): ("message", STR, None)}
_RUNNING: Table = {field(1, LEN): ("startedAt", TIME, None)}
_TERMINATED: Table = {
    field(1, VARINT): ("exitCode", INT, None), field(3, LEN): ("reason", STR, None),
    field(4, LEN): ("message", STR, None), field(5, LEN): ("startedAt", TIME, None),
    field(6, LEN): ("finishedAt", TIME, None)}
_STATE: Table = {field(1, LEN): ("waiting", MSG, _WAITING),
                 field(2, LEN): ("running", MSG, _RUNNING),
                 field(3, LEN): ("terminated", MSG, _TERMINATED)}
_CONTAINER_STATUS: Table = {
    field(1, LEN): ("name", STR, None), field(2, LEN): ("state", MSG, _STATE),
    field(3, LEN): ("lastState", MSG, _STATE), field(5, VARINT): ("restartCount", INT, None),
    field(9, VARINT): ("started", BOOL, None)}
_CONDITION: Table = {
    field(1, LEN): ("type", STR, None), field(2, LEN): ("status", STR, None),
    field(4, LEN): ("lastTransitionTime", TIME, None), field(5, LEN): ("reason", STR, None),
    field(6, LEN): ("message", STR, None)}
_STATUS: Table = {
    field(1, LEN): ("phase", STR, None), field(2, LEN): ("conditions", MSGS, _CONDITION),
    field(3, LEN): ("message", STR, None), field(4, LEN): ("reason", STR, None),
    field(7, LEN): ("startTime", TIME, None),
    field(8, LEN): ("containerStatuses", MSGS, _CONTAINER_STATUS),
    field(10, LEN): ("initContainerStatuses", MSGS, _CONTAINER_STATUS)}
_CONTAINER: Table = {field(1, LEN): ("name", STR, None),
                     field(24, LEN): ("restartPolicy", STR, None)}
_SPEC: Table = {field(2, LEN): ("containers", NAME, None),
                field(20, LEN): ("initContainers", MSGS, _CONTAINER)}
_OWNER_REFERENCE: Table = {
    field(1, LEN): ("kind", STR, None), field(3, LEN): ("name", STR, None),
    field(4, LEN): ("uid", STR, None), field(6, VARINT): ("controller", BOOL, None)}
_METADATA: Table = {
    field(1, LEN): ("name", STR, None), field(3, LEN): ("namespace", STR, None),
    field(5, LEN): ("uid", STR, None), field(6, LEN): ("resourceVersion", STR, None),
    field(8, LEN): ("creationTimestamp", TIME, None),
    field(9, LEN): ("deletionTimestamp", TIME, None),
    field(10, VARINT): ("deletionGracePeriodSeconds", INT, None),
    field(11, LEN): ("labels", MAP, frozenset({RUN_ID_LABEL.encode(), KIND_LABEL.encode(),
                                               JOB_UID_LABEL.encode(),
                                               LEGACY_JOB_UID_LABEL.encode()})),
    field(12, LEN): ("annotations", MAP, frozenset({CANCEL_ANNOTATION.encode(),
                                                    TRACEPARENT_ANNOTATION.encode(),
                                                    INITIAL_EVENTS_END_ANNOTATION.encode()})),
    field(13, LEN): ("ownerReferences", MSGS, _OWNER_REFERENCE),
    field(14, LEN): ("finalizers", STRS, None)}
_POD: Table = {field(1, LEN): ("metadata", MSG, _METADATA), field(2, LEN): ("spec", MSG, _SPEC),
               field(3, LEN): ("status", MSG, _STATUS)}
_LIST_META: Table = {field(2, LEN): ("resourceVersion", STR, None),
                     field(3, LEN): ("continue", STR, None)}
_POD_LIST: Table = {field(1, LEN): ("metadata", MSG, _LIST_META),
                    field(2, LEN): ("items", MSGS, _POD)}
_STATUS_OBJECT: Table = {  # metav1.Status, the object of an ERROR event
    field(3, LEN): ("message", STR, None), field(4, LEN): ("reason", STR, None),
    field(6, VARINT): ("code", INT, None)}
_WATCH_EVENT: Table = {field(1, LEN): ("type", STR, None)}

strict(_WAITING, _RUNNING, _TERMINATED, _STATE, _CONTAINER_STATUS, _CONDITION, _STATUS,
       _CONTAINER, _SPEC, _OWNER_REFERENCE, _METADATA, _POD, _LIST_META, _POD_LIST,
       _STATUS_OBJECT, _WATCH_EVENT)
# Go zero values JSON never omits: a terminated state always has its exit code.
with_defaults(_TERMINATED, ("exitCode", 0))


_STATUS_KINDS = frozenset({"Status"})
_POD_KINDS = frozenset({"Pod"})
_LIST_KINDS = frozenset({"PodList"})
_EVENT_KINDS = frozenset({"Pod", "Status"})


def proto_list(body: bytes) -> dict[str, Any]:
    """A LIST response: ``{"metadata": {resourceVersion, continue}, "items": [pods]}``."""
    _, raw = unwrap(body, _LIST_KINDS)
    return decode(raw, 0, len(raw), _POD_LIST)


def proto_pod(body: bytes) -> dict[str, Any]:
    """One pod (a GET response), slim."""
    _, raw = unwrap(body, _POD_KINDS)
    return decode(raw, 0, len(raw), _POD)


def proto_status(body: bytes) -> dict[str, Any]:
    """An error answer's metav1.Status: ``{"code", "reason", "message"}`` (those present)."""
    _, raw = unwrap(body, _STATUS_KINDS)
    return decode(raw, 0, len(raw), _STATUS_OBJECT)


def proto_event(frame: bytes) -> dict[str, Any]:
    """One watch frame: a metav1.WatchEvent (not enveloped) whose RawExtension holds the
    enveloped Pod (or, for ERROR, Status): ``{"type": ..., "object": {...}}``."""
    head = decode(frame, 0, len(frame), _WATCH_EVENT)
    kind = head.get("type", "")
    if kind not in _EVENT_TYPES:
        raise ProtoError(f"unknown watch event type {kind[:40]!r}")
    extension = raw_field(frame, 0, len(frame), 2)
    raw = raw_field(extension, 0, len(extension), 1)
    obj_kind, obj = unwrap(raw, _EVENT_KINDS)
    if obj_kind == "Status":
        status = decode(obj, 0, len(obj), _STATUS_OBJECT)
        status["kind"] = "Status"
        if kind != "ERROR":
            raise ProtoError(f"a {kind} event carries a Status, not a Pod")
        return {"type": kind, "object": status}
    if kind == "ERROR":
        raise ProtoError("an ERROR event carries a Pod, not a Status")
    return {"type": kind, "object": decode(obj, 0, len(obj), _POD)}
