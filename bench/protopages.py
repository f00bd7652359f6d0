"""The protobuf side of the decode benchmark: k8s.io/api's generated classes, the
API server's protobuf LIST pages, and the generated-classes decoder candidate.

Contract:

* `generated_core` builds the classes protoc generates from the Go module cache's
  generated.proto files once into the cache; nothing generated is committed.
* `proto_pages` gives the pods of `bench.pages.pages` as protobuf pages (the ``k8s\\0``
  envelope around a PodList): the templates converted once with the generated classes,
  then rendered per pod with values of the template's length (run id, uid, traceparent,
  timestamps; not resourceVersion), so the bytes stay valid protobuf. Go's encoder also
  writes a non-pointer field that is empty; these pages carry only what the JSON carries,
  so they are a little smaller than the server's.
* `UpbSlim` (candidate ``upb``) parses a page with the generated classes (the upb backend,
  in C) and fills the slim dicts `project` reads, with `sniffer.podproto`'s semantics.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.pages import BASE, STAMP, TEMPLATES, seconds
from sniffer.protowire import rfc3339

__all__ = ["K8S_MODULES", "UpbSlim", "generated_core", "proto_pages"]

K8S_MODULES = ("k8s.io/api@v0.36.3", "k8s.io/apimachinery@v0.36.3")  # the testbed's server
_PROTOS = ("k8s.io/api/core/v1/generated.proto",
           "k8s.io/apimachinery/pkg/api/resource/generated.proto",
           "k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto",
           "k8s.io/apimachinery/pkg/runtime/generated.proto",
           "k8s.io/apimachinery/pkg/runtime/schema/generated.proto",
           "k8s.io/apimachinery/pkg/util/intstr/generated.proto")


def generated_core() -> Any:
    """The Python module protoc generates from k8s.io/api core/v1's generated.proto (with
    its imports), built once into the cache from the Go module cache's .proto files, never
    committed. ImportError without protobuf and grpcio-tools; CalledProcessError or
    OSError without Go or the modules."""
    import importlib
    import shutil
    import tempfile

    from grpc_tools import protoc

    from testbed.build import cache_root
    root = cache_root().parent / "proto" / "+".join(m.replace("/", "_") for m in K8S_MODULES)
    if not (root / "k8s" / "io" / "api" / "core" / "v1" / "generated_pb2.py").is_file():
        out = subprocess.run(["go", "mod", "download", "-json", *K8S_MODULES], check=True,
                             capture_output=True, text=True, cwd="/").stdout
        dirs = [m.group(1) for m in re.finditer(r'"Dir": "([^"]+)"', out)]
        root.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".gen-", dir=root.parent))
        try:
            include = scratch / "include" / "k8s.io"
            include.mkdir(parents=True)
            for module, path in zip(K8S_MODULES, dirs, strict=True):
                (include / module.split("/")[1].split("@")[0]).symlink_to(path)
            gen = scratch / "out"
            gen.mkdir()
            if protoc.main(["protoc", f"-I{scratch / 'include'}", f"--python_out={gen}",
                            *_PROTOS]) != 0:
                raise RuntimeError("protoc failed on the k8s.io .proto files")
            shutil.rmtree(root, ignore_errors=True)
            gen.rename(root)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("k8s.io.api.core.v1.generated_pb2")


_META = "k8s.io.apimachinery.pkg.apis.meta.v1."


def _proto_shaped(value: Any, descriptor: Any) -> Any:
    """A Kubernetes JSON value reshaped for `json_format.ParseDict` into `descriptor`'s
    message: the types whose JSON is not their protobuf's (Time, Quantity, ...)."""
    full = descriptor.full_name
    if full in (_META + "Time", _META + "MicroTime"):
        return {"seconds": seconds(value.encode()[:19] + b"Z")}
    if full == "k8s.io.apimachinery.pkg.api.resource.Quantity":
        return {"string": value}
    if full == "k8s.io.apimachinery.pkg.util.intstr.IntOrString":
        return {"type": 0, "intVal": value} if isinstance(value, int) else {
            "type": 1, "strVal": value}
    if full == _META + "FieldsV1":
        import base64
        return {"Raw": base64.b64encode(json.dumps(value, separators=(",", ":")).encode())
                .decode()}
    out = {}
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key)
        if field is None or item is None:
            continue
        sub = field.message_type
        if sub is None:
            out[key] = item
        elif sub.GetOptions().map_entry:
            inner = sub.fields_by_name["value"].message_type
            out[key] = {k: _proto_shaped(v, inner) if inner else v for k, v in item.items()}
        elif field.is_repeated:
            out[key] = [_proto_shaped(v, sub) for v in item]
        else:
            out[key] = _proto_shaped(item, sub)
    return out


