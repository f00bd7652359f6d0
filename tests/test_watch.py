"""`sniffer watch` end to end: a real kube-apiserver, the reference platform over HTTP.

Each test drives pods the way a kubelet would and checks what the platform ends up
with: the right state, reason and exit code, nothing lost, nothing sent twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from sniffer.kube import KubeClient
from sniffer.podview import OUTCOME_FINALIZER, project
from testbed.platform.launcher import AdminError, PlatformServer
from tests.fixtures.watcher import Pods, eventually, running_watcher, settings_for, watcher_env
from watch.app import Watcher
from watch.store import SettledPod

SHORT_MARGIN_S = 1.0
"""The run ledger's seed margin where a test must not wait out the default."""


@pytest.fixture
def new_id():
    """Run ids short enough for a label value (63 bytes)."""
    return lambda: f"run-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def pods(kube: KubeClient, namespace: str) -> Pods:
    return Pods(kube, namespace)


def run_state(platform: PlatformServer, run_id: str) -> str | None:
    try:
        run = platform.get_run(run_id)
    except AdminError:  # e.g. during an injected outage
        return None
    return None if run is None else run["state"]


async def test_job_lifecycle_reaches_the_platform_and_the_finalizer_follows_it(
        apiserver, platform, namespace, pods, new_id):
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="job-1")
    await pods.create("job-1", run_id)
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))):
        await eventually(lambda: pods.finalizers("job-1"))
        assert await pods.finalizers("job-1") == [OUTCOME_FINALIZER]
        await pods.running("job-1")
        await eventually(lambda: run_state(platform, run_id) == "running")
        await pods.succeeded("job-1")
        await eventually(lambda: run_state(platform, run_id) == "succeeded")
        await eventually(lambda: _no_finalizer(pods, "job-1"))
    run = platform.get_run(run_id)
    assert run["exit_code"] == 0
    assert run["started_at"] is not None
    assert run["finished_at"] is not None
    assert run["pod_uid"] is not None
    assert [u["to_state"] for u in platform.updates() if u["run_id"] == run_id] == [
        "running", "succeeded"]


async def _no_finalizer(pods: Pods, name: str) -> bool:
    finalizers = await pods.finalizers(name)
    return finalizers is None or OUTCOME_FINALIZER not in finalizers


async def test_oom_killed_container_is_reported_failed_with_reason_and_exit_code(
        apiserver, platform, namespace, pods, new_id):
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="oom")
    await pods.create("oom", run_id)
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))):
        await pods.running("oom")
        await pods.terminated("oom", exit_code=137, reason="OOMKilled")
        await eventually(lambda: run_state(platform, run_id) == "failed")
    run = platform.get_run(run_id)
    assert (run["reason"], run["exit_code"]) == ("OOMKilled", 137)


@pytest.mark.parametrize("finalizers", ["true", "false"])
async def test_pod_deleted_the_instant_it_finishes_still_reports_its_outcome(
        apiserver, platform, namespace, pods, new_id, finalizers):
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="quick")
    await pods.create("quick", run_id)
    env = watcher_env(apiserver, platform, namespace, SNIFFER_FINALIZERS_ENABLED=finalizers)
    async with running_watcher(settings_for(env)):
        if finalizers == "true":
            await eventually(lambda: pods.finalizers("quick"))
        await pods.running("quick")
        await pods.terminated("quick", exit_code=3, reason="Error")
        await pods.delete("quick", grace_s=0)
        await eventually(lambda: run_state(platform, run_id) in ("failed", "succeeded"))
        # With the finalizer the pod stays until the outcome is recorded, then goes.
        await eventually(lambda: _gone(pods, "quick"))
    run = platform.get_run(run_id)
    assert (run["state"], run["reason"], run["exit_code"]) == ("failed", "Error", 3)


async def _gone(pods: Pods, name: str) -> bool:
    return await pods.get(name) is None


async def test_finalizer_holds_a_pod_deleted_while_the_watcher_is_down_until_reported(
        apiserver, platform, namespace, pods, new_id):
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="held")
    await pods.create("held", run_id)
    env = watcher_env(apiserver, platform, namespace)
    async with running_watcher(settings_for(env)):
        await eventually(lambda: pods.finalizers("held"))
        await pods.running("held")
        await eventually(lambda: run_state(platform, run_id) == "running")
    # Watcher down: the pod finishes and is deleted (pod GC, a user, node loss).
    await pods.succeeded("held")
    await pods.delete("held", grace_s=0)
    assert await pods.get("held") is not None, "the finalizer must hold the pod"
    async with running_watcher(settings_for(env)):
        await eventually(lambda: run_state(platform, run_id) == "succeeded")
        await eventually(lambda: _gone(pods, "held"))


