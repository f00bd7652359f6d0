"""Who controls a Kubernetes object: its controller reference, shared by pods and Jobs.

Contract:
* `controller_of(meta)` is the `ownerReferences[]` entry with `controller: true` as an
  `Owner`, or None; it raises `MalformedPod` for a mistyped list, and for a reference
  that claims to be the controller without a kind, name or uid (others are not read).
* `pod_owner(meta)` is a pod's (kind, uid): its controller's, else the Job that the Job
  controller's uid label names (a pod orphaned from its Job keeps the label), else
  (None, None).
* Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from sniffer.podfields import read_bool, read_list, read_map, read_str, required_str

__all__ = ["JOB_UID_LABEL", "LEGACY_JOB_UID_LABEL", "Owner", "controller_of", "pod_owner"]

JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
LEGACY_JOB_UID_LABEL = "controller-uid"


@dataclass(frozen=True, slots=True)
class Owner:
    """An object's controller reference (`ownerReferences[]` with `controller: true`)."""

    kind: str
    name: str
    uid: str


def controller_of(meta: Mapping[str, object]) -> Owner | None:
    """The controller reference of an object's metadata, None if it has none.

    Raises `MalformedPod` for a mistyped ownerReferences list; a reference that lacks a
    kind, name or uid is malformed only if it claims to be the controller."""
    refs = read_list(meta.get("ownerReferences"), "metadata.ownerReferences")
    for i, raw in enumerate(refs):
        field = f"metadata.ownerReferences[{i}]"
        ref = read_map(raw, field, required=True)
        if not read_bool(ref.get("controller"), f"{field}.controller"):
            continue
        return Owner(sys.intern(required_str(ref.get("kind"), f"{field}.kind")),
                     required_str(ref.get("name"), f"{field}.name"),
                     required_str(ref.get("uid"), f"{field}.uid"))
    return None


def pod_owner(meta: Mapping[str, object]) -> tuple[str | None, str | None]:
    """(kind, uid) of the pod's controller, else of the Job its uid label names."""
    labels = read_map(meta.get("labels"), "metadata.labels")
    job_uid = None
    for label in (JOB_UID_LABEL, LEGACY_JOB_UID_LABEL):
        if job_uid := read_str(labels.get(label), f"metadata.labels[{label!r}]"):
            break
    owner = controller_of(meta)
    if owner is not None:
        return owner.kind, owner.uid
    return ("Job", job_uid) if job_uid else (None, None)
