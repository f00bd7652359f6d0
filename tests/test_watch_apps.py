"""`sniffer watch` over controller-backed runs (apps and notebooks under a Deployment or
StatefulSet) on a real kube-apiserver, no controllers: each test writes the controller's
status through its status subresource, as the Deployment and StatefulSet controllers
would, and creates (and deletes) the replica pods they would. The reference platform over
HTTP holds the run; what it shows, and its history of the run, is checked.
"""

from __future__ import annotations

import logging
import uuid

import pytest

from sniffer.kube import KubeClient
from sniffer.podview import OUTCOME_FINALIZER
from testbed.platform.launcher import PlatformServer
from tests.fixtures.apps import Apps
from tests.fixtures.watcher import (
    eventually,
    rfc3339,
    running_watcher,
    settings_for,
    watcher_env,
)
from watch.appsource import AppSource

APP_KINDS = "pods,jobs,deployments,statefulsets"


@pytest.fixture
def new_id():
    return lambda: f"run-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def apps(kube: KubeClient, namespace: str) -> Apps:
    return Apps(kube, namespace)


@pytest.fixture
def statefulsets(kube: KubeClient, namespace: str) -> Apps:
    return Apps(kube, namespace, "StatefulSet")


def env(apiserver, platform: PlatformServer, namespace: str, **overrides: str):
    return watcher_env(apiserver, platform, namespace,
                       **{"SNIFFER_KUBE_KINDS": APP_KINDS, **overrides})


def history(platform: PlatformServer, run_id: str) -> list[str]:
    return [u["to_state"] for u in platform.updates() if u["run_id"] == run_id]


def state(platform: PlatformServer, run_id: str) -> str | None:
    run = platform.get_run(run_id)
    return None if run is None else run["state"]


async def _gone(apps: Apps, name: str) -> bool:
    return await apps.get(name) is None


async def _released(apps: Apps, name: str) -> bool:
    return await apps.finalizers(name) == []


async def _held(apps: Apps, name: str) -> bool:
    return OUTCOME_FINALIZER in (await apps.finalizers(name) or [])


async def test_an_app_whose_pod_is_deleted_and_replaced_stays_running(
        apiserver, platform, namespace, apps, new_id):
    run_id = new_id()
    platform.create_run(run_id, kind="app", pod_namespace=namespace, pod_name="web")
    app = await apps.create("web", run_id)
    async with running_watcher(settings_for(env(apiserver, platform, namespace))) as w:
        assert w.store is not None
        await apps.replica(app, "web-1-a", run_id)
        await apps.pods.running("web-1-a")
        await apps.available("web")
        await eventually(lambda: state(platform, run_id) == "running")
        # A drain deletes the pod; the controller counts it gone and makes another.
        await apps.pods.delete("web-1-a", grace_s=0)
        await apps.unavailable("web")
        await apps.replica(app, "web-1-b", run_id)
        # The deletion was handled (the pod path forgets a tombstone only then).
        await eventually(lambda: w.store.get(f"{namespace}/web-1-a") is None)
        await eventually(lambda: w.store.get(f"{namespace}/web-1-b") is not None)
        await apps.pods.running("web-1-b")
        await apps.available("web")
        assert w.store.tombstones == 0
        # Before the fix the drained pod's deletion ended the run: cancelled "Stopped".
        assert history(platform, run_id) == ["running"]
        await eventually(lambda: _held(apps, "web"))
    run = platform.get_run(run_id)
    assert run["state"] == "running"
    assert run["pod_uid"] == app["metadata"]["uid"]  # bound to the controller, not a pod
    assert await apps.pods.finalizers("web-1-b") == []  # the finalizer is the controller's


async def test_a_statefulset_pod_recreated_under_its_name_stays_running(
        apiserver, platform, namespace, statefulsets, new_id):
    run_id = new_id()
    platform.create_run(run_id, kind="notebook", pod_namespace=namespace, pod_name="nb")
    sts = await statefulsets.create("nb", run_id)
    async with running_watcher(settings_for(env(apiserver, platform, namespace))) as w:
        assert w.store is not None
        first = await statefulsets.replica(sts, "nb-0", run_id)
        await statefulsets.pods.running("nb-0")
        await statefulsets.available("nb")
        await eventually(lambda: state(platform, run_id) == "running")
        await statefulsets.pods.delete("nb-0", grace_s=0)
        await statefulsets.unavailable("nb")
        await eventually(lambda: w.store.get(f"{namespace}/nb-0") is None)
        second = await statefulsets.replica(sts, "nb-0", run_id)
        assert second["metadata"]["uid"] != first["metadata"]["uid"]
        await statefulsets.pods.running("nb-0")
        await statefulsets.available("nb")
        await eventually(lambda: _held(statefulsets, "nb"))
    assert history(platform, run_id) == ["running"]


