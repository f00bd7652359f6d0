"""``python -m bench.decode``: decoding and projecting a 100k-pod LIST, and memory per pod.

Contract:

* The pods are the templates in bench/decode_pods.json (captured from the testbed's
  kube-apiserver: managedFields, defaulted spec, kubelet-shaped status), made unique per
  pod (name, run id, uid, resourceVersion, traceparent) with timestamps advancing one
  second per five pods, 90 % finished as in the cold-start scenario; served as LIST pages
  of `--page` pods (the reflector's page size). The same seed gives the same bytes.
* Speed: for each decoder, the CPU time (`time.process_time`) to turn every page's bytes
  into `PodView`s, split into decoding and projecting; the best of `--repeat` passes (the
  machine is shared: the minimum is the least disturbed), the decoders' passes taken in
  turn so that a busy spell falls on all of them. Pages are built before timing.
* Memory (`--memory`): for each decoder, in a fresh child process, the pods are decoded
  page by page and kept in a dict keyed by `PodView.key` (as the store keeps them); the
  report gives RSS growth per pod and, from tracemalloc, the heap the kept views hold.
* Decoders: ``stdlib`` (json.loads), ``orjson``, ``msgspec`` (untyped, like json.loads),
  and ``sniffer`` (what `sniffer.kubedecode.decode_pod_list` does for the reflector) read the
  JSON pages; ``upb`` (classes protoc generates from k8s.io/api's generated.proto, on
  PyPI protobuf's upb backend, read into the slim dicts) and ``podproto`` (the skipping
  decoder, `sniffer.podproto`) read the same pods as the API server's protobuf pages
  (the ``k8s\\0`` envelope around a PodList). One that is not installed is reported as
  such, never an error.
* The protobuf pages are the same templates converted once with the generated classes,
  then rendered per pod like the JSON ones, with values of the template's length (run id,
  uid, traceparent, timestamps; not resourceVersion), so the bytes stay valid protobuf.
  Go's encoder also writes a non-pointer field that is empty; these pages carry only
  what the JSON carries, so they are a little smaller than the server's.
"""

from __future__ import annotations

import argparse
import calendar
import gc
import importlib
import json
import os
import random
import re
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sniffer.podview import PodView, project
from sniffer.protowire import rfc3339

TEMPLATES = Path(__file__).with_name("decode_pods.json")
DECODERS = ("stdlib", "orjson", "msgspec", "sniffer", "upb", "podproto")
PROTOBUF = frozenset({"upb", "podproto"})  # decoders of the protobuf pages
_STAMP = re.compile(rb'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"')
_BASE = 1_767_225_600  # 2026-01-01T00:00:00Z

Decoder = Callable[[bytes], list[Any]]


def _decoder(name: str) -> Decoder | None:
    """Page bytes → the list of items `project` takes; None if not installed."""
    if name in PROTOBUF:
        return _protobuf_decoder(name)
    if name == "stdlib":
        return lambda body: json.loads(body)["items"]
    if name == "orjson":
        try:
            import orjson
        except ImportError:
            return None
        return lambda body: orjson.loads(body)["items"]
    if name == "msgspec":
        try:
            import msgspec
        except ImportError:
            return None
        return lambda body: msgspec.json.decode(body)["items"]
    try:  # where it lives now; an older tree kept it in sniffer.kube
        kube = importlib.import_module("sniffer.kubedecode")
    except ImportError:
        kube = importlib.import_module("sniffer.kube")
    decode = getattr(kube, "decode_pod_list", None)
    if decode is None:  # a tree from before it existed decoded with the stdlib
        return lambda body: json.loads(body)["items"]
    return lambda body: decode(body, slim=True).items


def _protobuf_decoder(name: str) -> Decoder | None:
    if name == "podproto":
        from sniffer.podproto import proto_list
        return lambda body: proto_list(body)["items"]
    try:
        return _UpbSlim().decode
    except (ImportError, RuntimeError, OSError, subprocess.CalledProcessError):
        return None


