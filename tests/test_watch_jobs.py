"""`sniffer watch` over Job-backed runs on a real kube-apiserver, no Job controller: each
test writes the Job's status through its status subresource, as the Job controller
would, and creates the attempt pods the controller would create. The reference platform
over HTTP holds the run; what it shows (state, reason, exit code, history) is checked.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from sniffer.kube import KubeClient
from sniffer.podview import OUTCOME_FINALIZER
from testbed.platform.launcher import PlatformServer
from tests.fixtures.jobs import Jobs
from tests.fixtures.watcher import eventually, running_watcher, settings_for, watcher_env


@pytest.fixture
def new_id():
    return lambda: f"run-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def jobs(kube: KubeClient, namespace: str) -> Jobs:
    return Jobs(kube, namespace)


def history(platform: PlatformServer, run_id: str) -> list[str]:
    return [u["to_state"] for u in platform.updates() if u["run_id"] == run_id]


def state(platform: PlatformServer, run_id: str) -> str | None:
    run = platform.get_run(run_id)
    return None if run is None else run["state"]


async def test_a_failed_attempt_the_job_retries_is_not_the_runs_failure(
        apiserver, platform, namespace, jobs, new_id):
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="retry")
    job = await jobs.create("retry", run_id)
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))):
        await jobs.attempt(job, "retry-a", run_id)
        await jobs.active("retry")
        await jobs.pods.running("retry-a")
        await eventually(lambda: state(platform, run_id) == "running")
        await jobs.pods.terminated("retry-a", exit_code=1, reason="Error")
        await jobs.active("retry", failed=1)
        await jobs.attempt(job, "retry-b", run_id)
        await jobs.pods.running("retry-b")
        # The attempt's failure was seen (the Job counts it) and the run goes on.
        await jobs.pods.succeeded("retry-b")
        await jobs.complete("retry", failed=1)
        await eventually(lambda: state(platform, run_id) == "succeeded")
    assert "failed" not in history(platform, run_id)
    run = platform.get_run(run_id)
    assert (run["reason"], run["exit_code"]) == ("Completed", 0)
    assert run["pod_uid"] == job["metadata"]["uid"]


async def test_a_job_that_exhausts_its_retries_fails_with_the_last_exit_code(
        apiserver, platform, namespace, jobs, new_id):
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="doomed")
    job = await jobs.create("doomed", run_id, backoff_limit=1)
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))):
        await jobs.active("doomed")
        for n, code, ago_s in (("doomed-a", 1, 20), ("doomed-b", 7, 0)):
            await jobs.attempt(job, n, run_id)
            await jobs.pods.running(n)
            await eventually(lambda: state(platform, run_id) == "running")
            await jobs.attempt_failed(n, exit_code=code, ago_s=ago_s)
        await jobs.failed("doomed", failed=2, reason="BackoffLimitExceeded")
        await eventually(lambda: state(platform, run_id) == "failed")
    run = platform.get_run(run_id)
    assert (run["reason"], run["exit_code"]) == ("BackoffLimitExceeded", 7)
    assert history(platform, run_id) == ["running", "failed"]


async def test_a_jobs_failure_seen_before_its_last_attempts_end_carries_that_attempts_code(
        apiserver, platform, namespace, jobs, new_id):
    # The pod and Job watches are separate streams: the Job's failure can reach the watcher
    # before the end of the attempt that caused it. Writing them in that order makes it
    # certain; the failure must then wait for the attempt, not name the one before it.
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="racing")
    job = await jobs.create("racing", run_id, backoff_limit=1)
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))):
        await jobs.active("racing")
        await jobs.attempt(job, "racing-a", run_id)
        await jobs.pods.running("racing-a")
        await eventually(lambda: state(platform, run_id) == "running")
        await jobs.attempt_failed("racing-a", exit_code=11, ago_s=20)
        await jobs.attempt(job, "racing-b", run_id)
        await jobs.pods.running("racing-b")
        await jobs.failed("racing", failed=2, reason="BackoffLimitExceeded")
        await asyncio.sleep(1.0)  # the Job's failure reaches the watcher first
        await jobs.attempt_failed("racing-b", exit_code=56, ago_s=0)
        await eventually(lambda: state(platform, run_id) == "failed")
    run = platform.get_run(run_id)
    assert (run["reason"], run["exit_code"]) == ("BackoffLimitExceeded", 56)
    assert history(platform, run_id) == ["running", "failed"]


async def test_the_job_carries_the_outcome_finalizer_until_its_outcome_is_acknowledged(
        apiserver, platform, namespace, jobs, new_id):
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="held")
    job = await jobs.create("held", run_id)
    env = watcher_env(apiserver, platform, namespace)
    async with running_watcher(settings_for(env)):
        await eventually(lambda: jobs.finalizers("held"))
        assert OUTCOME_FINALIZER in (await jobs.finalizers("held") or [])
        await jobs.attempt(job, "held-a", run_id)
        await jobs.active("held")
        await jobs.pods.running("held-a")
        await eventually(lambda: state(platform, run_id) == "running")
    # Watcher down: the Job finishes and is deleted (a TTL, a user): the finalizer
    # keeps it, finished, until a watcher reports it.
    await jobs.pods.succeeded("held-a")
    await jobs.complete("held")
    await jobs.delete("held")
    kept = await jobs.get("held")
    assert kept is not None
    assert kept["metadata"].get("deletionTimestamp")
    async with running_watcher(settings_for(env)):
        await eventually(lambda: state(platform, run_id) == "succeeded")
        await eventually(lambda: _gone(jobs, "held"))
    assert history(platform, run_id) == ["running", "succeeded"]


async def _gone(jobs: Jobs, name: str) -> bool:
    return await jobs.get(name) is None


async def _released(jobs: Jobs, name: str) -> bool:
    return await jobs.finalizers(name) == []


async def test_a_job_deleted_by_the_platforms_cancel_ends_cancelled(
        apiserver, platform, namespace, jobs, new_id):
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="stop")
    job = await jobs.create("stop", run_id)
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))):
        await jobs.attempt(job, "stop-a", run_id)
        await jobs.active("stop")
        await jobs.pods.running("stop-a")
        await eventually(lambda: state(platform, run_id) == "running")
        platform.cancel_run(run_id)
        await jobs.delete("stop")
        await eventually(lambda: state(platform, run_id) == "cancelled")
        await eventually(lambda: _gone(jobs, "stop"))
    assert history(platform, run_id) == ["running", "cancelled"]


async def test_a_suspended_job_stays_queued(apiserver, platform, namespace, jobs, new_id):
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="later")
    await jobs.create("later", run_id, suspend=True)
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))) as w:
        await eventually(lambda: jobs.finalizers("later"))
        # The finalizer is added only once the run was read as queued: it was handled.
        assert w.controller is not None
    assert state(platform, run_id) == "queued"
    assert history(platform, run_id) == []


async def test_attempt_pods_deleted_after_their_job_leave_no_tombstone(
        apiserver, platform, namespace, jobs, new_id):
    # Background propagation deletes the Job first, then its pods: by then the Job path
    # has forgotten the Job, so the pod path must let the attempts' tombstones go.
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="ttl")
    job = await jobs.create("ttl", run_id)
    async with running_watcher(settings_for(watcher_env(apiserver, platform, namespace))) as w:
        assert w.store is not None
        assert w.jobs is not None
        await jobs.attempt(job, "ttl-a", run_id)
        await jobs.active("ttl")
        await jobs.pods.running("ttl-a")
        await jobs.pods.succeeded("ttl-a")
        await jobs.complete("ttl")
        await eventually(lambda: state(platform, run_id) == "succeeded")
        await eventually(lambda: _released(jobs, "ttl"))
        await jobs.delete("ttl")
        await eventually(lambda: _gone(jobs, "ttl"))
        await eventually(lambda: w.jobs.store.get(f"{namespace}/ttl") is None)
        await jobs.pods.delete("ttl-a", grace_s=0)
        # Seen deleted, and its tombstone let go (it stays forever otherwise).
        await eventually(lambda: w.store.get(f"{namespace}/ttl-a") is None)
        assert w.store.tombstones == 0
    assert history(platform, run_id) == ["running", "succeeded"]


async def test_without_jobs_watched_a_jobs_pods_are_judged_as_bare_pods(
        apiserver, platform, namespace, jobs, new_id):
    # `kube.kinds: [pods]`: as the reconciler judges them then (tests/test_reconcile_jobs.py)
    # and as Sniffer did before it knew Jobs, the attempt pod speaks for the run, holds
    # the outcome finalizer and leaves no tombstone once its deletion is reported.
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="unwatched-a")
    job = await jobs.create("unwatched", run_id)
    env = watcher_env(apiserver, platform, namespace, SNIFFER_KUBE_KINDS="pods")
    async with running_watcher(settings_for(env)) as w:
        assert w.store is not None
        attempt = await jobs.attempt(job, "unwatched-a", run_id)
        await jobs.pods.running("unwatched-a")
        await eventually(lambda: state(platform, run_id) == "running")

        async def held() -> bool:
            return OUTCOME_FINALIZER in (await jobs.pods.finalizers("unwatched-a") or [])

        await eventually(held)
        await jobs.pods.delete("unwatched-a", grace_s=0)
        await eventually(lambda: state(platform, run_id) == "failed")
        await eventually(lambda: w.store.get(f"{namespace}/unwatched-a") is None)
        assert w.store.tombstones == 0
    run = platform.get_run(run_id)
    assert (run["reason"], run["pod_uid"]) == ("Deleted", attempt["metadata"]["uid"])
    assert history(platform, run_id) == ["running", "failed"]


async def test_the_job_fixture_keeps_a_started_jobs_start_time(apiserver, jobs, new_id):
    # Regression: a second `active` in a later second sent a new startTime, which the API
    # server refuses on a running Job (422, immutable). It failed in CI when the test
    # above crossed a second boundary; a start long ago makes that crossing certain.
    await jobs.create("started", new_id())
    long_ago = "2026-01-01T00:00:00Z"
    await jobs.status("started", {"startTime": long_ago, "active": 1})
    job = await jobs.active("started", failed=1)
    assert (job["status"]["startTime"], job["status"]["failed"]) == (long_ago, 1)


async def test_a_watcher_streaming_its_lists_reports_jobs_listed_and_live(
        apiserver, platform, namespace, jobs, new_id, caplog):
    # kube.watch_list: both reflectors (pods and Jobs) list by WatchList streams.
    run_id = new_id()
    platform.create_run(run_id, pod_namespace=namespace, pod_name="streamed")
    job = await jobs.create("streamed", run_id)
    await jobs.attempt(job, "streamed-a", run_id)
    await jobs.active("streamed")
    await jobs.pods.running("streamed-a")
    env = watcher_env(apiserver, platform, namespace, SNIFFER_KUBE_WATCH_LIST="true")
    caplog.set_level(logging.INFO, logger="watch.reflector")
    async with running_watcher(settings_for(env)):
        await eventually(lambda: state(platform, run_id) == "running")  # from the lists
        await jobs.pods.succeeded("streamed-a")
        await jobs.complete("streamed")
        await eventually(lambda: state(platform, run_id) == "succeeded")  # live
    assert history(platform, run_id) == ["running", "succeeded"]
    listed = {(r.getMessage(), getattr(r, "list", None)) for r in caplog.records
              if r.getMessage().startswith("listed ")}
    assert listed == {("listed pods", "streamed"), ("listed jobs", "streamed")}
