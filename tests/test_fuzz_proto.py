"""Hostile protobuf watch input, fuzzed: nothing but `ProtoError` escapes the decoder.

* Real frames and LIST bodies, as the testbed's kube-apiserver encodes the pods
  tests/test_fuzz_watch.py fuzzes in JSON, are truncated, overwritten, spliced and given
  lengths that lie; arbitrary bytes too. `sniffer.podproto` either raises `ProtoError` or
  returns an object that `project` turns into a view or rejects with `MalformedPod`.
* A truncated frame is never half a pod: it is an error (every pod frame ends inside the
  lengths that enclose it).
* `FrameSplitter` yields the same frames however the stream is chunked, and refuses an
  oversized length before buffering it.

* The reflector, fed a protobuf stream of hostile frames between good ones through the
  real frame splitter and decoder: every bad frame or object is counted as malformed and
  skipped, every good pod lands in the store, and the loop is still running afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sniffer.kubedecode import MalformedEvent, Page, decode_event_proto, watch_frames
from sniffer.podproto import proto_event, proto_list, proto_pod
from sniffer.podview import MalformedPod, project
from sniffer.protowire import CONTENT_TYPE, WATCH_CONTENT_TYPE, FrameSplitter, ProtoError
from testbed.apiserver import ApiServer
from tests.fixtures.reflecting import reflecting
from tests.test_fuzz_watch import SHAPES, real_pod
from tests.test_kube_decode import feed

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


# -- the reflector loop, on the protobuf wire ---------------------------------------------

class ProtoFakeKube:
    """What the reflector needs of `KubeClient`: an empty LIST, then one scripted protobuf
    watch stream through the real frame splitter and decoder (as `KubeClient.watch_pods`
    does on the protobuf wire), then silence."""

    def __init__(self, stream: bytes) -> None:
        self._stream: bytes | None = stream

    async def list_pods(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None, slim: bool = False) -> Page:
        return Page(items=[], resource_version="1", continue_token=None)

    async def watch_pods(self, namespace: str | None, *, label_selector: str,
                         resource_version: str, timeout_seconds: int, read_timeout: float,
                         slim: bool = False, send_initial_events: bool = False,
                         ) -> AsyncIterator[Any]:
        stream, self._stream = self._stream, None
        if stream is None:
            await asyncio.Event().wait()
            return
        async for frame in watch_frames(feed([stream[i:i + 4096]
                                              for i in range(0, len(stream), 4096)]), read_timeout):
            try:
                yield decode_event_proto(frame)
            except MalformedEvent as bad:
                yield bad


def framed(frames: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data(), st.lists(st.lists(MUTATION, min_size=1, max_size=3), min_size=1, max_size=8),
       st.lists(st.binary(max_size=64), max_size=3))
def test_the_reflector_skips_bad_frames_and_keeps_going(wire, data, mutations, noise):
    good = wire["frames"]
    bad = []
    for how in mutations:
        frame = data.draw(st.sampled_from(good))
        for step in how:
            frame = mutate(frame, step)
        bad.append(frame)
    bad += noise
    outcomes = [judged(proto_event, frame) for frame in bad]
    assume("other" not in outcomes)  # a mutation that made a valid ERROR event: not hostile
    expected_bad = sum(1 for o in outcomes if o in ("error", "malformed pod"))
    interleaved: list[bytes] = []
    for i in range(max(len(bad), len(good))):
        interleaved += bad[i:i + 1] + good[i:i + 1]
    # The good frames once more at the end: whatever a mutated frame made of a good pod
    # (it may even have turned it into a deletion), the last word is the real one.
    final = {}  # each pod's view after the last real frame: what the store must end with
    for frame in good:
        view = project(proto_event(frame)["object"])
        final[view.key] = view
    # A mutation can make a valid pod out of a real one (a resourceVersion with another
    # digit, say): no decoder can tell, and the store may rightly keep it over the real
    # frames that follow. Those pods' end state is the hostile data's, not checked.
    for frame, outcome in zip(bad, outcomes, strict=True):
        if outcome == "pod":
            final.pop(project(proto_event(frame)["object"]).key, None)
    asyncio.run(_reflect(framed(interleaved + good), expected_bad, final))


async def _reflect(stream: bytes, expected_bad: int, final: dict[str, Any]) -> None:
    async with reflecting(ProtoFakeKube(stream), "fuzz-proto") as run:
        await run.until(lambda: all(_same(run.store.get(key), view)
                                    for key, view in final.items()), expected_bad)
        assert set(run.changed) >= set(final)


def _same(cached: Any, view: Any) -> bool:
    """The store's view is the real one (the store adds history, not projection)."""
    return cached is not None and cached.resource_version == view.resource_version and \
        dataclasses.replace(cached, deleted_while_active=False) == view