async def test_an_app_deleted_by_the_platforms_cancel_ends_cancelled(
        apiserver, platform, namespace, apps, new_id):
    run_id = new_id()
    platform.create_run(run_id, kind="app", pod_namespace=namespace, pod_name="stop")
    app = await apps.create("stop", run_id)
    async with running_watcher(settings_for(env(apiserver, platform, namespace))):
        await apps.replica(app, "stop-1-a", run_id)
        await apps.pods.running("stop-1-a")
        await apps.available("stop")
        await eventually(lambda: state(platform, run_id) == "running")
        await eventually(lambda: _held(apps, "stop"))
        platform.cancel_run(run_id)
        await apps.delete("stop")
        # The finalizer keeps the Deployment until the outcome is acknowledged.
        await eventually(lambda: state(platform, run_id) == "cancelled")
        await eventually(lambda: _gone(apps, "stop"))
    run = platform.get_run(run_id)
    assert (run["state"], run["reason"]) == ("cancelled", "Cancelled")
    assert history(platform, run_id) == ["running", "cancelled"]


async def test_an_app_deleted_while_no_watcher_runs_is_reported_stopped(
        apiserver, platform, namespace, apps, new_id):
    run_id = new_id()
    platform.create_run(run_id, kind="app", pod_namespace=namespace, pod_name="away")
    app = await apps.create("away", run_id)
    watcher_env_ = env(apiserver, platform, namespace)
    async with running_watcher(settings_for(watcher_env_)):
        await apps.replica(app, "away-1-a", run_id)
        await apps.pods.running("away-1-a")
        await apps.available("away")
        await eventually(lambda: state(platform, run_id) == "running")
        await eventually(lambda: _held(apps, "away"))
    await apps.delete("away")
    kept = await apps.get("away")
    assert kept is not None
    assert kept["metadata"].get("deletionTimestamp")  # held by the outcome finalizer
    async with running_watcher(settings_for(watcher_env_)):
        await eventually(lambda: state(platform, run_id) == "cancelled")
        await eventually(lambda: _gone(apps, "away"))
    run = platform.get_run(run_id)
    assert (run["state"], run["reason"]) == ("cancelled", "Stopped")


async def test_an_app_run_bound_to_its_replica_before_the_kind_was_watched_is_adopted(
        apiserver, platform, namespace, apps, new_id):
    # Started while deployments were off: the pod path bound the run to the replica.
    run_id = new_id()
    platform.create_run(run_id, kind="app", pod_namespace=namespace, pod_name="late")
    app = await apps.create("late", run_id)
    replica = await apps.replica(app, "late-1-a", run_id)
    await apps.pods.running("late-1-a")
    await apps.available("late")
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))):
        await eventually(lambda: state(platform, run_id) == "running")

        async def held_by_the_pod() -> bool:
            return OUTCOME_FINALIZER in (await apps.pods.finalizers("late-1-a") or [])

        await eventually(held_by_the_pod)
    bound = replica["metadata"]["uid"]
    assert platform.get_run(run_id)["pod_uid"] == bound
    # Now the kind is on: the app path reports the run from its controller.
    async with running_watcher(settings_for(env(apiserver, platform, namespace))):
        await eventually(lambda: _held(apps, "late"))  # the outcome finalizer moved on

        async def released() -> bool:  # a finalizer on a replica would hold a drain up
            return await apps.pods.finalizers("late-1-a") == []

        await eventually(released)
        await apps.pods.delete("late-1-a", grace_s=0)  # a drain: not the run's end
        await apps.replica(app, "late-1-b", run_id)
        await apps.pods.running("late-1-b")
        await apps.delete("late")
        await eventually(lambda: state(platform, run_id) == "cancelled")
        await eventually(lambda: _gone(apps, "late"))
    run = platform.get_run(run_id)
    assert (run["state"], run["reason"], run["pod_uid"]) == ("cancelled", "Stopped", bound)
    assert history(platform, run_id) == ["running", "cancelled"]


async def test_progress_deadline_exceeded_ends_the_run_failed(
        apiserver, platform, namespace, apps, new_id):
    run_id = new_id()
    platform.create_run(run_id, kind="app", pod_namespace=namespace, pod_name="stuck")
    app = await apps.create("stuck", run_id, progressDeadlineSeconds=60)
    async with running_watcher(settings_for(env(apiserver, platform, namespace))):
        await apps.replica(app, "stuck-1-a", run_id)
        await apps.pods.status("stuck-1-a", {"phase": "Pending", "containerStatuses": [{
            "name": "main", "ready": False, "started": False, "restartCount": 0,
            "image": "registry.local/work:1", "imageID": "",
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]})
        await apps.unavailable("stuck", progressing="ReplicaSetUpdated")
        await eventually(lambda: _held(apps, "stuck"))
        assert state(platform, run_id) == "queued"
        await apps.unavailable("stuck", progressing="ProgressDeadlineExceeded",
                               progressing_status="False")
        await eventually(lambda: state(platform, run_id) == "failed")
        await eventually(lambda: _released(apps, "stuck"))
    run = platform.get_run(run_id)
    assert (run["state"], run["reason"]) == ("failed", "ProgressDeadlineExceeded")
    assert history(platform, run_id) == ["failed"]


async def test_without_deployments_in_kube_kinds_a_deployments_pod_is_a_bare_pod(
        apiserver, platform, namespace, apps, new_id):
    # Off by default (no RBAC on apps needed): the pod path judges such pods as before.
    run_id = new_id()
    platform.create_run(run_id, kind="app", pod_namespace=namespace, pod_name="old")
    app = await apps.create("old", run_id)
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))) as w:
        assert w.apps
        assert not any(a.enabled for a in w.apps)
        await apps.replica(app, "old-1-a", run_id)
        await apps.pods.running("old-1-a")
        await eventually(lambda: state(platform, run_id) == "running")
        assert await apps.finalizers("old") == []
    run = platform.get_run(run_id)
    assert run["pod_name"] == "old-1-a"


