"""Scenarios d and e: cold start over many existing pods, and memory per cached pod.

Contract:

* One namespace grows through `Sizes.cold_sizes` (10k and 100k pods in a full run), of which
  `cold_finished` are finished (their final kubelet status) and the rest running. For
  each size a platform database is built offline (`testbed.platform.store.Store`) where
  every run is right except a `cold_wrong` fraction: finished pods whose run still says
  running, running pods whose run still says queued.
* Each system starts against a fresh copy of that database, served by its own platform
  process, so every system meets exactly the same state. Measured: time to its "synced"
  line (if it has one), time until every wrong run was repaired, time until it stopped
  calling the platform, requests it made and updates applied, CPU, RSS once quiet and
  peak RSS, and runs wrong at the end.
* Memory per cached pod = (RSS once quiet - RSS with the empty namespace) / pods.
* A system that is not done within the size's timeout is stopped and reported as such.
* Each size (and each catch-up latency) runs every system `Harness.trials` times,
  interleaved, except `Sizes.cold_one_trial` (one trial per size) and
  `Sizes.catchup_one_trial` (one trial per catch-up latency). The RSS
  over the empty namespace is taken once per system. The API server's CPU over each
  trial (`apiserver_cpu_s`: serving the system's LIST and watch) is a figure too.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench import trials
from bench.env import Admin
from bench.load import Player, Recorder, bulk, make_plans
from bench.measure import settled, verify
from bench.profile import Profiler
from bench.scenarios import Sizes, each
from bench.systems import SYSTEMS
from bench.trial import Harness, write_profile
from testbed.platform.launcher import launch
from testbed.platform.store import Store
from testbed.platform.wire import PatchBody
from testbed.simulator.lifecycles import TERMINAL, Expectation, State
from testbed.simulator.workloads import Plan

QUIET_S = 3.0


def _finished(plan: Plan) -> bool:
    return plan.index % 10 != 9


def _build_db(path: Path, plans: list[Plan], expect: dict[str, Expectation],
              wrong: set[str]) -> None:
    """Add `plans`' runs to the database at `path`, right except the `wrong` ones."""
    store = Store.open(path)
    try:
        for plan in plans:
            e = expect.get(plan.run_id)
            if e is None:
                continue
            now = time.time()
            store.create_run(plan.run_id, plan.kind.value, plan.namespace, plan.pod_name, now)
            if e.state in TERMINAL:
                body = (PatchBody(state="running", expected_state="queued")
                        if plan.run_id in wrong else
                        PatchBody(state=e.state.value, expected_state="queued",
                                  reason=e.reason, exit_code=e.exit_code))
            elif plan.run_id in wrong:
                continue  # running pod, run still queued
            else:
                body = PatchBody(state=State.RUNNING.value, expected_state="queued")
            store.patch_run(plan.run_id, body, now)
    finally:
        store.close()


async def run_cold(h: Harness, sizes: Sizes, systems: list[str], workdir: Path) -> None:
    namespace, prefix = h.next_names("cold")
    await h.kube.ensure_namespace(namespace)
    idle = await _idle_rss(h, systems)
    plans = make_plans(max(sizes.cold_sizes), namespace=namespace, prefix=prefix)
    rng = random.Random(11)
    rec = Recorder()
    player = Player(h.kube, rec)
    wrong: set[str] = set()
    db = workdir / "cold-stage.db"
    created = 0
    for size, timeout in zip(sizes.cold_sizes, sizes.cold_timeout_s, strict=True):
        batch = plans[created:size]
        h.say(f"d+e/cold: creating pods {created}..{size} (90% finished)")
        t0 = time.time()

        def progress(i: int, n: int, base: int = created) -> None:
            if i % 5000 == 0 and i:
                h.say(f"  cold: {base + i} pods created")

        await bulk(player, batch, _finished, limit=64, progress=progress)
        h.say(f"  cold: {len(batch)} pods in {time.time() - t0:.0f}s "
              f"({2 * len(batch) / (time.time() - t0):.0f} writes/s)")
        wrong |= {p.run_id for p in batch if rng.random() < sizes.cold_wrong}
        await asyncio.to_thread(_build_db, db, batch, rec.expect, wrong)
        created = size

        stage_wrong = frozenset(wrong)

        async def one(system: str, trial: int, size: int = size, limit_s: float = timeout,
                      stage_wrong: frozenset[str] = stage_wrong) -> None:
            f = await _cold_trial(h, system, namespace, db, workdir, dict(rec.expect),
                                  stage_wrong, limit_s, idle.get(system), trial=trial)
            f["params"] = {"pods": size, "finished": sizes.cold_finished,
                           "wrong_runs": len(stage_wrong)}
            h.results.append(f)
            h.say(_cold_line(f))

        await each(h, systems, one, once=sizes.cold_one_trial)


