"""Watch-line and LIST decoding: lines of any length, typed errors, nothing else escapes;
slim decoding gives the same views."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from hypothesis import given
from hypothesis import strategies as st

from sniffer import podwire
from sniffer.kubedecode import (
    Gone,
    KubeError,
    MalformedEvent,
    WatchEvent,
    decode_event,
    decode_pod,
    decode_pod_list,
    watch_lines,
)
from sniffer.ownership import JOB_UID_LABEL, LEGACY_JOB_UID_LABEL
from sniffer.podview import (
    CANCEL_ANNOTATION,
    INITIAL_EVENTS_END_ANNOTATION,
    KIND_LABEL,
    RUN_ID_LABEL,
    TRACEPARENT_ANNOTATION,
    MalformedPod,
    project,
)


def feed(chunks: list[bytes]) -> aiohttp.StreamReader:
    loop = asyncio.get_running_loop()
    reader = aiohttp.StreamReader(BaseProtocol(loop), 2**30, loop=loop)  # never pauses
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


async def collect(chunks: list[bytes]) -> list[bytes]:
    return [line async for line in watch_lines(feed(chunks), 1.0)]


async def test_a_line_far_longer_than_aiohttps_readline_limit_is_one_line():
    big = json.dumps({"type": "ADDED", "object": {"metadata": {
        "annotations": {"x": "y" * 1_000_000}}}}).encode()
    lines = await collect([big[i:i + 5000] for i in range(0, len(big), 5000)] + [b"\n"])
    assert lines == [big]


@given(st.lists(st.binary(min_size=1, max_size=50).filter(lambda b: b"\n" not in b),
                min_size=1, max_size=20), st.integers(min_value=1, max_value=64))
def test_lines_are_the_same_however_the_stream_is_chunked(lines, size):
    data = b"\n".join(lines) + b"\n"
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    assert asyncio.run(collect(chunks)) == lines


def test_bookmark_and_object_events_decode():
    event = decode_event(b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"7"}}}')
    assert event == WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "7"}})


@pytest.mark.parametrize("line", [
    b'{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}',
    b'{"type":"ERROR","object":{"kind":"Status","reason":"Gone","message":"too old"}}',
])
def test_error_event_with_410_raises_gone(line):
    with pytest.raises(Gone):
        decode_event(line)


def test_other_error_events_raise_a_kube_error_with_the_code():
    with pytest.raises(KubeError) as info:
        decode_event(b'{"type":"ERROR","object":{"code":500,"message":"boom"}}')
    assert info.value.status == 500
    assert not isinstance(info.value, Gone)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_only_typed_errors(line):
    with contextlib.suppress(KubeError):
        decode_event(line)


@pytest.mark.parametrize("line", [b"not json", b"[1,2]", b'{"type":"ADDED"}',
                                  b'{"type":1,"object":{}}', b"[" * 100_000])
def test_malformed_lines_raise_malformed_event(line):
    with pytest.raises(MalformedEvent):
        decode_event(line)


# --- slim decoding (sniffer.podwire): only what project reads, the same views -------------

TEMPLATES = json.loads((Path(__file__).parents[1] / "bench" / "decode_pods.json").read_text())
REAL_PODS = TEMPLATES["finished"] + TEMPLATES["running"]


def _page(items: list[Any], token: str | None = "next") -> bytes:
    meta = {"resourceVersion": "77", **({"continue": token} if token else {})}
    return json.dumps({"kind": "PodList", "metadata": meta, "items": items}).encode()


def test_slim_list_items_project_to_the_same_views_without_the_unread_fields():
    page = decode_pod_list(_page(REAL_PODS), slim=True)
    full = decode_pod_list(_page(REAL_PODS))
    assert (page.resource_version, page.continue_token) == ("77", "next")
    assert [project(p) for p in page.items] == [project(p) for p in full.items]
    assert all("managedFields" not in p["metadata"] and "image" not in
               p["status"]["containerStatuses"][0] for p in page.items)
    assert len(json.dumps(page.items)) < len(json.dumps(full.items)) / 4


def test_slim_list_with_a_misshapen_item_falls_back_and_keeps_the_others():
    bad = copy.deepcopy(REAL_PODS[0])
    bad["status"]["conditions"] = {"not": "a list"}
    page = decode_pod_list(_page([bad, *REAL_PODS[1:]], token=None), slim=True)
    assert page.continue_token is None
    assert page.items[0]["status"]["conditions"] == {"not": "a list"}  # the general way
    with pytest.raises(MalformedPod, match=r"status\.conditions"):
        project(page.items[0])
    assert [project(p) for p in page.items[1:]] == [project(p) for p in REAL_PODS[1:]]


def test_slim_events_carry_the_same_pod_and_errors_keep_their_status():
    line = json.dumps({"type": "MODIFIED", "object": REAL_PODS[-1]}).encode()
    event = decode_event(line, slim=True)
    assert event.type == "MODIFIED"
    assert "managedFields" not in event.object["metadata"]
    assert project(event.object) == project(REAL_PODS[-1])
    with pytest.raises(Gone, match="too old"):
        decode_event(b'{"type":"ERROR","object":{"code":410,"message":"too old"}}', slim=True)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"items":{"a":1}}'])
def test_a_list_body_that_is_not_a_pod_list_is_a_kube_error(body):
    for slim in (False, True):
        with pytest.raises(KubeError):
            decode_pod_list(body, slim=slim)


def test_a_slim_pod_projects_to_the_same_view_without_the_unread_fields():
    for pod in REAL_PODS:
        body = json.dumps(pod).encode()
        slim, full = decode_pod(body, slim=True), decode_pod(body)
        assert full == pod
        assert project(slim) == project(full)
        assert "managedFields" not in slim["metadata"]
        assert len(json.dumps(slim)) < len(body) / 3


@pytest.mark.parametrize("body", [
    b'{"metadata": {"name": "p", "resourceVersion": NaN}}',  # non-standard JSON
    b'\xef\xbb\xbf{"metadata": {"name": "p"}}',  # a BOM
    b'{"status": {"conditions": {"not": "a list"}}}',  # an object where a list belongs
])
def test_a_pod_the_slim_schema_refuses_is_decoded_the_general_way(body):
    assert decode_pod(body, slim=True) == decode_pod(body) == json.loads(body)


@pytest.mark.parametrize("body", [b"not json", b"[]", b"null", b"[" * 100_000])
def test_a_pod_body_that_is_not_an_object_is_a_kube_error(body):
    for slim in (False, True):
        with pytest.raises(KubeError, match="GET pod response is not"):
            decode_pod(body, slim=slim)


def test_the_slim_schema_reads_the_labels_and_annotations_podview_names():
    meta = podwire.Metadata.__annotations__
    assert meta.keys() >= {"labels", "annotations"}
    assert set(podwire.Labels.__annotations__) == {RUN_ID_LABEL, KIND_LABEL, JOB_UID_LABEL,
                                                    LEGACY_JOB_UID_LABEL}
    # the reflector reads the WatchList end bookmark's annotation through the same schema
    assert set(podwire.Annotations.__annotations__) == {
        CANCEL_ANNOTATION, TRACEPARENT_ANNOTATION, INITIAL_EVENTS_END_ANNOTATION}
