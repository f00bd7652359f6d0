"""Scenarios a-c and the API server's own ceiling: which loads, at which sizes, for whom.

Contract:

* `Sizes` holds every size a run uses, and how many trials each row gets;
  `Sizes.quick_run()` is the seconds-long smoke run (one trial), `Sizes.full_run()` the
  ~53-minute run on a 2-core machine (three trials; docs/benchmarks.md has the
  arithmetic). Full sizes that depend on the machine (rates, election-night N) are
  scaled from the measured `Ceiling`.
* Every scenario runs each system `trials` times, interleaved (bench.trials.each).
* `ceiling` measures the API server alone (no system watching): job lifecycles per second
  played as fast as the harness can, and bare status updates per second.
* `steady` runs each system at increasing rates; a system that saturated (acknowledged
  less than `SATURATED` of the offered rate, or did not drain) in more than half of its
  trials at a rate skips the higher rates.
* `election` brings N pods to running (unmeasured), then finishes all N within the window.
* `slow_platform` repeats a steady rate and the election burst with 200 ms added to every
  platform call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from bench import trials
from bench.kube import Kube
from bench.load import Player, Recorder, finish, make_plans, paced, prelude, steady
from bench.trial import Harness, MakePlans
from testbed.simulator.workloads import Plan

SATURATED = 0.9


@dataclass(frozen=True)
class Sizes:
    quick: bool
    trials: int
    """Trials of each system per row (median and min-max in the report)."""
    ceiling_jobs: int
    steady_fractions: tuple[float, ...]
    """Steady rates as fractions of the ceiling's jobs/s (full runs; `scaled` applies them)."""
    steady_rates: tuple[float, ...]
    """Jobs started per second (each makes two run-state changes)."""
    steady_s: float
    election_jobs: int
    election_window_s: float
    slow_rate: float
    slow_latency_ms: float
    cold_sizes: tuple[int, ...]
    cold_finished: float
    cold_wrong: float
    drain_s: float
    cold_timeout_s: tuple[float, ...]
    catchup_jobs: int
    """Runs behind when a system starts, for the platform-bound catch-up (scenario c)."""
    catchup_timeout_s: float
    cold_one_trial: tuple[str, ...]
    """Systems that get one trial per cold-start size instead of `trials`, to fit the
    budget: they re-send every run to the platform, so there they take 5-6x the others'
    time, and their spread cannot change the ranking (docs/benchmarks.md)."""
    catchup_one_trial: tuple[str, ...]
    """Systems that get one trial per catch-up latency instead of `trials`: those that
    cannot finish within `catchup_timeout_s` at the added latency (baseline-serial: ~2
    repairs/s), whose every trial would run to the limit and measure only the limit."""

    @classmethod
    def quick_run(cls) -> Sizes:
        return cls(quick=True, trials=1, ceiling_jobs=40, steady_fractions=(),
                   steady_rates=(10.0,), steady_s=2.0,
                   election_jobs=40, election_window_s=1.0, slow_rate=10.0,
                   slow_latency_ms=200.0, cold_sizes=(200,), cold_finished=0.9,
                   cold_wrong=0.05, drain_s=30.0, cold_timeout_s=(45.0,), catchup_jobs=50,
                   catchup_timeout_s=45.0, cold_one_trial=(),
                   catchup_one_trial=())

    @classmethod
    def full_run(cls) -> Sizes:
        # Budget (docs/benchmarks.md, "How to reproduce"): 3 trials of 7 systems in under
        # 60 minutes on 2 cores. Against the single-trial run of 2026-11-26: 3 steady rates
        # of 10 s (was 4 of 15 s), a 5 s election window (was 10 s, so N halves), 1,500
        # catch-up runs (was 3,000), 30 s drains and a 20 s catch-up limit (were 60 s), cold
        # starts at 10k and 100k pods (50k dropped: `--cold-sizes` brings it back), one
        # cold-start trial for kopf and baseline-serial, one catch-up trial for
        # baseline-serial (it hits the 20 s limit at +200 ms; kopf does not: 3 trials).
        return cls(quick=False, trials=3, ceiling_jobs=600, steady_fractions=(0.5, 1.0, 1.5),
                   steady_rates=(), steady_s=10.0,
                   election_jobs=20_000, election_window_s=5.0, slow_rate=0.0,
                   slow_latency_ms=200.0, cold_sizes=(10_000, 100_000),
                   cold_finished=0.9, cold_wrong=0.01, drain_s=30.0,
                   cold_timeout_s=(60.0, 180.0), catchup_jobs=1500,
                   catchup_timeout_s=20.0, cold_one_trial=("kopf", "baseline-serial"),
                   catchup_one_trial=("baseline-serial",))

    def with_cold_sizes(self, counts: tuple[int, ...]) -> Sizes:
        """Other cold-start sizes, each with a limit of 180 s per 100k pods (at least 60 s)."""
        return replace(self, cold_sizes=counts,
                       cold_timeout_s=tuple(max(60.0, 180.0 * n / 100_000) for n in counts))

    def scaled(self, ceiling: Ceiling) -> Sizes:
        """Full-run rates and burst size that this machine's API server can absorb."""
        if self.quick:
            return self
        top = ceiling.jobs_per_s
        rates = tuple(sorted({max(1.0, round(top * f)) for f in self.steady_fractions}))
        jobs = min(self.election_jobs, int(ceiling.status_per_s * self.election_window_s * 0.8))
        return replace(self, steady_rates=rates, slow_rate=max(1.0, round(top * 0.5)),
                       election_jobs=max(100, jobs))


