"""sniffer.podproto against a real kube-apiserver: the protobuf LIST, GET and WATCH of the
same pods project to exactly the views the JSON ones do.

The pods cover the shapes tests/test_podview.py and tests/test_states.py judge: init
containers and native sidecars, waiting / running / terminated states and restarts,
scheduler and disruption conditions, deletion held by a finalizer, workload kinds, the
cancel annotation, long and non-ASCII messages. Each is created, given its kubelet-shaped
status through the status subresource, and read back in both encodings.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sniffer.kubedecode import decode_event, decode_pod, decode_pod_list
from sniffer.podproto import proto_event, proto_list, proto_pod
from sniffer.podview import MESSAGE_LIMIT, PodView, project
from sniffer.protowire import CONTENT_TYPE, WATCH_CONTENT_TYPE, FrameSplitter, ProtoError
from testbed.apiserver import ApiServer
from testbed.simulator.lifecycles import Shape
from testbed.simulator.shapes import render
from tests.test_fuzz_watch import NOW, real_pod

JSON_TYPE = "application/json"
STATUS_SHAPES = [Shape.CREATED, Shape.UNSCHEDULABLE,
                 Shape.CONTAINER_CREATING, Shape.INIT_RUNNING, Shape.ERR_IMAGE_PULL,
                 Shape.IMAGE_PULL_BACKOFF, Shape.RUNNING, Shape.CRASH_LOOP_BACKOFF,
                 Shape.RESTARTED, Shape.SUCCEEDED, Shape.FAILED_ERROR, Shape.OOM_KILLED,
                 Shape.DEADLINE_EXCEEDED, Shape.EVICTED, Shape.NODE_SHUTDOWN,
                 Shape.INIT_ERROR, Shape.DISRUPTION_TARGET, Shape.TERMINATED_ON_DELETION]


def manifests(namespace: str) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(pod to create, status to write or None) for every shape and metadata variant."""
    out = []
    for i, shape in enumerate(STATUS_SHAPES):
        pod = real_pod(f"job-{shape.value}", f"run-{i}", shape=Shape.CONTAINER_CREATING)
        status = None if shape is Shape.CREATED else render(shape, pod, NOW - 30, restarts=2)
        out.append((pod, status))
    notebook = real_pod("nb-cancel", "nb-1", shape=Shape.RUNNING)
    notebook["metadata"]["labels"]["sniffer.io/kind"] = "notebook"
    notebook["metadata"]["annotations"]["sniffer.io/cancel-requested"] = "true"
    out.append((notebook, notebook.pop("status")))
    app = real_pod("app-odd-messages", "app-1", shape=Shape.FAILED_ERROR)
    app["metadata"]["labels"] = {"sniffer.io/run-id": "app-1", "sniffer.io/kind": "app",
                                 "team": "ml"}
    app["metadata"]["annotations"] = {"sniffer.io/traceparent": "not-a-traceparent",
                                      "big": "x" * 5000, "note": "ünïcode ✓"}
    status = app.pop("status")
    status["message"] = "é" * (MESSAGE_LIMIT + 40)
    status["containerStatuses"][0]["state"]["terminated"]["message"] = "exit ✗\n" * 100
    out.append((app, status))
    plain = real_pod("untracked", "x", shape=Shape.RUNNING)
    plain["metadata"]["labels"] = {}
    plain["metadata"]["annotations"] = {}
    plain["metadata"]["finalizers"] = ["example.com/a", "sniffer.io/outcome"]
    out.append((plain, plain.pop("status")))
    attempt = real_pod("train-x7k2p", "job-run-1", shape=Shape.FAILED_ERROR)
    attempt["metadata"]["labels"].update({
        "batch.kubernetes.io/controller-uid": "0b7e6a4c-1f2d-4e5a-9c3b-5d6e7f8a9b0c",
        "batch.kubernetes.io/job-name": "train", "controller-uid": "0b7e6a4c-1f2d-4e5a-"
        "9c3b-5d6e7f8a9b0c", "job-name": "train"})
    attempt["metadata"]["ownerReferences"] = [  # (no garbage collector runs here)
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "cfg", "uid": "cm-1"},
        {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "controller": True,
         "blockOwnerDeletion": True, "uid": "0b7e6a4c-1f2d-4e5a-9c3b-5d6e7f8a9b0c"}]
    out.append((attempt, attempt.pop("status")))
    for pod, _ in out:
        meta = pod["metadata"]
        meta["namespace"] = namespace
        for server_set in ("uid", "resourceVersion", "creationTimestamp"):
            meta.pop(server_set, None)
        pod.pop("status", None)
    return out


