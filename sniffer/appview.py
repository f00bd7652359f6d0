"""The projection of a raw apps/v1 Deployment or StatefulSet into the small record Sniffer keeps.

An app or notebook the platform runs under a controller (replicas 1, the run id label
`sniffer.io/run-id` on the controller and its pod template) is one run: the controller
stays, its pods come and go. This module keeps what `sniffer.apps.derive_app` reads.

Contract:

* `project_app(obj, controller=)` returns an `AppView` or raises `MalformedApp` naming the
  bad field; for any JSON-shaped input (whatever `json.loads` can return) it raises
  nothing else. `MalformedApp` is a `MalformedPod`, so every caller that logs, counts
  and skips a bad pod does the same for a bad controller without a second except clause.
* `controller` is the object's kind, "Deployment" or "StatefulSet" (`APP_CONTROLLERS`):
  items of a LIST carry no kind, so the caller, which knows what it listed, names it.
* An `AppView` is immutable, hashable and compares by value.
* Times are float seconds since the Unix epoch (UTC); JSON null and a missing field are
  None. `spec.replicas` absent reads as 1 (the API server's default); status counts
  absent read as 0 (the controllers omit zero counts).
* Of the conditions only the ones that decide a run are kept (`KEPT_APP_CONDITIONS`), the
  last of each type if the status repeats one, in status order.
* Labels and annotations mean what they mean on a pod: `sniffer.io/run-id`,
  `sniffer.io/kind`, `sniffer.io/cancel-requested`, `sniffer.io/traceparent`.
* Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from sniffer.conditions import Condition, read_conditions, read_count
from sniffer.podfields import (
    MalformedPod,
    read_int,
    read_list,
    read_map,
    read_str,
    read_time,
    required_str,
    shared,
    traceparent,
)
from sniffer.podview import (
    CANCEL_ANNOTATION,
    TRACEPARENT_ANNOTATION,
    WorkloadKind,
    run_labels,
)

__all__ = ["APP_CONTROLLERS", "DEPLOYMENT", "KEPT_APP_CONDITIONS", "STATEFULSET",
           "AppView", "MalformedApp", "project_app"]

DEPLOYMENT = "Deployment"
STATEFULSET = "StatefulSet"
APP_CONTROLLERS = (DEPLOYMENT, STATEFULSET)
KEPT_APP_CONDITIONS = ("Progressing", "Available", "ReplicaFailure")


class MalformedApp(MalformedPod):
    """The object is not a controller Sniffer can use; `reason` names the bad field."""


@dataclass(frozen=True, slots=True)
class AppView:
    """The kept projection of one Deployment or StatefulSet.

    `key` is "namespace/name". `replicas` is the spec's (1 when absent); `ready`,
    `available` and `current` are status.readyReplicas, availableReplicas and replicas
    (0 when absent). `conditions` holds the kept conditions; `condition(type)` finds one."""

    controller: str
    namespace: str
    key: str
    uid: str
    resource_version: str
    run_id: str | None
    kind: WorkloadKind
    cancel_requested: bool
    traceparent: str | None
    created_at: float
    replicas: int
    ready: int
    available: int
    current: int
    conditions: tuple[Condition, ...]
    deletion_timestamp: float | None
    finalizers: tuple[str, ...]
    final_state_unknown: bool = False
    """History, not projection: a relist found the controller gone and no event showed
    its deletion, so this view is the last one seen, not its end. Set by the store on
    such a tombstone; `project_app` leaves it False."""

    @property
    def name(self) -> str:
        """metadata.name (cut from `key`)."""
        return self.key[len(self.namespace) + 1:]

    def condition(self, type_: str) -> Condition | None:
        """The kept condition of that type, or None."""
        for cond in self.conditions:
            if cond.type == type_:
                return cond
        return None


def project_app(obj: object, *, controller: str) -> AppView:
    """Project a Deployment or StatefulSet (as `json.loads` gives it) into an `AppView`.

    Raises `MalformedApp` for anything that is not a usable controller: missing or
    mistyped metadata, name or uid, wrong types anywhere it reads, unparseable
    timestamps, negative counts, an invalid run id or kind label. Raises nothing else.
    Caller duty: `controller` is one of `APP_CONTROLLERS`."""
    try:
        return _project(obj, controller)
    except MalformedApp:
        raise
    except MalformedPod as bad:  # the shared field readers name the field; say "app"
        raise MalformedApp(bad.reason) from None


def _project(obj: object, controller: str) -> AppView:
    app = read_map(obj, controller.lower(), required=True)
    meta = read_map(app.get("metadata"), "metadata", required=True)
    spec = read_map(app.get("spec"), "spec")
    status = read_map(app.get("status"), "status")
    run_id, kind = run_labels(meta, MalformedApp)
    annotations = read_map(meta.get("annotations"), "metadata.annotations")
    cancel = read_str(annotations.get(CANCEL_ANNOTATION),
                      f"metadata.annotations[{CANCEL_ANNOTATION!r}]")
    trace = read_str(annotations.get(TRACEPARENT_ANNOTATION),
                     f"metadata.annotations[{TRACEPARENT_ANNOTATION!r}]")
    created_at = read_time(meta.get("creationTimestamp"), "metadata.creationTimestamp")
    if created_at is None:
        raise MalformedApp("metadata.creationTimestamp: required, got nothing")
    namespace = sys.intern(required_str(meta.get("namespace"), "metadata.namespace"))
    name = required_str(meta.get("name"), "metadata.name")
    replicas = read_int(spec.get("replicas"), "spec.replicas", minimum=0)
    return AppView(
        controller=sys.intern(controller),
        namespace=namespace,
        key=f"{namespace}/{name}",
        uid=required_str(meta.get("uid"), "metadata.uid"),
        resource_version=read_str(meta.get("resourceVersion"), "metadata.resourceVersion") or "",
        run_id=run_id,
        kind=kind,
        cancel_requested=cancel == "true",
        traceparent=traceparent(trace),
        created_at=created_at,
        replicas=1 if replicas is None else replicas,
        ready=read_count(status, "readyReplicas"),
        available=read_count(status, "availableReplicas"),
        current=read_count(status, "replicas"),
        conditions=read_conditions(status, KEPT_APP_CONDITIONS),
        deletion_timestamp=read_time(meta.get("deletionTimestamp"), "metadata.deletionTimestamp"),
        finalizers=shared(tuple(
            sys.intern(required_str(item, f"metadata.finalizers[{i}]"))
            for i, item in enumerate(read_list(meta.get("finalizers"), "metadata.finalizers")))),
    )