async def _idle_rss(h: Harness, systems: list[str]) -> dict[str, int]:
    """RSS of each system started over an empty namespace."""
    namespace, _ = h.next_names("idle")
    await h.kube.ensure_namespace(namespace)
    idle: dict[str, int] = {}

    async def one(system: str, trial: int) -> None:
        running = SYSTEMS[system].start(h.target(namespace))
        try:
            await h.wait_ready(running)
            await asyncio.sleep(1.0)
            idle[system] = running.rss()
        finally:
            running.stop()
        h.say(f"  idle RSS {system}: {idle[system] / 2**20:.1f} MiB")
        h.results.append({"scenario": "idle", "system": system, "params": {},
                          "rss_idle": idle[system]})

    await trials.each(systems, one, parallel=h.parallel)
    return idle


async def run_catchup(h: Harness, sizes: Sizes, systems: list[str], workdir: Path) -> None:
    """c (platform-bound): N pods finished while nothing watched, every run behind; each
    system starts and catches up, at 0 ms and at +`slow_latency_ms` per platform call."""
    namespace, prefix = h.next_names("catchup")
    await h.kube.ensure_namespace(namespace)
    plans = make_plans(sizes.catchup_jobs, namespace=namespace, prefix=prefix)
    rec = Recorder()
    h.say(f"c/catch-up: {len(plans)} finished pods, every run still 'running'")
    await bulk(Player(h.kube, rec), plans, lambda plan: True, limit=64)
    wrong = frozenset(rec.expect)
    db = workdir / "catchup.db"
    await asyncio.to_thread(_build_db, db, plans, rec.expect, set(wrong))
    for latency in (0.0, sizes.slow_latency_ms):

        async def one(system: str, trial: int, latency: float = latency) -> None:
            f = await _cold_trial(h, system, namespace, db, workdir, dict(rec.expect), wrong,
                                  sizes.catchup_timeout_s, None, latency_ms=latency,
                                  scenario="catchup", trial=trial)
            f["params"] = {"pods": len(plans), "platform_latency_ms": latency}
            h.results.append(f)
            h.say(_cold_line(f))

        await each(h, systems, one, once=sizes.catchup_one_trial)