class Raw:
    """Requests as the admin, returning raw bytes in the encoding asked for."""

    def __init__(self, server: ApiServer, session: aiohttp.ClientSession) -> None:
        self.server, self.session = server, session

    async def call(self, method: str, path: str, body: Any = None, *, accept: str = JSON_TYPE,
                   content_type: str = JSON_TYPE, **params: Any) -> tuple[int, str, bytes]:
        headers = {**self.server.headers(), "Accept": accept, "Content-Type": content_type}
        async with self.session.request(
                method, self.server.url + path, headers=headers,
                params={k: str(v) for k, v in params.items()},
                data=None if body is None else json.dumps(body).encode(),
                ssl=self.server.ssl_context()) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()

    async def watch(self, path: str, *, accept: str, **params: Any) -> AsyncIterator[bytes]:
        """The raw body of a watch, chunk by chunk, as it arrives."""
        headers = {**self.server.headers(), "Accept": accept}
        async with self.session.get(self.server.url + path, headers=headers,
                                    params={"watch": "true", **{k: str(v) for k, v in
                                                                params.items()}},
                                    ssl=self.server.ssl_context()) as resp:
            assert resp.status == 200, await resp.read()
            assert resp.headers["Content-Type"].startswith(accept.split(";")[0])
            async for chunk in resp.content.iter_any():
                yield chunk


@pytest.fixture
async def raw(apiserver: ApiServer) -> AsyncIterator[Raw]:
    async with aiohttp.ClientSession() as session:
        yield Raw(apiserver, session)


async def populate(raw: Raw, namespace: str) -> tuple[str, str]:
    """Create the varied pods (and a deletion held by a finalizer): the resourceVersion
    before the first write and after the last."""
    status, _, body = await raw.call("GET", f"/api/v1/namespaces/{namespace}/pods")
    assert status == 200
    before = json.loads(body)["metadata"]["resourceVersion"]
    path = f"/api/v1/namespaces/{namespace}/pods"
    for pod, pod_status in manifests(namespace):
        status, _, body = await raw.call("POST", path, pod)
        assert status == 201, body
        if pod_status is not None:
            status, _, body = await raw.call(
                "PATCH", f"{path}/{pod['metadata']['name']}/status", {"status": pod_status},
                content_type="application/merge-patch+json")
            assert status == 200, body
    # A deletion the finalizer holds: deletionTimestamp and its grace period are set.
    status, _, body = await raw.call("DELETE", f"{path}/job-running", gracePeriodSeconds=45)
    assert status == 200, body
    last = json.loads(body)["metadata"]["resourceVersion"]
    return before, last


def views_of(items: list[Any]) -> list[PodView]:
    return [project(item) for item in items]


async def test_a_protobuf_list_projects_to_the_views_of_the_json_list(raw, namespace):
    await populate(raw, namespace)
    path = f"/api/v1/namespaces/{namespace}/pods"
    status, ctype, pb = await raw.call("GET", path, accept=CONTENT_TYPE)
    assert (status, ctype) == (200, CONTENT_TYPE)
    _, _, js = await raw.call("GET", path)
    decoded = proto_list(pb)
    page = decode_pod_list(js, slim=True)
    views = views_of(decoded["items"])
    assert views == views_of(page.items) == views_of(json.loads(js)["items"])
    assert len(views) == len(STATUS_SHAPES) + 4
    assert decoded["metadata"]["resourceVersion"] == page.resource_version
    by_name = {v.name: v for v in views}  # the variants arrived as variants
    assert by_name["job-running"].deletion_timestamp is not None
    assert by_name["job-running"].deletion_grace_period_s == 45
    assert by_name["nb-cancel"].cancel_requested
    assert by_name["nb-cancel"].kind == "notebook"
    assert (by_name["train-x7k2p"].owner_kind, by_name["train-x7k2p"].owner_uid) == (
        "Job", "0b7e6a4c-1f2d-4e5a-9c3b-5d6e7f8a9b0c")
    assert by_name["app-odd-messages"].message == "é" * MESSAGE_LIMIT
    assert any(c.sidecar for c in by_name["job-init-running"].init_containers)
    assert by_name["job-disruption-target"].disruption is not None


async def test_protobuf_pages_carry_the_same_continue_tokens_and_items(raw, namespace):
    await populate(raw, namespace)
    path = f"/api/v1/namespaces/{namespace}/pods"
    pb_views: list[PodView] = []
    js_views: list[PodView] = []
    token: dict[str, str] = {}
    pages = 0
    while True:
        _, _, pb = await raw.call("GET", path, accept=CONTENT_TYPE, limit=4, **token)
        _, _, js = await raw.call("GET", path, limit=4, **token)
        decoded, page = proto_list(pb), decode_pod_list(js, slim=True)
        pb_views += views_of(decoded["items"])
        js_views += views_of(page.items)
        pages += 1
        if page.continue_token is None:
            assert "continue" not in decoded["metadata"]
            break
        assert decoded["metadata"]["continue"]
        token = {"continue": decoded["metadata"]["continue"]}  # the protobuf page's token
    assert pages > 1
    assert pb_views == js_views
    assert len(pb_views) == len(STATUS_SHAPES) + 4