async def test_a_replica_crash_looping_past_the_limit_fails_the_run_once_confirmed(
        apiserver, platform, namespace, apps, new_id):
    run_id = new_id()
    platform.create_run(run_id, kind="app", pod_namespace=namespace, pod_name="loop")
    app = await apps.create("loop", run_id)
    async with running_watcher(settings_for(env(apiserver, platform, namespace))):
        await apps.replica(app, "loop-1-a", run_id)
        await apps.pods.running("loop-1-a")
        await apps.available("loop")
        await eventually(lambda: state(platform, run_id) == "running")
        # The kubelet's view after the 5th restart (states.crashloop_failure_restarts);
        # the controller counts no ready replica any more.
        await apps.pods.status("loop-1-a", {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": rfc3339()}],
            "containerStatuses": [{
                "name": "main", "ready": False, "started": False, "restartCount": 5,
                "image": "registry.local/work:1", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": "back-off 5m0s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 3, "reason": "Error",
                                             "startedAt": rfc3339(), "finishedAt": rfc3339()}}}]})
        await apps.unavailable("loop")
        await eventually(lambda: state(platform, run_id) == "failed")
        await eventually(lambda: _released(apps, "loop"))
    run = platform.get_run(run_id)
    assert (run["state"], run["reason"], run["exit_code"]) == ("failed", "CrashLoopBackOff", 3)
    assert history(platform, run_id) == ["running", "failed"]


async def test_a_watcher_streaming_its_lists_reports_apps_listed_and_live(
        apiserver, platform, namespace, apps, new_id, caplog):
    # kube.watch_list: the app reflectors list by WatchList streams too (as pods, Jobs).
    run_id = new_id()
    platform.create_run(run_id, kind="app", pod_namespace=namespace, pod_name="streamed")
    app = await apps.create("streamed", run_id)
    await apps.replica(app, "streamed-1-a", run_id)
    await apps.pods.running("streamed-1-a")
    await apps.available("streamed")
    caplog.set_level(logging.INFO, logger="watch.reflector")
    async with running_watcher(settings_for(env(apiserver, platform, namespace,
                                                SNIFFER_KUBE_WATCH_LIST="true"))):
        await eventually(lambda: state(platform, run_id) == "running")  # from the lists
        await eventually(lambda: _held(apps, "streamed"))
        platform.cancel_run(run_id)
        await apps.delete("streamed")
        await eventually(lambda: state(platform, run_id) == "cancelled")  # live
    assert history(platform, run_id) == ["running", "cancelled"]
    listed = {(r.getMessage(), getattr(r, "list", None)) for r in caplog.records
              if r.getMessage().startswith("listed ")}
    assert ("listed deployments", "streamed") in listed


class _Refuse(Exception):
    pass


class _QueryKube:
    """Records the query of the one request it is asked, then refuses it."""

    def __init__(self) -> None:
        self.queries: list[dict[str, object]] = []

    async def request(self, method: str, path: str, *, query: dict[str, object],
                      **_: object) -> None:
        self.queries.append({"method": method, "path": path, **query})
        raise _Refuse


@pytest.mark.parametrize("controller", ["Deployment", "StatefulSet"])
async def test_an_app_source_asks_for_a_streamed_list_as_the_pod_and_job_sources(controller):
    # The streaming test above passes against the test bed's API server even without the
    # parameter (its RV="" watch ended the initial events with the end bookmark anyway),
    # so the query itself is checked: sendInitialEvents only when asked, as watch_query.
    kube = _QueryKube()
    source = AppSource(kube, controller)  # type: ignore[arg-type]
    for streamed in (True, False):
        with pytest.raises(_Refuse):
            async for _ in source.watch("ns", label_selector="sniffer.io/run-id",
                                        resource_version="", timeout_seconds=60,
                                        read_timeout=5.0, send_initial_events=streamed):
                pass
    with_it, without = kube.queries
    assert (with_it["sendInitialEvents"], with_it["resourceVersionMatch"]) == (
        "true", "NotOlderThan")
    assert "sendInitialEvents" not in without
    assert with_it["path"] == f"/apis/apps/v1/namespaces/ns/{controller.lower()}s"