@dataclass(frozen=True)
class Ceiling:
    jobs_per_s: float
    """Whole lifecycles (create, start-up statuses, final status) per second."""
    writes_per_s: float
    status_per_s: float
    """Bare final-status updates per second (the election-night operation)."""
    apiserver_cores: float

    def to_json(self) -> dict[str, Any]:
        return {"jobs_per_s": self.jobs_per_s, "writes_per_s": self.writes_per_s,
                "state_changes_per_s": 2 * self.jobs_per_s,
                "status_updates_per_s": self.status_per_s,
                "apiserver_cores": self.apiserver_cores,
                "apiserver_cpu_s_per_1000": self.apiserver_cpu_s_per_1000}

    @property
    def apiserver_cpu_s_per_1000(self) -> float:
        """The API server's CPU seconds per 1,000 run-state changes, nothing watching."""
        return 1000 * self.apiserver_cores / (2 * self.jobs_per_s)


async def ceiling(h: Harness, sizes: Sizes) -> Ceiling:
    """The API server alone: lifecycles as fast as possible (no waits), then bare final
    statuses as fast as possible."""
    namespace, prefix = h.next_names("ceiling")
    kube: Kube = h.kube
    await kube.ensure_namespace(namespace)
    plans = make_plans(sizes.ceiling_jobs, namespace=namespace, prefix=prefix,
                       duration="fixed:0", step_delay="fixed:0")
    rec = Recorder()
    player = Player(kube, rec)
    # Warm up (a fresh API server is busy with post-start work for a while).
    warm = make_plans(min(50, sizes.ceiling_jobs), namespace=namespace, prefix=prefix + "w",
                      duration="fixed:0", step_delay="fixed:0")
    await paced(warm, 0, Player(kube, Recorder()).play, limit=32)
    h.say(f"ceiling: {len(plans)} lifecycles as fast as possible, nothing watching")
    cpu0, t0 = h.testbed.apiserver_cpu_s(), time.time()
    await paced(plans, 0, player.play, limit=128)
    dt = time.time() - t0
    cores = (h.testbed.apiserver_cpu_s() - cpu0) / dt
    jobs_per_s, writes_per_s = len(plans) / dt, rec.pod_writes / dt
    namespace, prefix = h.next_names("ceiling")
    await kube.ensure_namespace(namespace)
    plans = make_plans(sizes.ceiling_jobs, namespace=namespace, prefix=prefix)
    player = Player(kube, Recorder())
    await prelude(player, plans, limit=128)
    t0 = time.time()
    await finish(player, plans, 0, limit=128)
    status_per_s = len(plans) / (time.time() - t0)
    result = Ceiling(jobs_per_s, writes_per_s, status_per_s, cores)
    h.say(f"  => API server alone: {jobs_per_s:.0f} jobs/s ({writes_per_s:.0f} writes/s, "
          f"{cores:.2f} cores); {status_per_s:.0f} final statuses/s")
    return result


