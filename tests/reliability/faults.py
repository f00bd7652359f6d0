"""The fault steps scenarios are made of. Each is an async function of a `Ctx` that records
its windows (`Ctx.fault`) and watcher gaps (`Ctx.gap_begins`), and never leaves a fault on:
whatever happens, a platform fault is cleared and the proxy flows again when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from testbed.platform.launcher import AdminError
from testbed.simulator.lifecycles import Expectation, State
from testbed.simulator.records import SimResult
from tests.reliability.context import Ctx
from tests.reliability.model import Window
from tests.reliability.processes import WatcherProcess
from tests.reliability.verdict import scan_logs

OPERATOR_REASON = "CancelledByOperator"


# -- the Kubernetes side (needs Scenario.proxy) ---------------------------------------------

async def cut_streams(ctx: Ctx, at: tuple[float, ...]) -> None:
    """Close every watcher connection (watch streams, in-flight patches) at each fraction."""
    assert ctx.proxy is not None
    for fraction in at:
        await ctx.at(fraction)
        async with ctx.fault("watch stream cut"):
            await asyncio.to_thread(ctx.proxy.cut)


async def half_open(ctx: Ctx, at: float, seconds: float) -> None:
    """Bytes stop, connections stay open (new ones too), for `seconds`; then they flow."""
    assert ctx.proxy is not None
    await ctx.at(at)
    async with ctx.fault(f"half-open streams for {seconds:g}s"):
        await asyncio.to_thread(ctx.proxy.freeze)
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(ctx.proxy.thaw)


async def wait_for_log(ctx: Ctx, key: str, at_least: int, bound_s: float = 300.0) -> bool:
    """Poll the watcher logs until the notable message `key` appears `at_least` times."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        _, counts, _ = scan_logs(w.log_path for w in ctx.watchers.values())
        if counts.get(key, 0) >= at_least:
            return True
        await asyncio.sleep(0.5)
    return False


async def gone_after_compaction_and_restart(ctx: Ctx, phase_jobs: int) -> None:
    """Phase 1 runs; mid-way the watcher is cut off from the API server (the proxy refuses
    it). Phase 1 ends unseen, etcd is compacted, the API server restarts (same data, same
    port), phase 2 starts, and the watcher is let back in: its watch from the old
    resourceVersion must get 410 Gone at open and relist."""
    assert ctx.proxy is not None and ctx.restartable is not None
    half = dataclasses.replace(ctx.scenario.load, jobs=phase_jobs)
    phase1 = ctx.start_simulation(half, label="a")
    phase2: asyncio.Task[SimResult] | None = None
    await ctx.at(0.5)
    gap = ctx.gap_begins("watcher cut off from the API server")
    try:
        async with ctx.fault("API server unreachable, etcd compacted, API server restarted"):
            await asyncio.to_thread(ctx.proxy.block)
            await phase1
            revision = await asyncio.to_thread(ctx.kube_server.compact_etcd)
            ctx.notes.append(f"etcd compacted at revision {revision} while the watcher was "
                             "cut off")
            await asyncio.to_thread(ctx.restartable.restart)
            ctx.notes.append("API server restarted on the same data directory and port")
            phase2 = ctx.start_simulation(half, label="b")
            await asyncio.sleep(5)
            lists = scan_logs(w.log_path for w in ctx.watchers.values())[1]["lists"]
            await asyncio.to_thread(ctx.proxy.unblock)
            if not await wait_for_log(ctx, "expired", 1):
                ctx.notes.append("no 410 seen after the restart")
            # The gap ends when the relist has given the cache a view again, not at the
            # 410: a deletion that completes between the two is first seen finished.
            if not await wait_for_log(ctx, "lists", lists + 1):
                ctx.notes.append("no relist seen after the 410")
            ctx.gap_ends(gap)
    finally:
        await asyncio.to_thread(ctx.proxy.unblock)
        if gap.end is None:
            ctx.gap_ends(gap)
    if phase2 is not None:
        await phase2


# -- the platform side -----------------------------------------------------------------

@contextlib.asynccontextmanager
async def platform_faults(ctx: Ctx, name: str, **knobs: Any) -> AsyncIterator[Window]:
    async with ctx.fault(name) as window:
        await asyncio.to_thread(ctx.platform.set_faults, **knobs)
        try:
            yield window
        finally:
            await asyncio.to_thread(ctx.platform.clear_faults)


async def platform_burst(ctx: Ctx, at: float, seconds: float, name: str,
                         **knobs: Any) -> None:
    await ctx.at(at)
    async with platform_faults(ctx, name, **knobs):
        await asyncio.sleep(seconds)


async def platform_outage(ctx: Ctx, at: float, seconds: float) -> None:
    """Every /api/v1 call answers 503 with Retry-After = the remaining time."""
    await ctx.at(at)
    async with ctx.fault(f"platform outage {seconds:g}s"):
        await asyncio.to_thread(ctx.platform.set_faults, outage_s=seconds)
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(ctx.platform.clear_faults)