async def test_job_stopped_by_a_deletion_while_the_watcher_is_down_reports_deleted(
        apiserver, platform, namespace, pods, new_id):
    """The watcher-sigkill finding: a running job's pod is deleted (grace 30 s) while no
    watcher runs and its container dies of the SIGTERM within the second of the request,
    so its finishedAt ties with the deletion at one-second resolution. The restarted
    watcher's first view shows both; the grace period, which the API server grants only
    to a pod not yet terminal, says the deletion came first: failed "Deleted"."""
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="stopped")
    await pods.create("stopped", run_id)
    env = watcher_env(apiserver, platform, namespace)
    async with running_watcher(settings_for(env)):
        await eventually(lambda: pods.finalizers("stopped"))
        await pods.running("stopped")
        await eventually(lambda: run_state(platform, run_id) == "running")
    await pods.delete("stopped", grace_s=30)
    deleting = project(await pods.get("stopped") or {})
    assert deleting.deletion_timestamp is not None
    assert deleting.deletion_grace_period_s == 30
    requested = deleting.deletion_timestamp - 30
    await pods.terminated("stopped", exit_code=143, reason="Error",
                          finished_at=datetime.fromtimestamp(requested, UTC))
    async with running_watcher(settings_for(env)):
        await eventually(lambda: run_state(platform, run_id) == "failed")
        await eventually(lambda: _no_finalizer(pods, "stopped"))
    run = platform.get_run(run_id)
    assert (run["reason"], run["exit_code"]) == ("Deleted", 143)


async def test_cancel_on_the_platform_then_deletion_reports_cancelled(
        apiserver, platform, namespace, pods, new_id):
    run_id = new_id()
    platform.create_run(run_id, kind="notebook", pod_namespace=namespace, pod_name="nb")
    await pods.create("nb", run_id, kind="notebook")
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))):
        await pods.running("nb")
        await eventually(lambda: run_state(platform, run_id) == "running")
        platform.cancel_run(run_id)
        await pods.delete("nb", grace_s=30)
        await eventually(lambda: run_state(platform, run_id) == "cancelled")
    assert platform.get_run(run_id)["reason"] == "Cancelled"


async def test_platform_outage_delays_updates_but_loses_none(
        apiserver, platform, namespace, pods, new_id):
    names = [f"o-{i}" for i in range(20)]
    ids = {}
    for name in names:
        ids[name] = new_id()
        platform.create_run(ids[name], pod_namespace=namespace, pod_name=name)
        await pods.create(name, ids[name])
    env = watcher_env(apiserver, platform, namespace, SNIFFER_WORKERS_MAX_DELAY_S="1")
    async with running_watcher(settings_for(env)):
        platform.set_faults(outage_s=3)
        await asyncio.gather(*(pods.running(n) for n in names))
        await asyncio.gather(*(pods.succeeded(n) for n in names[:10]))
        await eventually(lambda: all(run_state(platform, ids[n]) == "succeeded"
                                     for n in names[:10]))
        await eventually(lambda: all(run_state(platform, ids[n]) == "running"
                                     for n in names[10:]))
    assert platform.stats()["requests_by_status"].get("503", 0) > 0, \
        "the outage never answered a request, so nothing was tested"


async def test_restart_over_finished_pods_sends_no_redundant_updates(
        apiserver, platform, namespace, pods, new_id):
    names = [f"done-{i}" for i in range(300)]
    ids = {n: new_id() for n in names}
    sem = asyncio.Semaphore(32)

    async def make(name: str) -> None:
        async with sem:
            platform.create_run(ids[name], pod_namespace=namespace, pod_name=name)
            await pods.create(name, ids[name])

    await asyncio.gather(*(make(n) for n in names))
    env = watcher_env(apiserver, platform, namespace)
    async with running_watcher(settings_for(env)):
        async def finish(name: str) -> None:
            async with sem:
                await pods.running(name)
                await pods.succeeded(name)
        await asyncio.gather(*(finish(n) for n in names))
        await eventually(lambda: all(run_state(platform, ids[n]) == "succeeded"
                                     for n in names))
    before = platform.updates()
    async with running_watcher(settings_for(env)) as watcher:
        await eventually(lambda: watcher.controller is not None
                         and watcher.controller.running)
        await eventually(lambda: watcher.controller.handled >= len(names)
                         and len(watcher.queue or ()) == 0
                         and watcher.controller.longest_busy_s() == 0)
    assert platform.updates()[len(before):] == []



