"""`sniffer watch` as real processes: failover after SIGKILL, clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from sniffer.kube import KubeClient
from sniffer.kubedecode import NotFound
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from tests.fixtures.watcher import Pods, eventually, watcher_env
from tests.test_watch import run_state


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "SNIFFER_TELEMETRY_LOG_FORMAT": "text"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cli", "watch"], env=full,
                                stdout=out, stderr=out)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


async def holder(kube: KubeClient, namespace: str) -> str | None:
    try:
        lease = await kube.request_json(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/sniffer-watch")
    except NotFound:  # not created yet; any other failure fails the test
        return None
    return lease["spec"].get("holderIdentity")


async def test_standby_takes_over_after_the_leader_is_killed_and_reports_what_it_missed(
        apiserver: ApiServer, platform: PlatformServer, namespace: str, kube: KubeClient,
        tmp_path: Path):
    pods = Pods(kube, namespace)
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    platform.create_run(run_id, pod_namespace=namespace, pod_name="ha")
    await pods.create("ha", run_id)
    base = watcher_env(apiserver, platform, namespace, SNIFFER_LEADER_ENABLED="true",
                       SNIFFER_LEADER_LEASE_DURATION_S="4", SNIFFER_LEADER_RENEW_DEADLINE_S="3",
                       SNIFFER_LEADER_RETRY_PERIOD_S="0.5")
    procs = {name: spawn({**base, "SNIFFER_LEADER_IDENTITY": name}, tmp_path / f"{name}.log")
             for name in ("replica-a", "replica-b")}
    try:
        leader = await eventually(lambda: holder(kube, namespace))
        await pods.running("ha")
        await eventually(lambda: run_state(platform, run_id) == "running")
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(10)
        await pods.succeeded("ha")
        standby = next(n for n in procs if n != leader)
        await eventually(lambda: _is(holder(kube, namespace), standby))
        await eventually(lambda: run_state(platform, run_id) == "succeeded")
        assert procs[standby].poll() is None
    finally:
        for proc in procs.values():
            stop(proc)


async def _is(value, expected) -> bool:
    return await value == expected


async def test_sigterm_during_a_burst_exits_cleanly_and_a_restart_loses_nothing(
        apiserver: ApiServer, platform: PlatformServer, namespace: str, kube: KubeClient,
        tmp_path: Path):
    pods = Pods(kube, namespace)
    names = [f"b-{i}" for i in range(100)]
    ids = {n: f"run-{uuid.uuid4().hex[:12]}" for n in names}
    sem = asyncio.Semaphore(16)

    async def make(name: str) -> None:
        async with sem:
            platform.create_run(ids[name], pod_namespace=namespace, pod_name=name)
            await pods.create(name, ids[name])

    await asyncio.gather(*(make(n) for n in names))
    env = watcher_env(apiserver, platform, namespace, SNIFFER_SHUTDOWN_DRAIN_TIMEOUT_S="5")
    proc = spawn(env, tmp_path / "burst.log")
    try:
        await eventually(lambda: all_finalized(pods, names))
        platform.set_faults(latency_ms=300)  # keep updates in flight at SIGTERM

        async def finish(name: str) -> None:
            async with sem:
                await pods.running(name)
                await pods.succeeded(name)

        await asyncio.gather(*(finish(n) for n in names))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        stop(proc)
        platform.clear_faults()
    assert "sniffer watch stopped" in (tmp_path / "burst.log").read_text()
    restarted = spawn(env, tmp_path / "restart.log")
    try:
        await eventually(lambda: all(run_state(platform, ids[n]) == "succeeded"
                                     for n in names))
    finally:
        restarted.send_signal(signal.SIGTERM)
        await asyncio.to_thread(restarted.wait, 30)
    moves = [(u["from_state"], u["to_state"]) for u in platform.updates()
             if u["run_id"] in set(ids.values())]
    assert all(f != "succeeded" for f, _ in moves), "a terminal run was changed"


async def all_finalized(pods: Pods, names: list[str]) -> bool:
    results = await asyncio.gather(*(pods.finalizers(n) for n in names))
    return all(results)
