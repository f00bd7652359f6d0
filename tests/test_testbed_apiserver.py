"""The testbed's API server behaves like the real Kubernetes that Sniffer depends on.

Each test pins down one behaviour Sniffer relies on (pagination, bookmarks, status
subresource, finalizers, deletion without a kubelet, RBAC) against the real server, so a
testbed change that breaks it fails here first, not inside a Sniffer test.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testbed.apiserver import ApiServer, ApiServerError, attach, start
from testbed.build import kubernetes_version
from tests.fixtures.kubehttp import JSON_PATCH, MERGE_PATCH, Kube, request_sync

# Every test here needs the testbed, even those that start their own server.
pytestmark = pytest.mark.testbed

FINALIZER = "sniffer.dev/test-hold"


def pod(name: str, *, node: str | None = "node-1", finalizers: list[str] | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox:1.36"}]}
    if node:
        spec["nodeName"] = node
    meta: dict[str, Any] = {"name": name, "labels": labels or {"app": "testbed-check"}}
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def pods_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


async def create_pods(kube: Kube, namespace: str, *names: str, **kw: Any) -> list[dict]:
    created = []
    for name in names:
        reply = await kube.post(pods_path(namespace), pod(name, **kw))
        assert reply.status == 201, reply.body
        created.append(reply.body)
    return created


async def test_version_endpoint_reports_the_kubernetes_version_it_was_built_from(
        apiserver: ApiServer):
    async with Kube(apiserver) as kube:
        reply = await kube.get("/version")
    assert reply.status == 200
    if apiserver.workdir is not None:  # our own testbed, not SNIFFER_TEST_KUBECONFIG's
        assert reply.body["gitVersion"] == kubernetes_version()


async def test_pod_bound_to_a_node_is_stored_and_stays_pending_without_a_kubelet(
        apiserver: ApiServer, namespace: str):
    async with Kube(apiserver) as kube:
        [created] = await create_pods(kube, namespace, "bound")
        await asyncio.sleep(0.5)
        reply = await kube.get(pods_path(namespace, "bound"))
    assert reply.status == 200
    assert reply.body["spec"]["nodeName"] == "node-1"
    assert reply.body["status"]["phase"] == "Pending"
    assert reply.body["metadata"]["uid"] == created["metadata"]["uid"]


async def test_list_pages_with_limit_and_continue_cover_every_pod_once(
        apiserver: ApiServer, namespace: str):
    names = [f"page-{i}" for i in range(5)]
    async with Kube(apiserver) as kube:
        await create_pods(kube, namespace, *names)
        seen: list[str] = []
        pages: list[int] = []
        token = ""
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if token:
                params["continue"] = token
            reply = await kube.get(pods_path(namespace), **params)
            assert reply.status == 200, reply.body
            if not pages:
                assert reply.body["metadata"]["remainingItemCount"] == 3
            pages.append(len(reply.body["items"]))
            seen += [p["metadata"]["name"] for p in reply.body["items"]]
            token = reply.body["metadata"].get("continue", "")
            if not token:
                break
    assert pages == [2, 2, 1]
    assert sorted(seen) == names


async def test_watch_with_bookmarks_allowed_delivers_events_then_a_bookmark(
        apiserver: ApiServer, namespace: str):
    async with Kube(apiserver) as kube:
        listed = await kube.get(pods_path(namespace))
        list_rv = listed.body["metadata"]["resourceVersion"]
        events: list[dict] = []

        async def collect() -> None:
            # The server sends a bookmark shortly (about 2 s) before a watch's timeout.
            async for event in kube.watch(pods_path(namespace), resourceVersion=list_rv,
                                          allowWatchBookmarks=True, timeoutSeconds=5):
                events.append(event)

        watcher = asyncio.create_task(collect())
        await asyncio.sleep(0.5)
        await create_pods(kube, namespace, "watched")
        await asyncio.wait_for(watcher, timeout=30)

    types = [e["type"] for e in events]
    assert types[0] == "ADDED"
    assert events[0]["object"]["metadata"]["name"] == "watched"
    assert "BOOKMARK" in types
    bookmark = events[types.index("BOOKMARK")]["object"]
    assert bookmark["kind"] == "Pod"
    assert int(bookmark["metadata"]["resourceVersion"]) >= int(
        events[0]["object"]["metadata"]["resourceVersion"])


async def test_watch_list_sends_existing_pods_then_an_initial_events_end_bookmark(
        apiserver: ApiServer, namespace: str):
    async with Kube(apiserver) as kube:
        await create_pods(kube, namespace, "existing-a", "existing-b")
        events: list[dict] = []
        async for event in kube.watch(pods_path(namespace), sendInitialEvents=True,
                                      resourceVersionMatch="NotOlderThan",
                                      allowWatchBookmarks=True, timeoutSeconds=10):
            events.append(event)
            if event["type"] == "BOOKMARK":
                break
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    annotations = events[-1]["object"]["metadata"].get("annotations", {})
    assert annotations.get("k8s.io/initial-events-end") == "true"


async def test_status_subresource_patch_changes_status_and_main_resource_ignores_status(
        apiserver: ApiServer, namespace: str):
    path = pods_path(namespace, "status-check")
    running = {"status": {"phase": "Running", "containerStatuses": [{
        "name": "main", "image": "busybox:1.36", "imageID": "", "ready": True,
        "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}
    async with Kube(apiserver) as kube:
        await create_pods(kube, namespace, "status-check")
        patched = await kube.patch(path + "/status", running)
        assert patched.status == 200, patched.body
        ignored = await kube.patch(path, {"status": {"phase": "Succeeded"}})
        assert ignored.status == 200, ignored.body
        now = await kube.get(path)
    assert now.body["status"]["phase"] == "Running"
    assert now.body["status"]["containerStatuses"][0]["state"]["running"]


async def test_finalizer_keeps_a_deleted_pod_until_the_finalizer_is_removed(
        apiserver: ApiServer, namespace: str):
    path = pods_path(namespace, "held")
    async with Kube(apiserver) as kube:
        await create_pods(kube, namespace, "held", finalizers=[FINALIZER])
        deleted = await kube.delete(path, gracePeriodSeconds=0)
        assert deleted.status in (200, 202), deleted.body
        held = await kube.get(path)
        assert held.status == 200
        assert held.body["metadata"]["deletionTimestamp"]
        assert held.body["metadata"]["finalizers"] == [FINALIZER]
        released = await kube.patch(path, [
            {"op": "test", "path": "/metadata/finalizers", "value": [FINALIZER]},
            {"op": "remove", "path": "/metadata/finalizers"}], content_type=JSON_PATCH)
        assert released.status == 200, released.body
        gone = await kube.get(path)
    assert gone.status == 404


async def test_pod_bound_to_a_node_waits_for_a_kubelet_unless_deleted_with_grace_zero(
        apiserver: ApiServer, namespace: str):
    path = pods_path(namespace, "bound")
    async with Kube(apiserver) as kube:
        await create_pods(kube, namespace, "bound")
        graceful = await kube.delete(path)
        assert graceful.status == 200
        waiting = await kube.get(path)
        assert waiting.status == 200
        assert waiting.body["metadata"]["deletionGracePeriodSeconds"] == 30
        forced = await kube.delete(path, gracePeriodSeconds=0)
        assert forced.status == 200
        gone = await kube.get(path)
    assert gone.status == 404


async def test_unbound_pod_is_deleted_at_once(apiserver: ApiServer, namespace: str):
    path = pods_path(namespace, "unbound")
    async with Kube(apiserver) as kube:
        await create_pods(kube, namespace, "unbound", node=None)
        assert (await kube.delete(path)).status == 200
        gone = await kube.get(path)
    assert gone.status == 404


def test_built_kubectl_lists_pods_with_the_kubeconfig(
        apiserver: ApiServer, kubectl: Path, namespace: str):
    created = request_sync(apiserver, "POST", pods_path(namespace), pod("for-kubectl"))
    assert created.status == 201, created.body
    proc = subprocess.run(
        [str(kubectl), f"--kubeconfig={apiserver.kubeconfig}", "get", "pods",
         "--namespace", namespace, "--output", "json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [p["metadata"]["name"] for p in json.loads(proc.stdout)["items"]] == ["for-kubectl"]


async def test_impersonated_service_account_gets_only_what_rbac_grants(
        apiserver: ApiServer, namespace: str):
    sa_user = f"system:serviceaccount:{namespace}:limited"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    async with Kube(apiserver) as admin:
        made = await admin.post(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                                {"metadata": {"name": "limited"}})
        assert made.status == 201, made.body
        async with Kube(apiserver, impersonate=sa_user) as limited:
            refused = await limited.get(pods_path(namespace))
            assert refused.status == 403, refused.body

            role = {"metadata": {"name": "read-pods"}, "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}
            binding = {"metadata": {"name": "limited-reads-pods"},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                   "name": "read-pods"},
                       "subjects": [{"kind": "ServiceAccount", "name": "limited",
                                     "namespace": namespace}]}
            assert (await admin.post(f"{rbac}/roles", role)).status == 201
            assert (await admin.post(f"{rbac}/rolebindings", binding)).status == 201

            # The RBAC authorizer reads roles through an informer, so a grant lands shortly
            # after it is written.
            allowed = await limited.get(pods_path(namespace))
            for _ in range(100):
                if allowed.status != 403:
                    break
                await asyncio.sleep(0.1)
                allowed = await limited.get(pods_path(namespace))
            assert allowed.status == 200, allowed.body
            still_refused = await limited.post(pods_path(namespace), pod("not-allowed"))
            assert still_refused.status == 403
            other_namespace = await limited.get("/api/v1/namespaces/default/pods")
            assert other_namespace.status == 403


async def test_service_account_token_from_token_request_authenticates_as_that_account(
        apiserver: ApiServer, namespace: str):
    async with Kube(apiserver) as admin:
        made = await admin.post(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                                {"metadata": {"name": "robot"}})
        assert made.status == 201, made.body
        issued = await admin.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/robot/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": 600}})
        assert issued.status == 201, issued.body
        token = issued.body["status"]["token"]
    async with Kube(apiserver, token=token) as robot:
        review = await robot.post("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                  {"apiVersion": "authentication.k8s.io/v1",
                                   "kind": "SelfSubjectReview"})
        refused = await robot.get(pods_path(namespace))
    assert review.status == 201, review.body
    assert review.body["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{namespace}:robot")
    assert refused.status == 403


def test_watch_and_exact_list_from_a_compacted_resource_version_get_410_gone(
        apiserver_without_watch_cache: ApiServer):
    server = apiserver_without_watch_cache
    ns = f"t-compaction-{secrets.token_hex(3)}"
    made = request_sync(server, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    assert made.status == 201, made.body
    created = request_sync(server, "POST", pods_path(ns), pod("compacted"))
    assert created.status == 201, created.body
    old_rv = created.body["metadata"]["resourceVersion"]
    for i in range(3):
        changed = request_sync(server, "PATCH", pods_path(ns, "compacted"),
                               {"metadata": {"labels": {"n": str(i)}}},
                               content_type=MERGE_PATCH)
        assert changed.status == 200, changed.body

    assert server.compact_etcd() > int(old_rv)

    exact = request_sync(server, "GET", pods_path(ns),
                         params={"resourceVersion": old_rv, "resourceVersionMatch": "Exact"})
    assert exact.status == 410, exact.body
    assert exact.body["reason"] == "Expired"
    watch = urllib.request.Request(
        f"{server.url}{pods_path(ns)}?watch=true&timeoutSeconds=5&resourceVersion={old_rv}",
        headers=server.headers())
    with urllib.request.urlopen(watch, context=server.ssl_context(), timeout=30) as resp:
        events = [json.loads(line) for line in resp if line.strip()]
    assert [e["type"] for e in events] == ["ERROR"]
    assert events[0]["object"]["code"] == 410


def test_two_testbeds_in_two_workdirs_run_side_by_side_and_stop_cleanly(
        apiserver: ApiServer, tmp_path: Path):
    second = start(tmp_path)
    try:
        assert second.url != apiserver.url
        assert request_sync(second, "GET", "/readyz").status == 200
        assert request_sync(apiserver, "GET", "/readyz").status == 200
        assert attach(tmp_path).url == second.url
        with pytest.raises(ApiServerError, match="already runs"):
            start(tmp_path)
    finally:
        second.stop()
    assert second.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(second.pid, 0)
    assert not (tmp_path / "state").exists()
    assert not second.kubeconfig.exists()
    assert (tmp_path / "apiserver.log").exists()


def test_testbed_shuts_down_when_the_process_that_started_it_dies(tmp_path: Path):
    script = ("import sys; from pathlib import Path; from testbed.apiserver import start; "
              "print(start(Path(sys.argv[1])).pid, flush=True)")
    # The child starts a testbed, prints its pid and exits without stopping it.
    starter = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                             text=True, timeout=300, check=False)
    assert starter.returncode == 0, starter.stderr
    pid = int(starter.stdout.split()[-1])
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"orphaned testbed (pid {pid}) was still running after 30 s")


def test_start_failure_raises_with_the_server_log_tail(tmp_path: Path):
    with pytest.raises(ApiServerError, match="unknown flag: --no-such-flag"):
        start(tmp_path, extra_args=["--no-such-flag"], timeout=120)
