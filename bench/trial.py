"""One trial: one system on one load, from a fresh namespace to its figures.

Contract:

* `Harness.trial` creates a namespace and the load's runs, sets the platform's latency,
  starts the system, waits until it is ready (its "synced" line, or its CPU settling for
  systems that cannot say), optionally plays an unmeasured `setup` load and waits until it
  is acknowledged, then plays the measured load, waits until every expected run is
  acknowledged (or `drain_timeout` passes), stops the system and returns the figures
  (a JSON-able dict; see `figures`).
* The system's CPU, the API server's, the platform's and the harness's own are measured
  over the same window (measured load start → drain end), with the whole machine's busy
  CPU, so a figure can be read against what else ran.
* Each trial uses its own namespace and run ids; nothing is deleted afterwards (the next
  trial's system never sees another trial's pods). `trial` (0, 1, ...) says which
  repetition of its row a trial is (see bench.trials for the order they run in).
* The API server's CPU per accepted change (`apiserver_cpu_s_per_1000`) is its CPU over
  the window per 1,000 run-state changes it accepted from the load: what serving the
  load costs it while this system watches (compare the ceiling's, with nothing watching).
* Progress goes to the `say` callback about once a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import Admin, Machine, Testbed
from bench.kube import Kube
from bench.load import PlatformLoad, Player, Recorder
from bench.measure import match, percentiles, settled, verify
from bench.profile import Profiler, flamegraph, summarise
from bench.systems import SYSTEMS, Running, Target
from testbed.simulator.workloads import Plan

MakePlans = Callable[[str, str], list[Plan]]
Load = Callable[[Player, list[Plan]], Awaitable[None]]
CDF_POINTS = 200


@dataclass
class Harness:
    testbed: Testbed
    kube: Kube
    say: Callable[[str], None]
    logdir: Any
    ready_timeout: float = 120.0
    parallel: bool = False
    """Run the systems of a scenario at once (quick runs: correctness only)."""
    profile_dir: Path | None = None
    """Where to write py-spy profiles of the sniffer systems' measured windows (None: off)."""
    trials: int = 1
    """Trials of each system per row (interleaved across systems: bench.trials.each)."""
    _n: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def admin(self) -> Admin:
        return self.testbed.admin

    def next_names(self, scenario: str) -> tuple[str, str]:
        self._n += 1
        return f"{scenario}-{self._n}", f"t{self._n}"

    def target(self, namespace: str, url: str | None = None, token_file: Any = None) -> Target:
        tb = self.testbed
        return Target(kubeconfig=tb.api.kubeconfig, namespace=namespace,
                      platform_url=url or tb.platform.url,
                      platform_token_file=token_file or tb.platform.token_file,
                      logdir=self.logdir)

    async def wait_ready(self, running: Running, limit_s: float | None = None) -> float | None:
        """Seconds from start to ready; None if it died or never said so in time."""
        deadline = time.monotonic() + (limit_s or self.ready_timeout)
        if running.system.ready_marker is not None:
            # ready_at is set by the thread that reads the system's log.
            while running.ready_at is None and running.alive and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            return None if running.ready_at is None else running.ready_at - running.started_at
        # No readiness signal: wait until it has used its start-up CPU (idle for 0.5 s).
        await asyncio.sleep(1.0)
        last = running.cpu_s()
        while running.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = running.cpu_s()
            if now - last < 0.02:
                break
            last = now
        return None

    async def _drain(self, expect: Any, seq0: int, limit_s: float, label: str,
                     updates: list[dict[str, Any]]) -> tuple[int, int]:
        """Poll the update log until every expectation is reached; (left, last seq)."""
        seq = seq0
        deadline = time.monotonic() + limit_s
        left = len(expect)
        last_say = 0.0
        while True:
            items, seq = await asyncio.to_thread(self.admin.updates, seq)
            updates.extend(items)
            left = settled(expect, updates)
            if left == 0 or time.monotonic() > deadline:
                return left, seq
            if time.monotonic() - last_say > 2:
                self.say(f"  {label}: draining, {left} runs not yet acknowledged")
                last_say = time.monotonic()
            await asyncio.sleep(0.25)

    async def trial(self, scenario: str, system: str, params: dict[str, Any],
                    make: MakePlans, load: Load, *, setup: Load | None = None,
                    latency_ms: float = 0.0, drain_timeout: float = 60.0,
                    extra_env: dict[str, str] | None = None, trial: int = 0) -> dict[str, Any]:
        namespace, prefix = self.next_names(scenario)
        label = f"{scenario} {system} {params}" + (f" #{trial + 1}" if self.trials > 1 else "")
        await self.kube.ensure_namespace(namespace)
        plans = make(namespace, prefix)
        tb = self.testbed
        await PlatformLoad(tb.platform.url, tb.platform.token).create_runs(plans)
        await asyncio.to_thread(self.admin.set_latency, latency_ms)
        running = SYSTEMS[system].start(self.target(namespace), extra_env=extra_env)
        try:
            ready_s = await self.wait_ready(running)
            if not running.alive:
                raise RuntimeError(f"{system} exited:\n{running.log_tail()}")
            rss_idle = running.rss()
            player = Player(self.kube, Recorder())
            if setup is not None:
                self.say(f"  {label}: setup ({len(plans)} pods)")
                seq = await asyncio.to_thread(self.admin.last_seq)
                await setup(player, plans)
                left, _ = await self._drain(player.rec.expect, seq, drain_timeout * 3, label,
                                            [])
                if left:
                    self.say(f"  {label}: setup not acknowledged for {left} runs; going on")
                player.rec = Recorder()
            profiler = None
            if self.profile_dir is not None and system.startswith("sniffer"):
                raw = self.profile_dir / f"{namespace}-{system}.txt"
                profiler = Profiler.attach(running.proc.pid, raw)
            try:
                figures = await self._measure(label, running, player, plans, load,
                                              drain_timeout, prefix)
            finally:
                if profiler is not None:
                    path = await asyncio.to_thread(profiler.stop)
                    if path is not None:
                        figures_profile = write_profile(path)
                        self.say(f"  profile: {figures_profile}")
        finally:
            final = running.stop()
        figures.update(scenario=scenario, system=system, params=params, trial=trial,
                       ready_s=ready_s, rss_idle=rss_idle,
                       peak_rss=final.get("peak_rss", figures.get("peak_rss")))
        self.results.append(figures)
        self.say(summary_line(figures))
        return figures

    async def _measure(self, label: str, running: Running, player: Player, plans: list[Plan],
                       load: Load, drain_timeout: float, prefix: str) -> dict[str, Any]:
        tb, admin = self.testbed, self.admin
        seq0 = await asyncio.to_thread(admin.last_seq)
        calls0 = admin.calls
        req0 = await asyncio.to_thread(admin.requests_total)
        marks = _marks(tb, running)
        progress = asyncio.create_task(self._progress(label, player.rec, seq0))
        try:
            await load(player, plans)
        finally:
            progress.cancel()
        updates: list[dict[str, Any]] = []
        left, _ = await self._drain(player.rec.expect, seq0, drain_timeout, label, updates)
        end = _marks(tb, running)
        rss_end = running.rss()
        calls1 = admin.calls
        req1 = await asyncio.to_thread(admin.requests_total)
        runs = await asyncio.to_thread(admin.runs, prefix=prefix)
        rec = player.rec
        return figures(rec, updates, runs, marks, end, left=left,
                       system_requests=req1 - req0 - (calls1 - calls0), rss_end=rss_end,
                       peak_rss=running.peak_rss())

    async def _progress(self, label: str, rec: Recorder, seq0: int) -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(2.0)
            seq = await asyncio.to_thread(self.admin.last_seq)
            self.say(f"  {label}: {time.monotonic() - t0:4.0f}s  changes made "
                     f"{len(rec.changes)}  platform updates {seq - seq0}")


