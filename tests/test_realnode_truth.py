"""Truth tests: Sniffer judged by what a real kubelet writes (issue 12).

Every lifecycle of `testbed.realcatalogue` is played for real on the session's real node
(`real_node`, whose pod GC collects finished pods at once), all at once, and the
reference Platform must end holding the state, reason and exit code the catalogue says,
with start and finish times: through `sniffer watch` alone (with and without its
finalizers), and through `sniffer reconcile` alone after a watcher outage.
These tests need root and this kind of machine, and FAIL (never skip) without the node.
Every wait is for a condition (a pod's status, a platform run); the bounds only turn a
broken node into a failure.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from config import load_settings
from reconcile.app import Reconciler
from sniffer.kube import KubeClient
from sniffer.platform import PlatformClient
from sniffer.podview import OUTCOME_FINALIZER
from testbed.platform.launcher import PlatformServer
from testbed.realcatalogue import CATALOGUE, Act
from testbed.realdriver import RealResult, drive
from testbed.simulator.kubeapi import PodApi
from testbed.verdict import mismatches, regressions
from tests.fixtures.kube import _purge_namespace
from tests.fixtures.realnode import RealNodeBed
from tests.fixtures.watcher import eventually, running_watcher, settings_for, watcher_env

IMAGE_PULL_FAILURE_AFTER_S = "2"
"""Sniffer's states.image_pull_failure_after_s in these tests: a stuck image fails soon."""
DECIDED_WITHIN_S = 120.0
"""How long the driver waits for the platform to decide a stuck pod before reaping it."""


@pytest.fixture
async def truth(real_node: RealNodeBed) -> AsyncIterator[tuple[KubeClient, str]]:
    """A KubeClient of the real node's API server and a fresh namespace there."""
    namespace = f"truth-{secrets.token_hex(3)}"
    kube = await KubeClient.connect(kubeconfig=str(real_node.kube.kubeconfig), pool_size=64)
    await PodApi(kube, asyncio.Semaphore(8)).ensure_namespace(namespace)
    try:
        yield kube, namespace
    finally:
        await kube.close()
        _purge_namespace(real_node.kube, namespace)


def _played(result: RealResult) -> dict[str, str]:
    return {p.run_id: p.lifecycle.name for p in result.plays}


def _wrong(result: RealResult, platform: PlatformServer) -> list[tuple[str, Any]]:
    runs = {r["id"]: r for r in platform.list_runs()}
    played = _played(result)
    return [(played[m.run_id], m) for m in mismatches(result.expected, runs)]


def _times_are_set(result: RealResult, platform: PlatformServer) -> list[tuple[str, Any]]:
    """Lifecycles whose terminal run lacks a finish time, or started after it finished."""
    bad = []
    for run_id, name in _played(result).items():
        run = platform.get_run(run_id)
        assert run is not None
        started, finished = run.get("started_at"), run.get("finished_at")
        if finished is None or (started is not None and started > finished):
            bad.append((name, {"started_at": started, "finished_at": finished}))
    return bad


@pytest.mark.parametrize("finalizers", ["true", "false"])
async def test_every_real_lifecycle_reaches_the_platform_through_sniffer_watch(
        real_node: RealNodeBed, platform: PlatformServer, truth: tuple[KubeClient, str],
        finalizers: str) -> None:
    # Without finalizers, pods that deletions or pod GC remove are gone for good once the
    # kubelet is done: the watcher must have reported them from the versions it saw.
    kube, namespace = truth
    env = watcher_env(real_node.kube, platform, namespace,
                      SNIFFER_FINALIZERS_ENABLED=finalizers,
                      SNIFFER_STATES_IMAGE_PULL_FAILURE_AFTER_S=IMAGE_PULL_FAILURE_AFTER_S)
    async with running_watcher(settings_for(env)):
        result = await drive(kube, platform.url, platform.token_file, list(CATALOGUE),
                             namespace=namespace, image=real_node.node.image,
                             decided_within_s=DECIDED_WITHIN_S)
        assert result.errors == {}
        try:
            await eventually(lambda: not _wrong(result, platform), bound_s=90)
        except AssertionError:
            assert _wrong(result, platform) == []  # which lifecycles, and how
    assert regressions(platform.updates()) == []
    assert _times_are_set(result, platform) == []


# A job ended by a deletion or a disruption, seen only in the version the kubelet leaves
# (phase terminal, deletionGracePeriodSeconds 0, deletionTimestamp moved to the final
# delete), looks like a job that finished first and was deleted afterwards: the moment the
# deletion was asked for is gone from the pod. The watcher, which sees the Terminating
# version first, gets these right (the test above); a reconciler after an outage reports
# the containers' own end (succeeded for a process exiting 0 on SIGTERM, failed "Error"
# 137 for one killed after its grace period). Deciding them needs the DisruptionTarget
# condition's transition time, which Sniffer's pod projection does not keep.
ONLY_THE_WATCHER_CAN_TELL = frozenset({
    "deleted", "deleted-ignoring-term", "evicted-api", "noexecute-taint", "preempted"})
# What a reconciler can repair alone after a watcher outage: pods that are still there
# when it runs (left alone to their end, or held by the finalizer the watcher added
# before it went down). Pods the platform reaps on its own decision need a decider first.
RECONCILABLE = [name for name, lc in CATALOGUE.items()
                if lc.act not in (Act.REAP_CRASHLOOP, Act.REAP_WHEN_DECIDED, Act.AWAIT_POD_GC)
                and name not in ONLY_THE_WATCHER_CAN_TELL]


async def test_every_real_lifecycle_is_repaired_by_sniffer_reconcile_after_a_watcher_outage(
        real_node: RealNodeBed, platform: PlatformServer,
        truth: tuple[KubeClient, str]) -> None:
    kube, namespace = truth
    # No watcher runs: every pod carries the finalizer a watcher would have added before
    # its outage, so deleted pods wait, finished, for the reconciler.
    result = await drive(kube, platform.url, platform.token_file, RECONCILABLE,
                         namespace=namespace, image=real_node.node.image,
                         finalizers=(OUTCOME_FINALIZER,), decided_within_s=0)
    assert result.errors == {}
    settings = load_settings(env={
        "SNIFFER_PLATFORM_URL": platform.url,
        "SNIFFER_PLATFORM_TOKEN_FILE": str(platform.token_file),
        "SNIFFER_KUBE_KUBECONFIG": str(real_node.kube.kubeconfig),
        "SNIFFER_KUBE_NAMESPACES": namespace, "SNIFFER_RECONCILE_GRACE_PERIOD_S": "0",
        "SNIFFER_LEADER_ENABLED": "false", "SNIFFER_HEALTH_PORT": "0"})
    api = PlatformClient(platform.url, platform.token_file)
    try:
        reconciler = Reconciler(settings, kube=kube, platform=api, retry_delay_s=0.01)
        await reconciler.run_pass(asyncio.Event())
        assert _wrong(result, platform) == []
        second = await reconciler.run_pass(asyncio.Event())
    finally:
        await api.close()
    assert [r.mismatch for r in second.results if r.mismatch.run_id in result.expected] == []
    assert regressions(platform.updates()) == []
    assert _times_are_set(result, platform) == []