def _pb_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _pb_varint(number << 3 | 2) + _pb_varint(len(payload)) + payload


def _pb_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _ProtoTemplate:
    """One captured pod as protobuf byte segments between its per-pod values, each of the
    template's length (so no enclosing length changes)."""

    def __init__(self, pod: dict[str, Any], core: Any) -> None:
        from google.protobuf import json_format
        meta = pod["metadata"]
        message = json_format.ParseDict(_proto_shaped(pod, core.Pod.DESCRIPTOR), core.Pod())
        data = message.SerializeToString()
        self.run = meta["labels"]["sniffer.io/run-id"]
        stamps = sorted({seconds(m.group(1)) for m in STAMP.finditer(
            json.dumps(pod).encode())})
        literal: dict[bytes, str | int] = {
            self.run.encode(): "run", meta["uid"].encode(): "uid",
            meta["annotations"]["sniffer.io/traceparent"].encode(): "trace"}
        for s in stamps:  # a Time is `06 08 <5-byte varint of seconds>`
            literal[b"\x06\x08" + _pb_varint(s)] = int(s - stamps[0])
        pattern = re.compile(b"|".join(map(re.escape, literal)))
        self.segments: list[bytes] = []
        self.slots: list[str | int] = []
        last = 0
        for m in pattern.finditer(data):
            self.segments.append(data[last:m.start()])
            self.slots.append(literal[m.group(0)])
            last = m.end()
        self.segments.append(data[last:])

    def render(self, values: dict[str, bytes], now: int) -> bytes:
        out = [self.segments[0]]
        for slot, segment in zip(self.slots, self.segments[1:], strict=True):
            out.append(values[slot] if isinstance(slot, str)
                       else b"\x06\x08" + _pb_varint(now + slot))
            out.append(segment)
        return _pb_field(2, b"".join(out))  # PodList.items


