"""Hostile protobuf watch input, fuzzed: nothing but `ProtoError` escapes the decoder.

* Real frames and LIST bodies, as the testbed's kube-apiserver encodes the pods
  tests/test_fuzz_watch.py fuzzes in JSON, are truncated, overwritten, spliced and given
  lengths that lie; arbitrary bytes too. `sniffer.podproto` either raises `ProtoError` or
  returns an object that `project` turns into a view or rejects with `MalformedPod`.
* A truncated frame is never half a pod: it is an error (every pod frame ends inside the
  lengths that enclose it).
* `FrameSplitter` yields the same frames however the stream is chunked, and refuses an
  oversized length before buffering it.

The reflector's handling of what the decoder refuses (counted, logged, skipped) is the
same path as for JSON lines: tests/test_fuzz_watch.py.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sniffer.podproto import (
    WATCH_CONTENT_TYPE,
    FrameSplitter,
    ProtoError,
    proto_event,
    proto_list,
    proto_pod,
)
from sniffer.podview import MalformedPod, project
from testbed.apiserver import ApiServer
from tests.test_fuzz_watch import SHAPES, real_pod
from tests.test_podproto import CONTENT_TYPE

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _call(server: ApiServer, method: str, path: str, body: Any = None,
          accept: str = "application/json") -> bytes:
    headers = {**server.headers(), "Accept": accept, "Content-Type": "application/json"}
    req = urllib.request.Request(server.url + path, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    context: ssl.SSLContext = server.ssl_context()
    with urllib.request.urlopen(req, context=context, timeout=60) as resp:
        return resp.read()


@pytest.fixture(scope="module")
def wire(apiserver: ApiServer) -> dict[str, Any]:
    """Real protobuf bytes: the watch frames of a few shapes' pods, a LIST body, a GET."""
    ns = "fuzz-proto"
    with contextlib.suppress(urllib.error.HTTPError):  # a rerun finds it there
        _call(apiserver, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    listed = json.loads(_call(apiserver, "GET", f"/api/v1/namespaces/{ns}/pods"))
    since = listed["metadata"]["resourceVersion"]
    names = []
    for i, shape in enumerate(SHAPES):
        pod = real_pod(f"fz-{shape.value}-{since}", f"fz-{i}", shape=shape)
        status = pod.pop("status")
        for server_set in ("uid", "resourceVersion", "creationTimestamp"):
            pod["metadata"].pop(server_set)
        pod["metadata"]["namespace"] = ns
        _call(apiserver, "POST", f"/api/v1/namespaces/{ns}/pods", pod)
        names.append(pod["metadata"]["name"])
        # Status through the subresource, as the kubelet writes it.
        req_body = {"status": status}
        headers = {**apiserver.headers(), "Content-Type": "application/merge-patch+json"}
        req = urllib.request.Request(
            f"{apiserver.url}/api/v1/namespaces/{ns}/pods/{names[-1]}/status",
            method="PATCH", headers=headers, data=json.dumps(req_body).encode())
        with urllib.request.urlopen(req, context=apiserver.ssl_context(), timeout=60):
            pass
    stream = _call(apiserver, "GET", f"/api/v1/namespaces/{ns}/pods?watch=true&"
                   f"resourceVersion={since}&timeoutSeconds=1", accept=WATCH_CONTENT_TYPE)
    frames = FrameSplitter(1 << 24).feed(stream)
    assert len(frames) >= 2 * len(SHAPES)
    return {"frames": frames,
            "list": _call(apiserver, "GET", f"/api/v1/namespaces/{ns}/pods",
                          accept=CONTENT_TYPE),
            "pod": _call(apiserver, "GET", f"/api/v1/namespaces/{ns}/pods/{names[0]}",
                         accept=CONTENT_TYPE)}


def judged(decode: Any, data: bytes) -> str:
    """What became of `data`: "error" (ProtoError), "pod", "malformed pod" or "other"
    (a decoded non-pod such as an ERROR event). Anything else raised fails the test."""
    try:
        decoded = decode(data)
    except ProtoError:
        return "error"
    objects = (decoded["items"] if "items" in decoded else
               [decoded["object"]] if "object" in decoded else [decoded])
    outcome = "other"
    for obj in objects:
        if obj.get("kind") == "Status":
            continue
        try:
            project(obj)
            outcome = "pod"
        except MalformedPod:
            return "malformed pod"
    return outcome


MUTATION = st.tuples(st.sampled_from(["truncate", "overwrite", "insert", "delete", "lie"]),
                     st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8))


def mutate(data: bytes, how: tuple[str, int, bytes]) -> bytes:
    op, at, noise = how
    at %= max(1, len(data))
    if op == "truncate":
        return data[:at]
    if op == "overwrite":
        return data[:at] + noise + data[at + len(noise):]
    if op == "insert":
        return data[:at] + noise + data[at:]
    if op == "delete":
        return data[:at] + data[at + len(noise):]
    return data[:at] + b"\xff" * len(noise) + data[at + len(noise):]  # a length that lies


@FUZZ
@given(st.data(), st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_watch_frames_are_errors_or_judged_pods(wire, data, mutations):
    frame = data.draw(st.sampled_from(wire["frames"]))
    for how in mutations:
        frame = mutate(frame, how)
    assert judged(proto_event, frame) in ("error", "pod", "malformed pod", "other")


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_list_and_get_bodies_are_errors_or_judged_pods(wire, mutations):
    body, pod = wire["list"], wire["pod"]
    for how in mutations:
        body, pod = mutate(body, how), mutate(pod, how)
    assert judged(proto_list, body) in ("error", "pod", "malformed pod", "other")
    assert judged(proto_pod, pod) in ("error", "pod", "malformed pod", "other")


@FUZZ
@given(st.data())
def test_a_truncated_frame_is_an_error_never_half_a_pod(wire, data):
    frame = data.draw(st.sampled_from(wire["frames"]))
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert judged(proto_event, frame[:cut]) == "error"


def test_the_real_frames_decode_to_pods(wire):
    assert {judged(proto_event, f) for f in wire["frames"]} == {"pod"}
    assert judged(proto_list, wire["list"]) == "pod"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_proto_errors(data):
    for decode in (proto_event, proto_list, proto_pod):
        with contextlib.suppress(ProtoError):
            decode(data)
        with contextlib.suppress(ProtoError):
            decode(b"k8s\x00" + data)


@given(st.lists(st.binary(max_size=40), max_size=12), st.integers(1, 17))
def test_frames_are_the_same_however_the_stream_is_chunked(frames, size):
    stream = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    splitter = FrameSplitter(1 << 10)
    got = []
    for i in range(0, len(stream), size):
        got += splitter.feed(stream[i:i + size])
    assert got == frames
    assert splitter.pending == 0


def test_an_oversized_frame_length_is_refused_before_it_is_buffered():
    splitter = FrameSplitter(1 << 10)
    with pytest.raises(ProtoError, match="limit"):
        splitter.feed((1 << 30).to_bytes(4, "big") + b"x")