async def test_settled_pods_are_cached_compact_and_a_takeover_or_later_change_stays_right(
        apiserver, platform, namespace, kube, pods, new_id):
    """Finished pods whose outcome the platform acknowledged are cached as small records
    (watch.store.SettledPod). A standby seeded before its LIST caches them so from the
    start; when it takes over, it sends nothing for them; a later change of a compacted
    pod (touched by someone; deleted and its name reused by a new run) is handled from
    its full view."""
    names = [f"s-{i}" for i in range(8)]
    ids = {n: new_id() for n in names}
    base = watcher_env(apiserver, platform, namespace, SNIFFER_LEADER_ENABLED="true",
                       SNIFFER_LEADER_LEASE_DURATION_S="4",
                       SNIFFER_LEADER_RENEW_DEADLINE_S="3",
                       SNIFFER_LEADER_RETRY_PERIOD_S="0.5")

    def settled(watcher: Watcher) -> int:
        return watcher.store.settled if watcher.store is not None else 0

    def idle(watcher: Watcher) -> bool:
        return (watcher.controller is not None and watcher.controller.running
                and len(watcher.queue or ()) == 0 and watcher.controller.longest_busy_s() == 0)

    first_running = running_watcher(settings_for({**base, "SNIFFER_LEADER_IDENTITY": "first"}))
    first = await first_running.__aenter__()
    first_stopped = False
    try:
        await eventually(lambda: first.controller is not None and first.controller.running)
        for name in names:
            platform.create_run(ids[name], pod_namespace=namespace, pod_name=name)
            await pods.create(name, ids[name])
        await asyncio.gather(*(pods.running(n) for n in names))
        await asyncio.gather(*(pods.succeeded(n) for n in names))
        await eventually(lambda: all(run_state(platform, ids[n]) == "succeeded" for n in names))
        await eventually(lambda: settled(first) == len(names))  # once the finalizer left
        handled = first.controller.handled
        await kube.patch_pod(namespace, names[0], {"metadata": {"annotations": {
            "example.com/touched": "1"}}})
        await eventually(lambda: first.controller.handled > handled and idle(first))
        assert settled(first) == len(names), "a touched settled pod is judged as it arrives"
        # The second watcher's seed judges only pods older than it by its margin: one
        # second (creationTimestamp's resolution) instead of the default five, and waited
        # for on the wall clock only if the pods are younger than that.
        created = max([project(await pods.get(n) or {}).created_at for n in names])
        await eventually(lambda: time.time() > created + SHORT_MARGIN_S)
        before = len(platform.updates())

        async with running_watcher(
                settings_for({**base, "SNIFFER_LEADER_IDENTITY": "second"}),
                seed_margin_s=SHORT_MARGIN_S) as second:
            assert not second.controller.running
            assert settled(second) == len(names), "the standby's LIST judged by its seed"
            await first_running.__aexit__(None, None, None)  # releases the lease
            first_stopped = True
            await eventually(lambda: idle(second) and second.controller.handled >= len(names))
            assert platform.updates()[before:] == [], "nothing re-sent for settled pods"

            reused = names[1]
            await pods.delete(reused, grace_s=0)
            await eventually(lambda: _gone(pods, reused))
            await eventually(lambda: second.store.get(f"{namespace}/{reused}") is None)
            new_run = new_id()
            platform.create_run(new_run, pod_namespace=namespace, pod_name=reused)
            await pods.create(reused, new_run)
            await pods.running(reused)
            await eventually(lambda: run_state(platform, new_run) == "running")
            await pods.terminated(reused, exit_code=2, reason="Error")
            await eventually(lambda: run_state(platform, new_run) == "failed")
            await eventually(lambda: isinstance(
                second.store.get(f"{namespace}/{reused}"), SettledPod))
        assert [u["run_id"] for u in platform.updates()[before:]] == [new_run, new_run]
        assert all(run_state(platform, ids[n]) == "succeeded" for n in names)
    finally:
        if not first_stopped:
            await first_running.__aexit__(None, None, None)
