"""The soak: steady load for a long time with periodic faults; resources must stay flat.

Contract:
* `run_soak(config, bed, workdir)` runs one `Scenario` (so it ends with the same checks as
  every other: lost, regressed, finalizers left, tracebacks, clean exit) whose drive is a
  steady simulation — ``rate`` jobs per second for ``minutes``, every pod deleted the
  moment it finishes, so the live population is steady as in production — beside a fault
  cycle (a fault every ``fault_every_s``: watch streams cut, platform 500 and 429 bursts,
  connection resets, slow-drip bodies, a 20 s platform outage) and a sampler.
* Two replicas run (leader and standby, leader election on); every ``sample_every_s`` the
  sampler reads each one's RSS (``/proc/<pid>/status`` VmRSS), open file descriptors
  (``/proc/<pid>/fd``), split into TCP connections to the platform (``platform_conns``)
  and to the Kubernetes API (``kube_conns``, through the soak's proxy), matched through
  ``/proc/<pid>/net/tcp{,6}``, and the rest (``other_fds``), and, from
  ``/healthz``, its asyncio task count, cached pods, tombstones and work-queue depth.
* Why the split: an aiohttp pool (the platform client's, and the Kubernetes client's)
  grows while a fault or a burst ties connections up, and hands out pooled connections
  oldest first, so under steady load every one of them is reused well within the 15 s
  keep-alive and none is ever idle long enough to close. A pool stays at its high-water
  mark, bounded by its cap: held, not leaked. So each kind of connection must stay at or
  under its pool's cap (`POOL_CAPS`), and every other descriptor must stay flat.
* No fault starts in the last ``quiet_tail_s`` of the load, so the run ends with a quiet
  tail: what a fault holds for a while (tasks, buffers, tombstones) has gone by then;
  what leaks has not.
* Flat means: after a warm-up (the first ``warmup_s``), the median of the late samples is
  at most the median of the first quarter plus a margin — RSS x1.25 + 8 MiB, other file
  descriptors +8, tasks +8, tombstones and queue depth +50. The late samples are those
  taken ``SETTLE_S`` or more after the last fault ended, if there are at least three,
  else the last quarter. The verdict is per watcher and measure; connections are judged
  by their maximum against `POOL_CAPS` ("bounded" or "OVER CAP").
* Returns a JSON-able dict: the scenario `Result` fields, the samples and the trends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from config.settings import Settings
from tests.reliability import faults
from tests.reliability.context import Ctx
from tests.reliability.harness import Bed, run_scenario
from tests.reliability.model import Load, Scenario
from tests.reliability.processes import WatcherProcess
from watch.app import LEASE_POOL_SIZE, kube_pool_size

MEASURES = ("rss_mib", "other_fds", "platform_conns", "kube_conns", "tasks", "tombstones",
            "queue_depth")
MARGINS: dict[str, tuple[float, float]] = {
    "rss_mib": (1.25, 8.0), "other_fds": (1.0, 8.0), "tasks": (1.0, 8.0),
    "tombstones": (1.0, 50.0), "queue_depth": (1.0, 50.0)}
_SHIPPED = replace(Settings(), kube=replace(Settings().kube, namespaces=("soak",)))
POOL_CAPS = {"platform_conns": _SHIPPED.platform.max_connections,
             "kube_conns": kube_pool_size(_SHIPPED) + LEASE_POOL_SIZE}
"""Each pool's cap in the shipped settings, which the soak's watchers run with (on one
namespace): the platform client's, and the watcher's two API clients' together."""
SETTLE_S = 30.0
"""After a fault, how long its held resources may take to go (aiohttp closes an idle pooled
connection after 15 s)."""


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 15.0
    rate: float = 5.0
    fault_every_s: float = 75.0
    sample_every_s: float = 10.0
    warmup_s: float = 120.0
    quiet_tail_s: float = 90.0


FAULT_KINDS = ("watch streams cut", "platform 500 burst", "platform 429 burst",
               "platform connection resets", "platform slow-drip bodies",
               "platform outage 20 s")


async def _fault(ctx: Ctx, n: int) -> None:
    kind = FAULT_KINDS[n % len(FAULT_KINDS)]
    if kind == "watch streams cut":
        assert ctx.proxy is not None
        async with ctx.fault(kind):
            await asyncio.to_thread(ctx.proxy.cut)
    elif kind == "platform 500 burst":
        async with faults.platform_faults(ctx, kind, error_rate=0.35, error_status=500):
            await asyncio.sleep(10)
    elif kind == "platform 429 burst":
        async with faults.platform_faults(ctx, kind, error_rate=0.35, error_status=429,
                                          retry_after_s=0.5):
            await asyncio.sleep(10)
    elif kind == "platform connection resets":
        async with faults.platform_faults(ctx, kind, reset_rate=0.25, reset_phase="after"):
            await asyncio.sleep(10)
    elif kind == "platform slow-drip bodies":
        async with faults.platform_faults(ctx, kind, slow_drip_ms=2000):
            await asyncio.sleep(10)
    else:
        async with ctx.fault(kind):
            await asyncio.to_thread(ctx.platform.set_faults, outage_s=20)
            try:
                await asyncio.sleep(20)
            finally:
                await asyncio.to_thread(ctx.platform.clear_faults)