async def _cold_trial(h: Harness, system: str, namespace: str, db: Path, workdir: Path,
                      expect: dict[str, Expectation], wrong: frozenset[str], limit_s: float,
                      idle: int | None, *, latency_ms: float = 0.0,
                      scenario: str = "cold", trial: int = 0) -> dict[str, Any]:
    pods = len(expect)
    trial_dir = workdir / f"{scenario}-{pods}-{system}-{latency_ms:g}-{trial}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, trial_dir / "platform.db")
    platform = await asyncio.to_thread(launch, trial_dir, db=trial_dir / "platform.db")
    admin = Admin(platform.url, platform.token)
    if latency_ms:
        admin.set_latency(latency_ms)
    try:
        seq0 = admin.last_seq()
        req0, calls0 = admin.requests_total(), admin.calls
        to_fix = {run_id: expect[run_id] for run_id in wrong if run_id in expect}
        h.say(f"{scenario} {pods} pods {system}: {len(to_fix)} runs wrong on the platform"
              + (f", +{latency_ms:g} ms per platform call" if latency_ms else ""))
        api0 = h.testbed.apiserver_cpu_s()
        running = SYSTEMS[system].start(h.target(namespace, platform.url, platform.token_file))
        profiler = None
        if h.profile_dir is not None and system.startswith("sniffer"):
            profiler = Profiler.attach(running.proc.pid,
                                       h.profile_dir / f"{scenario}-{pods}-{system}.txt")
        t0 = running.started_at
        updates: list[dict[str, Any]] = []
        seq, left = seq0, len(to_fix)
        last_requests, quiet_since, last_change = 0, time.time(), t0
        deadline = t0 + limit_s
        last_say = 0.0
        try:
            while time.time() < deadline and running.alive:
                await asyncio.sleep(0.5)
                items, seq = await asyncio.to_thread(admin.updates, seq)
                updates.extend(items)
                left = settled(to_fix, updates)
                requests = await asyncio.to_thread(admin.requests_total)
                requests -= admin.calls - calls0
                now = time.time()
                if requests != last_requests:
                    last_requests, quiet_since, last_change = requests, now, now
                if time.time() - last_say > 5:
                    h.say(f"  cold {pods} {system}: {now - t0:.0f}s, {left} wrong left, "
                          f"{requests - req0} platform requests, rss "
                          f"{running.rss() / 2**20:.0f} MiB")
                    last_say = time.time()
                ready = running.system.ready_marker is None or running.ready_at is not None
                if left == 0 and ready and now - quiet_since >= QUIET_S:
                    break
            done = left == 0 and time.time() < deadline
            api_cpu_s = h.testbed.apiserver_cpu_s() - api0
            cpu_s = running.cpu_s()
            rss = running.rss()
            peak = running.peak_rss()
        finally:
            if profiler is not None:
                raw = await asyncio.to_thread(profiler.stop)
                if raw is not None:
                    h.say(f"  profile: {write_profile(raw)}")
            final = running.stop()
        requests = admin.requests_total() - req0 - (admin.calls - calls0)
        runs = await asyncio.to_thread(admin.runs)
        n_wrong, examples = verify(expect, runs)
        fix_times = sorted(u["received_at"] for u in updates if u["run_id"] in to_fix)
        span = fix_times[-1] - fix_times[0] if len(fix_times) > 1 else 0.0
        return {
            "scenario": scenario, "system": system, "pods": pods, "trial": trial,
            "apiserver_cpu_s": api_cpu_s,
            "repair_rate_per_s": (len(fix_times) - 1) / span if span > 0 else None,
            "done": done, "timeout_s": limit_s,
            "ready_s": None if running.ready_at is None else running.ready_at - t0,
            "repaired_s": (max(fix_times) - t0) if fix_times and left == 0 else None,
            "quiet_s": last_change - t0 if done else None,
            "wrong_left": left,
            "platform_requests": requests, "platform_updates_applied": len(updates),
            "cpu_s": cpu_s or final.get("cpu_s"), "rss_end": rss,
            "peak_rss": final.get("peak_rss", peak), "rss_idle": idle,
            "bytes_per_pod": (rss - idle) / pods if idle is not None and done else None,
            "wrong": n_wrong, "wrong_examples": examples,
        }
    finally:
        platform.stop()
        for copy in trial_dir.glob("platform.db*"):  # tmpfs: 3 trials of 100k-run copies
            copy.unlink(missing_ok=True)


def _cold_line(f: dict[str, Any]) -> str:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}s"

    per_pod = f["bytes_per_pod"]
    rate = f["repair_rate_per_s"]
    return (f"  => {f['scenario']} {f['pods']} {f['system']} {f.get('params', '')}: "
            f"{'done' if f['done'] else 'NOT DONE'}; "
            f"repairs {'-' if rate is None else f'{rate:.0f}/s'}, "
            f"ready {s(f['ready_s'])}, repaired {s(f['repaired_s'])}, quiet {s(f['quiet_s'])}, "
            f"{f['platform_requests']} requests / {f['platform_updates_applied']} applied, "
            f"cpu {f['cpu_s'] or 0:.1f}s, API server {f['apiserver_cpu_s']:.1f}s, "
            f"rss {f['rss_end'] / 2**20:.0f} MiB"
            f" ({'-' if per_pod is None else f'{per_pod:.0f} B/pod'}), wrong {f['wrong']}")