async def test_a_protobuf_get_projects_to_the_view_of_the_json_get(raw, namespace):
    await populate(raw, namespace)
    for name in ("job-oom-killed", "job-running", "app-odd-messages", "untracked"):
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        _, ctype, pb = await raw.call("GET", path, accept=CONTENT_TYPE)
        _, _, js = await raw.call("GET", path)
        assert ctype == CONTENT_TYPE
        assert project(proto_pod(pb)) == project(decode_pod(js, slim=True))


async def watch_events(raw: Raw, namespace: str, accept: str, since: str,
                       until: str) -> list[tuple[str, PodView]]:
    """Every event of the namespace's watch from `since` until the one at `until`."""
    events: list[tuple[str, PodView]] = []
    splitter = FrameSplitter(16 << 20)
    lines = b""
    async for chunk in raw.watch(f"/api/v1/namespaces/{namespace}/pods", accept=accept,
                                 resourceVersion=since, timeoutSeconds=60):
        if accept == WATCH_CONTENT_TYPE:
            decoded = [proto_event(frame) for frame in splitter.feed(chunk)]
            got = [(e["type"], project(e["object"])) for e in decoded]
        else:
            *done, lines = (lines + chunk).split(b"\n")
            got = [(e.type, project(e.object)) for e in
                   (decode_event(line, slim=True) for line in done if line)]
        events += got
        if any(view.resource_version == until for _, view in got):
            return events
    raise AssertionError(f"the watch ended before resourceVersion {until}: {events}")


async def test_a_protobuf_watch_yields_the_events_and_views_of_the_json_watch(raw, namespace):
    before, last = await populate(raw, namespace)
    pb = await watch_events(raw, namespace, WATCH_CONTENT_TYPE, before, last)
    js = await watch_events(raw, namespace, JSON_TYPE, before, last)
    assert pb == js
    kinds = {kind for kind, _ in pb}
    assert kinds == {"ADDED", "MODIFIED"}
    assert len(pb) > 2 * len(STATUS_SHAPES)


async def test_a_protobuf_bookmark_carries_its_resource_version(raw, namespace):
    _, last = await populate(raw, namespace)
    splitter = FrameSplitter(16 << 20)
    async for chunk in raw.watch(f"/api/v1/namespaces/{namespace}/pods",
                                 accept=WATCH_CONTENT_TYPE, resourceVersion=last,
                                 allowWatchBookmarks="true", sendInitialEvents="true",
                                 resourceVersionMatch="NotOlderThan", timeoutSeconds=60):
        events = [proto_event(frame) for frame in splitter.feed(chunk)]
        bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
        if bookmarks:  # the end of the initial events is bookmarked at once
            assert int(bookmarks[0]["object"]["metadata"]["resourceVersion"]) >= int(last)
            return
    raise AssertionError("no bookmark before the watch ended")


async def test_a_protobuf_watch_from_a_compacted_version_is_an_error_event_with_410(
        apiserver_without_watch_cache: ApiServer):
    server = apiserver_without_watch_cache
    async with aiohttp.ClientSession() as session:
        raw = Raw(server, session)
        path = "/api/v1/namespaces/default/pods"
        for i in range(2):
            pod = copy.deepcopy(manifests("default")[0][0])
            pod["metadata"]["name"] = f"compacted-{i}"
            status, _, body = await raw.call("POST", path, pod)
            assert status == 201, body
        old = json.loads(body)["metadata"]["resourceVersion"]
        status, _, body = await raw.call("DELETE", f"{path}/compacted-0")
        assert status == 200
        server.compact_etcd()
        splitter = FrameSplitter(16 << 20)
        async for chunk in raw.watch(path, accept=WATCH_CONTENT_TYPE,
                                     resourceVersion=str(int(old) - 1), timeoutSeconds=30):
            for frame in splitter.feed(chunk):
                event = proto_event(frame)
                assert event["type"] == "ERROR", event
                assert event["object"]["code"] == 410
                assert event["object"]["kind"] == "Status"
                return
    raise AssertionError("the watch ended without an ERROR event")


def test_a_json_body_is_not_taken_for_protobuf():
    for body in (b'{"kind":"PodList","items":[]}', b"", b"k8s"):
        with pytest.raises(ProtoError):
            proto_list(body)