def connections_to(pid: int, port: int) -> int:
    """How many of `pid`'s open sockets are TCP connections to `port` (any address)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed between listdir and readlink
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):  # no IPv6 in this namespace
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()  # sl local rem st ... uid timeout inode
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    count += 1
    return count


def sample(watcher: WatcherProcess, platform_port: int,
           kube_port: int) -> dict[str, Any] | None:
    pid = watcher.pid
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kib = int(next(line.split()[1] for line in status.splitlines()
                           if line.startswith("VmRSS:")))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        platform_conns = connections_to(pid, platform_port)
        kube_conns = connections_to(pid, kube_port)
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    info = watcher.health() or {}
    return {"t": time.time(), "watcher": watcher.name, "pid": pid,
            "rss_mib": round(rss_kib / 1024, 1), "fds": fds,
            "platform_conns": platform_conns, "kube_conns": kube_conns,
            "other_fds": fds - platform_conns - kube_conns,
            "tasks": info.get("tasks"),
            "tombstones": info.get("tombstones"), "cached_pods": info.get("cached_pods"),
            "leader": info.get("leader"), "queue_depth": info.get("queue_depth")}


def trends(samples: list[dict[str, Any]], warmup_until: float,
           quiet_from: float | None = None) -> list[dict[str, Any]]:
    """Per watcher (process) and measure: early vs late medians and the verdict. The late
    median is of the samples from `quiet_from` on (the faults over) when there are three
    or more, else of the last quarter."""
    out = []
    keys = sorted({(s["watcher"], s["pid"]) for s in samples})
    for name, pid in keys:
        mine = [s for s in samples if s["pid"] == pid and s["t"] >= warmup_until]
        if len(mine) < 8:
            continue
        quarter = max(2, len(mine) // 4)
        for measure in MEASURES:
            values = [s[measure] for s in mine if isinstance(s.get(measure), int | float)]
            if len(values) < 8:
                continue
            early = statistics.median(values[:quarter])
            quiet = [s[measure] for s in mine if quiet_from is not None
                     and s["t"] >= quiet_from and isinstance(s.get(measure), int | float)]
            late = statistics.median(quiet if len(quiet) >= 3 else values[-quarter:])
            if measure in POOL_CAPS:
                verdict = "bounded" if max(values) <= POOL_CAPS[measure] else "OVER CAP"
            else:
                factor, margin = MARGINS[measure]
                verdict = "flat" if late <= early * factor + margin else "GROWS"
            out.append({"watcher": f"{name} (pid {pid})", "measure": measure,
                        "early": round(early, 1), "late": round(late, 1),
                        "max": round(max(values), 1), "samples": len(values),
                        "verdict": verdict})
    return out


async def run_soak(config: SoakConfig, bed: Bed, workdir: Path) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    jobs = int(config.rate * config.minutes * 60)
    started = time.time()

    async def sampler(ctx: Ctx, stop: asyncio.Event) -> None:
        assert ctx.proxy is not None  # the watchers reach the API server through it
        kube_port = ctx.proxy.port
        while not stop.is_set():
            for watcher in ctx.watchers.values():
                point = await asyncio.to_thread(sample, watcher, ctx.platform.port,
                                                kube_port)
                if point is not None:
                    samples.append(point)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), config.sample_every_s)

    async def fault_cycle(ctx: Ctx, stop: asyncio.Event) -> None:
        n = 0
        last_start = started + config.minutes * 60 - config.quiet_tail_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), config.fault_every_s)
            if stop.is_set() or time.time() > last_start:
                return
            await _fault(ctx, n)
            n += 1

    async def drive(ctx: Ctx) -> None:
        stop = asyncio.Event()
        simulation = ctx.start_simulation()
        helpers = [asyncio.create_task(sampler(ctx, stop)),
                   asyncio.create_task(fault_cycle(ctx, stop))]
        try:
            await simulation
        finally:
            stop.set()
            await asyncio.gather(*helpers)
            assert ctx.proxy is not None
            for watcher in ctx.watchers.values():  # one last sample after the load
                point = await asyncio.to_thread(sample, watcher, ctx.platform.port,
                                                ctx.proxy.port)
                if point is not None:
                    samples.append(point)

    scenario = Scenario("soak", f"{config.minutes:g} min steady load, a fault every "
                        f"{config.fault_every_s:g} s", Load(jobs, config.rate,
                                                            delete_finished=True),
                        drive=drive, replicas=2, proxy=True, settle_bound_s=300)
    result = await run_scenario(scenario, bed, workdir)
    ends = [f["end"] for f in result.faults_applied if f.get("end") is not None]
    found = trends(samples, started + config.warmup_s,
                   quiet_from=max(ends) + SETTLE_S if ends else None)
    problems = list(result.problems)
    problems += [f"{t['watcher']}: {t['measure']} grows ({t['early']:g} → {t['late']:g})"
                 for t in found if t["verdict"] == "GROWS"]
    problems += [f"{t['watcher']}: {t['measure']} reached {t['max']:g}, over the pool's "
                 f"cap {POOL_CAPS[t['measure']]}" for t in found if t["verdict"] == "OVER CAP"]
    if not found:
        problems.append("too few resource samples to judge the trends")
    return {**result.to_json(), "ok": not problems, "problems": problems,
            "minutes": config.minutes, "rate": config.rate,
            "fault_every_s": config.fault_every_s, "fault_kinds": list(FAULT_KINDS),
            "pool_caps": POOL_CAPS, "samples": samples, "trends": found}