def _maker(jobs: int) -> MakePlans:
    def make(namespace: str, prefix: str) -> list[Plan]:
        return make_plans(jobs, namespace=namespace, prefix=prefix)

    return make


async def each(h: Harness, systems: list[str], fn: Callable[[str, int], Awaitable[Any]], *,
               once: tuple[str, ...] = ()) -> None:
    """fn(system, trial) for the harness's trials of each system, interleaved in rounds;
    a round's systems all at once in a quick (parallel) run; `once`: first round only."""
    await trials.each(systems, fn, trials=h.trials, parallel=h.parallel, once=once)


async def run_steady(h: Harness, sizes: Sizes, systems: list[str]) -> None:
    saturated: set[str] = set()
    for rate in sizes.steady_rates:
        jobs = max(1, int(rate * sizes.steady_s))
        verdicts: dict[str, list[bool]] = {}

        async def one(system: str, trial: int, rate: float = rate, jobs: int = jobs,
                      verdicts: dict[str, list[bool]] = verdicts) -> None:
            if system in saturated:
                h.say(f"a/steady {rate:g}/s {system}: skipped (saturated at a lower rate)")
                return
            h.say(f"a/steady {rate:g} jobs/s {system}: {jobs} jobs")

            async def load(p: Player, plans: list[Plan]) -> None:
                await steady(p, plans, rate)

            f = await h.trial("steady", system, {"rate_jobs_per_s": rate}, _maker(jobs), load,
                              drain_timeout=sizes.drain_s, trial=trial)
            thr = f["throughput_per_s"] or 0
            verdicts.setdefault(system, []).append(
                bool(f["not_acknowledged_at_end"]) or thr < SATURATED * f["offered_per_s"])

        await each(h, systems, one)
        saturated.update(s for s, v in verdicts.items() if 2 * sum(v) > len(v))


async def _setup_running(p: Player, plans: list[Plan]) -> None:
    await prelude(p, plans, limit=64)


async def run_election(h: Harness, sizes: Sizes, systems: list[str], *,
                       scenario: str = "election", latency_ms: float = 0.0) -> None:
    n, window = sizes.election_jobs, sizes.election_window_s

    async def one(system: str, trial: int) -> None:
        h.say(f"b/{scenario} {system}: {n} pods running, then all finish within {window:g}s")

        async def burst(p: Player, plans: list[Plan]) -> None:
            await finish(p, plans, window, limit=256)

        await h.trial(scenario, system, {"jobs": n, "window_s": window,
                                         "platform_latency_ms": latency_ms},
                      _maker(n), burst, setup=_setup_running, latency_ms=latency_ms,
                      drain_timeout=sizes.drain_s, trial=trial)

    await each(h, systems, one)


async def run_slow(h: Harness, sizes: Sizes, systems: list[str], *, burst: bool = True,
                   burst_extra: tuple[str, ...] = ()) -> None:
    rate, latency = sizes.slow_rate, sizes.slow_latency_ms
    jobs = max(1, int(rate * sizes.steady_s))

    async def one(system: str, trial: int) -> None:
        h.say(f"c/slow platform +{latency:g} ms, steady {rate:g} jobs/s {system}")

        async def load(p: Player, plans: list[Plan]) -> None:
            await steady(p, plans, rate)

        await h.trial("slow", system, {"rate_jobs_per_s": rate, "platform_latency_ms": latency},
                      _maker(jobs), load, latency_ms=latency, drain_timeout=sizes.drain_s,
                      trial=trial)

    await each(h, systems, one)
    if burst:
        await run_election(h, sizes, [*systems[:1], *burst_extra, *systems[1:]],
                           scenario="slow-burst", latency_ms=latency)
    await asyncio.to_thread(h.admin.set_latency, 0.0)