class Meddler:
    """Somebody else moves runs ahead of Sniffer on the platform: some queued runs to
    running, some running runs to cancelled (an operator). Sniffer then meets 409s
    (its update is behind a terminal state) and 412s (its precondition is stale)."""

    def __init__(self, ctx: Ctx, share: float = 0.04) -> None:
        self.ctx = ctx
        self.share = share
        self.attempted: set[str] = set()
        self.moved_running = 0
        self.moved_cancelled = 0

    def _patch(self, run_id: str, **fields: Any) -> bool:
        try:
            status, body = self.ctx.platform.patch_run(run_id, **fields)
        except (AdminError, OSError):
            return False
        return status == 200 and bool(body.get("applied"))

    def _round(self) -> None:
        runs = self.ctx.platform.list_runs(states=("queued", "running"))
        for run in runs:
            if run["id"] in self.attempted or self.ctx.rng.random() > self.share:
                continue
            self.attempted.add(run["id"])
            if run["state"] == "queued":
                self.moved_running += self._patch(run["id"], state="running",
                                                  expected_state="queued")
            else:
                self.moved_cancelled += self._patch(
                    run["id"], state="cancelled", reason=OPERATOR_REASON,
                    message="cancelled by an operator (reliability test)",
                    expected_state="running")

    async def run(self, start: float, stop: float, every_s: float = 2.0) -> None:
        await self.ctx.at(start)
        async with self.ctx.fault("runs moved ahead by someone else (409/412)"):
            while time.time() < self.ctx.sim_started + stop * self.ctx.planned_s:
                with contextlib.suppress(AdminError, OSError):
                    await asyncio.to_thread(self._round)
                await asyncio.sleep(every_s)
        self.ctx.notes.append(f"moved {self.moved_running} runs to running and "
                              f"{self.moved_cancelled} to cancelled ahead of Sniffer")

    async def expect(self, ctx: Ctx) -> None:
        """A run the operator cancelled stays cancelled: that is the platform's truth."""
        runs = {r["id"]: r for r in await asyncio.to_thread(ctx.platform.list_runs)}
        for run_id in self.attempted:
            run = runs.get(run_id)
            if run is not None and run.get("reason") == OPERATOR_REASON:
                ctx.overrides[run_id] = Expectation(State.CANCELLED, OPERATOR_REASON, None)


# -- processes ---------------------------------------------------------------------------

async def restart(watcher: WatcherProcess, after_s: float) -> None:
    await asyncio.sleep(after_s)
    watcher.start()
    await watcher.wait_ready()


async def kill_leader_with_standby(ctx: Ctx, at: float) -> None:
    """SIGKILL the leader; the standby must take over (no gap: its cache saw everything).
    Once it has, the killed replica comes back as a standby, as its Deployment would
    restart it."""
    await ctx.at(at)
    leader = await ctx.leader()
    async with ctx.fault(f"leader {leader.name} SIGKILLed, standby takes over"):
        killed_at = time.time()
        await asyncio.to_thread(leader.kill)
        new = await ctx.leader(other_than=leader)
        ctx.notes.append(f"{new.name} took over from {leader.name} "
                         f"{time.time() - killed_at:.1f} s after the kill")
        await restart(leader, 0)


async def kill_all_watchers(ctx: Ctx, at: float, restart_after_s: float = 3.0) -> None:
    """SIGKILL every replica mid-burst and restart them: a gap nobody watches."""
    await ctx.at(at)
    gap = ctx.gap_begins("every watcher SIGKILLed")
    async with ctx.fault("sniffer watch SIGKILLed mid-burst, restarted"):
        for watcher in ctx.watchers.values():
            await asyncio.to_thread(watcher.kill)
        await asyncio.gather(*(restart(w, restart_after_s) for w in ctx.watchers.values()))
        if ctx.scenario.leader_election:
            await ctx.leader()
    ctx.gap_ends(gap)


async def stop_all_watchers(ctx: Ctx) -> None:
    for watcher in ctx.watchers.values():
        code = await watcher.stop()
        if code not in (0, None):
            ctx.notes.append(f"{watcher.name} exited with {code} on SIGTERM")


async def reconcile_race(ctx: Ctx, start: float, stop: float) -> None:
    """`sniffer reconcile` passes back to back while the watcher works."""
    await ctx.at(start)
    passes = 0
    async with ctx.fault("sniffer reconcile racing the watcher"):
        while time.time() < ctx.sim_started + stop * ctx.planned_s:
            await ctx.reconcile()
            passes += 1
    ctx.notes.append(f"{passes} reconcile passes raced the watcher")


async def reconcile_killed_and_rerun(ctx: Ctx, kill_after_updates: int,
                                     env: Mapping[str, str] | None = None) -> None:
    """A pass SIGKILLed mid-repair, a rerun that finishes, and a third pass that must find
    nothing left to repair."""
    await asyncio.sleep(5.5)  # the runs must outlive the reconciler's grace period
    async with ctx.fault("sniffer reconcile SIGKILLed mid-pass, rerun"):
        await ctx.reconcile(kill_after_updates=kill_after_updates, env=env)
        await ctx.reconcile(env=env)
    await ctx.reconcile(env=env)