def write_profile(raw: Path) -> Path:
    """Summary text and flame graph next to the raw stacks; returns the summary's path."""
    summary = raw.with_name(raw.stem + "-summary.txt")
    summary.write_text(summarise(raw))
    flamegraph(raw, raw.with_suffix(".svg"))
    return summary


def _marks(tb: Testbed, running: Running) -> dict[str, float]:
    return {"t": time.time(), "system": running.cpu_s(), "apiserver": tb.apiserver_cpu_s(),
            "platform": tb.platform_cpu_s(), "harness": Machine.self_cpu_s(),
            "machine": Machine.busy_s(), "loadavg": Machine.loadavg()}


def cdf_points(latencies: list[float], n: int = CDF_POINTS) -> list[float]:
    if not latencies:
        return []
    ordered = sorted(latencies)
    return [ordered[min(len(ordered) - 1, int(i * len(ordered) / n))] for i in range(n)] + [
        ordered[-1]]


def figures(rec: Recorder, updates: list[dict[str, Any]], runs: list[dict[str, Any]],
            start: dict[str, float], end: dict[str, float], *, left: int,
            system_requests: int, rss_end: int, peak_rss: int) -> dict[str, Any]:
    m = match(rec.changes, updates)
    wrong, examples = verify(rec.expect, runs)
    window = max(1e-9, end["t"] - start["t"])
    acked = len(m.latencies)
    span = (m.last_ack - rec.started) if m.last_ack is not None else None
    cpu = {k: end[k] - start[k] for k in ("system", "apiserver", "platform", "harness",
                                           "machine")}
    known = cpu["system"] + cpu["apiserver"] + cpu["platform"] + cpu["harness"]
    return {
        "changes": len(rec.changes), "jobs": len(rec.expect), "pod_writes": rec.pod_writes,
        "offered_per_s": rec.offered_rate,
        "load_s": rec.finished - rec.started,
        "acked": acked, "superseded": m.superseded, "missing": m.missing,
        "not_acknowledged_at_end": left,
        "latency_s": percentiles(m.latencies),
        "latency_cdf_s": cdf_points(m.latencies),
        "throughput_per_s": acked / span if span and span > 0 else None,
        "window_s": window,
        "cpu_s": cpu["system"],
        "cpu_s_per_1000": 1000 * cpu["system"] / acked if acked else None,
        "apiserver_cpu_s": cpu["apiserver"],
        "apiserver_cpu_s_per_1000": (1000 * cpu["apiserver"] / len(rec.changes)
                                     if rec.changes else None),
        "cpu_cores": {k: v / window for k, v in cpu.items()} | {
            "others": max(0.0, cpu["machine"] - known) / window},
        "loadavg": [start["loadavg"], end["loadavg"]],
        "rss_end": rss_end, "peak_rss": peak_rss,
        "platform_requests": system_requests,
        "platform_updates_applied": len(updates),
        "wrong": wrong, "wrong_examples": examples,
        "load_errors": len(rec.errors), "load_error_examples": rec.errors[:3],
    }


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _per_1000(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def summary_line(f: dict[str, Any]) -> str:
    lat = f["latency_s"]
    thr = f["throughput_per_s"]
    return (f"  => {f['scenario']} {f['system']} {f['params']}: {f['acked']}/{f['changes']} "
            f"changes acked, p50/p99/max {fmt_ms(lat['p50'])}/{fmt_ms(lat['p99'])}/"
            f"{fmt_ms(lat['max'])} ms, {thr or 0:.0f}/s (offered {f['offered_per_s']:.0f}/s), "
            f"cpu {f['cpu_s']:.1f}s, API server {_per_1000(f['apiserver_cpu_s_per_1000'])} "
            f"s/1k changes, peak rss {f['peak_rss'] / 2**20:.0f} MiB, "
            f"wrong {f['wrong']}, platform requests {f['platform_requests']}")