def proto_pages(pods: int, page: int, seed: int = 7) -> Iterator[bytes]:
    """The pods of `pages`, as the API server's protobuf LIST pages."""
    core = generated_core()
    doc = json.loads(TEMPLATES.read_text())
    finished = [_ProtoTemplate(p, core) for p in doc["finished"]]
    running = [_ProtoTemplate(p, core) for p in doc["running"]]
    rng = random.Random(seed)
    for start in range(0, pods, page):
        items = []
        for i in range(start, min(pods, start + page)):
            t = (running if i % 10 == 9 else finished)[i // 10 % 4]
            items.append(t.render({
                "run": (b"b%0*d" % (len(t.run) - 1, i)),
                "uid": str(uuid.UUID(int=rng.getrandbits(128))).encode(),
                "trace": b"00-%032x-%016x-01" % (rng.getrandbits(128), rng.getrandbits(64)),
            }, BASE + i // 5))
        more = start + page < pods
        list_meta = _pb_field(1, b"") + _pb_field(2, b"999999") + _pb_field(
            3, b"token-%d" % (start + page) if more else b"")
        pod_list = _pb_field(1, list_meta) + b"".join(items)
        unknown = (_pb_field(1, _pb_field(1, b"v1") + _pb_field(2, b"PodList")) +
                   _pb_field(2, pod_list) + _pb_field(3, b"") + _pb_field(4, b""))
        yield b"k8s\x00" + unknown


def _when(t: Any) -> str | None:
    return rfc3339(t.seconds) if t.HasField("seconds") else None


def _set(out: dict[str, Any], message: Any, names: tuple[str, ...]) -> None:
    """The non-empty strings among `names` (empty reads as absent, as in podproto)."""
    for name in names:
        if v := getattr(message, name):
            out[name] = v


def _detail(d: Any, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kind != "running":
        _set(out, d, ("reason", "message"))
    if kind == "terminated":
        out["exitCode"] = d.exitCode
        out["finishedAt"] = _when(d.finishedAt)
    if kind != "waiting" and d.HasField("startedAt"):
        out["startedAt"] = _when(d.startedAt)
    return out


def _state(s: Any) -> dict[str, Any]:
    return {fd.name: _detail(v, fd.name) for fd, v in s.ListFields()}


def _container_status(c: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"restartCount": c.restartCount, "state": _state(c.state),
                           "lastState": _state(c.lastState)}
    _set(out, c, ("name",))
    if c.HasField("started"):
        out["started"] = c.started
    return out


def _upb_metadata(m: Any) -> dict[str, Any]:
    from sniffer.podview import (
        CANCEL_ANNOTATION,
        KIND_LABEL,
        RUN_ID_LABEL,
        TRACEPARENT_ANNOTATION,
    )
    meta: dict[str, Any] = {"creationTimestamp": _when(m.creationTimestamp), "name": m.name,
                            "namespace": m.namespace, "uid": m.uid,
                            "resourceVersion": m.resourceVersion}
    if m.HasField("deletionTimestamp"):
        meta["deletionTimestamp"] = _when(m.deletionTimestamp)
    if m.HasField("deletionGracePeriodSeconds"):
        meta["deletionGracePeriodSeconds"] = m.deletionGracePeriodSeconds
    labels, annotations = m.labels, m.annotations
    meta["labels"] = {k: labels[k] for k in (RUN_ID_LABEL, KIND_LABEL) if k in labels}
    meta["annotations"] = {k: annotations[k] for k in (
        CANCEL_ANNOTATION, TRACEPARENT_ANNOTATION) if k in annotations}
    meta["finalizers"] = list(m.finalizers)
    return meta


def _upb_status(st: Any) -> dict[str, Any]:
    status: dict[str, Any] = {}
    _set(status, st, ("phase", "message", "reason"))
    if st.HasField("startTime"):
        status["startTime"] = _when(st.startTime)
    conditions = []
    for c in st.conditions:
        cond: dict[str, Any] = {"lastTransitionTime": _when(c.lastTransitionTime),
                                "type": c.type, "status": c.status}
        if v := c.reason:
            cond["reason"] = v
        if v := c.message:
            cond["message"] = v
        conditions.append(cond)
    status["conditions"] = conditions
    status["containerStatuses"] = [_container_status(c) for c in st.containerStatuses]
    status["initContainerStatuses"] = [_container_status(c) for c in st.initContainerStatuses]
    return status


class UpbSlim:
    """Candidate (a): the generated classes parse the page (upb, in C), then the slim
    dicts `project` reads are filled from the messages, with `sniffer.podproto`'s
    semantics (empty string = absent, empty Time = null, seconds only)."""

    def __init__(self) -> None:
        import importlib
        self.core = generated_core()
        self.runtime = importlib.import_module("k8s.io.apimachinery.pkg.runtime.generated_pb2")

    def decode(self, body: bytes) -> list[Any]:
        unknown = self.runtime.Unknown.FromString(body[4:])
        return [self.pod(p) for p in self.core.PodList.FromString(unknown.raw).items]

    @staticmethod
    def pod(p: Any) -> dict[str, Any]:
        spec = {"containers": [{"name": c.name} for c in p.spec.containers],
                "initContainers": [{"name": c.name, "restartPolicy": c.restartPolicy}
                                   for c in p.spec.initContainers]}
        return {"metadata": _upb_metadata(p.metadata), "spec": spec,
                "status": _upb_status(p.status)}
