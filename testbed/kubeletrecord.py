"""Recorded kubelet fixtures: the pod versions a real node wrote for one lifecycle, trimmed
to what Sniffer reads, as JSON under ``tests/fixtures/kubelet/``.

Contract:

* `trim(pod)` keeps what `sniffer.podview.project` reads (metadata name, namespace, uid,
  labels, the cancel annotation, creation and deletion times, finalizers; the spec's
  container names, images and restart policies, restartPolicy, nodeName,
  activeDeadlineSeconds; the whole status but pod IPs) and nothing else: no tokens, no
  managed fields.
* `fixture(lifecycle, history)` is the JSON document of one recording: the lifecycle's
  name and description, its expected platform outcome, the Kubernetes version, and every
  version of the pod in watch order (consecutive versions with an equal trimmed status and
  deletion state are one: only a change the kubelet or a controller made shows).
* `write(directory, document)` stores it as ``<lifecycle>.json`` (sorted keys, newline at
  the end, so a re-recording diffs cleanly); `load(path)` reads one back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sniffer.podview import CANCEL_ANNOTATION
from testbed.realcatalogue import RealLifecycle

JSON = dict[str, Any]
KUBERNETES_VERSION = "v1.36.3"
"""The kubelet the recordings came from (the testbed's k8s.io/kubernetes module)."""
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "kubelet"

_META = ("name", "namespace", "uid", "labels", "creationTimestamp", "deletionTimestamp",
         "deletionGracePeriodSeconds", "finalizers")
_SPEC = ("restartPolicy", "nodeName", "activeDeadlineSeconds")
_CONTAINER = ("name", "image", "restartPolicy")
_DROPPED_STATUS = ("podIP", "podIPs", "hostIP", "hostIPs")


def trim(pod: JSON) -> JSON:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    out_meta = {k: meta[k] for k in _META if k in meta}
    annotations = meta.get("annotations") or {}
    if CANCEL_ANNOTATION in annotations:
        out_meta["annotations"] = {CANCEL_ANNOTATION: annotations[CANCEL_ANNOTATION]}
    out_spec: JSON = {k: spec[k] for k in _SPEC if k in spec}
    for field in ("initContainers", "containers"):
        if spec.get(field):
            out_spec[field] = [{k: c[k] for k in _CONTAINER if k in c} for c in spec[field]]
    status = {k: v for k, v in (pod.get("status") or {}).items() if k not in _DROPPED_STATUS}
    return {"metadata": out_meta, "spec": out_spec, "status": status}


def _same(a: JSON, b: JSON) -> bool:
    keys = ("deletionTimestamp", "deletionGracePeriodSeconds", "finalizers", "annotations")
    return a["status"] == b["status"] and all(
        a["metadata"].get(k) == b["metadata"].get(k) for k in keys)


def fixture(lifecycle: RealLifecycle, history: list[tuple[str, JSON]]) -> JSON:
    events: list[JSON] = []
    for kind, pod in history:
        trimmed = trim(pod)
        if events and kind != "DELETED" and _same(events[-1]["pod"], trimmed):
            continue
        events.append({"type": kind, "pod": trimmed})
    return {"lifecycle": lifecycle.name, "description": lifecycle.description,
            "expected": lifecycle.outcome.to_json(), "kubernetes": KUBERNETES_VERSION,
            "events": events}


def write(directory: Path, document: JSON) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{document['lifecycle']}.json"
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return path


def load(path: Path) -> JSON:
    document: JSON = json.loads(path.read_text())
    return document