class _Template:
    """One captured pod as byte segments between its per-pod values."""

    def __init__(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        text = json.dumps(pod, separators=(",", ":")).encode()
        literal = {meta["labels"]["sniffer.io/run-id"].encode(): "run",
                   meta["uid"].encode(): "uid",
                   f'"resourceVersion":"{meta["resourceVersion"]}"'.encode(): "rv",
                   meta["annotations"]["sniffer.io/traceparent"].encode(): "trace"}
        pattern = re.compile(b"|".join([_STAMP.pattern, *map(re.escape, literal)]))
        stamps = [_seconds(m.group(1)) for m in _STAMP.finditer(text)]
        self.segments: list[bytes] = []
        self.slots: list[str | int] = []  # a value name, or a timestamp's offset
        last = 0
        for m in pattern.finditer(text):
            self.segments.append(text[last:m.start()])
            self.slots.append(int(_seconds(m.group(1)) - min(stamps)) if m.group(1)
                              else literal[m.group(0)])
            last = m.end()
        self.segments.append(text[last:])

    def render(self, values: dict[str, bytes], now: int) -> bytes:
        out = [self.segments[0]]
        for slot, segment in zip(self.slots, self.segments[1:], strict=True):
            out.append(values[slot] if isinstance(slot, str) else _stamp(now + slot))
            out.append(segment)
        return b"".join(out)


def _seconds(stamp: bytes) -> int:
    return int(calendar.timegm(time.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%SZ")))


def _stamp(seconds: int) -> bytes:
    return time.strftime('"%Y-%m-%dT%H:%M:%SZ"', time.gmtime(seconds)).encode()


def pages(pods: int, page: int, seed: int = 7) -> Iterator[bytes]:
    """The LIST pages of a namespace of `pods` pods, as the API server sends them."""
    doc = json.loads(TEMPLATES.read_text())
    finished = [_Template(p) for p in doc["finished"]]
    running = [_Template(p) for p in doc["running"]]
    rng = random.Random(seed)
    for start in range(0, pods, page):
        items = []
        for i in range(start, min(pods, start + page)):
            pool = running if i % 10 == 9 else finished
            items.append(pool[i // 10 % len(pool)].render({
                "run": b"bench-%06d" % i,
                "uid": str(uuid.UUID(int=rng.getrandbits(128))).encode(),
                "rv": b'"resourceVersion":"%d"' % (1_000_000 + i),
                "trace": b"00-%032x-%016x-01" % (rng.getrandbits(128), rng.getrandbits(64)),
            }, _BASE + i // 5))
        more = start + page < pods
        meta = (b'{"resourceVersion":"999999"' +
                (b',"continue":"token-%d"' % (start + page) if more else b"") + b"}")
        yield (b'{"kind":"PodList","apiVersion":"v1","metadata":' + meta + b',"items":[' +
               b",".join(items) + b"]}")


def _pages_for(name: str, pods: int, page: int, seed: int = 7) -> Iterator[bytes]:
    """The pages decoder `name` reads: protobuf for the protobuf decoders, else JSON."""
    return (proto_pages if name in PROTOBUF else pages)(pods, page, seed)


def time_decoder(decode: Decoder, bodies: list[bytes]) -> tuple[float, float, int]:
    """CPU seconds to decode and to project every page, and the pods projected."""
    decode_s = project_s = 0.0
    count = 0
    for body in bodies:
        t0 = time.process_time()
        items = decode(body)
        t1 = time.process_time()
        views = [project(item) for item in items]
        t2 = time.process_time()
        decode_s += t1 - t0
        project_s += t2 - t1
        count += len(views)
        del items, views
    return decode_s, project_s, count


def _interleaved(names: list[str], wires: dict[str, list[bytes]], repeat: int,
                 ) -> dict[str, list[tuple[float, float, int]]]:
    """`repeat` timed passes of each decoder (none for one not installed), in turn."""
    decoders = {name: _decoder(name) for name in names}
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    for _ in range(repeat):  # passes interleaved: a busy spell hits every decoder
        for name, decode in decoders.items():
            wire = "protobuf" if name in PROTOBUF else "json"
            if decode is not None and wire in wires:
                runs[name].append(time_decoder(decode, wires[wire]))
    return runs


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(name: str, pods: int, page: int) -> dict[str, float]:
    """Run in a fresh process: keep every pod's view as the store does; bytes per pod."""
    decode = _decoder(name)
    assert decode is not None
    gc.collect()
    rss0 = _rss()
    cache: dict[str, PodView] = {}
    for body in _pages_for(name, pods, page):  # each page is built, decoded, dropped
        for item in decode(body):
            view = project(item)
            cache[view.key] = view
    gc.collect()
    rss1 = _rss()
    # The heap the kept views hold, measured apart (tracemalloc itself costs RSS).
    bodies = list(_pages_for(name, min(pods, 20_000), page, seed=8))
    kept: dict[str, PodView] = {}
    tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0]
    for body in bodies:
        for item in decode(body):
            view = project(item)
            kept[view.key] = view
    del bodies, body
    gc.collect()
    heap1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"pods": len(cache), "rss_per_pod": (rss1 - rss0) / len(cache),
            "heap_per_pod": (heap1 - heap0) / len(kept)}


# --- protobuf: the generated classes, the pages, and the generated-classes candidate ----

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
        return {"seconds": _seconds(value.encode()[:19] + b"Z")}
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
        stamps = sorted({_seconds(m.group(1)) for m in _STAMP.finditer(
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
            }, _BASE + i // 5))
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


class _UpbSlim:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=100_000)
    p.add_argument("--page", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--decoders", default=",".join(DECODERS))
    p.add_argument("--memory", action="store_true", help="also measure memory per pod")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(args.child, args.pods, args.page)))
        return 0
    names = [n for n in args.decoders.split(",") if n]
    wires = {"json": list(pages(args.pods, args.page))}
    if PROTOBUF & set(names) and _decoder("upb") is not None:  # upb builds the pages
        wires["protobuf"] = list(proto_pages(args.pods, args.page))
    bodies = wires["json"]
    megabytes = sum(map(len, bodies)) / 1e6
    print(f"{args.pods:,} pods in {len(bodies)} pages of {args.page}, {megabytes:,.0f} MB "
          f"of JSON; CPU seconds, best of {args.repeat}")
    if "protobuf" in wires:
        print(f"(protobuf decoders: the same pods in {sum(map(len, wires['protobuf'])) / 1e6:,.0f}"
              " MB of protobuf)")
    print(f"{'decoder':10} {'decode':>8} {'project':>8} {'total':>8} {'µs/pod':>8}")
    runs = _interleaved(names, wires, args.repeat)
    for name in names:
        if not runs[name]:
            print(f"{name:10} not installed")
            continue
        d, pr, n = min(runs[name], key=lambda r: r[0] + r[1])
        print(f"{name:10} {d:8.2f} {pr:8.2f} {d + pr:8.2f} {(d + pr) * 1e6 / n:8.1f}")
    if args.memory:
        del bodies, wires
        print(f"\nmemory, {args.pods:,} pods kept by key (a fresh process per decoder; heap: "
              "tracemalloc over 20,000 of them)")
        print(f"{'decoder':10} {'RSS B/pod':>10} {'heap B/pod':>10}")
        for name in names:
            if _decoder(name) is None:
                continue
            out = subprocess.run(
                [sys.executable, "-m", "bench.decode", "--child", name, "--pods",
                 str(args.pods), "--page", str(args.page)],
                check=True, capture_output=True, text=True).stdout
            m = json.loads(out)
            print(f"{name:10} {m['rss_per_pod']:10.0f} {m['heap_per_pod']:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
