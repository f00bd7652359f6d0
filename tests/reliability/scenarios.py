"""The fault matrix: which load, which faults, on which schedule.

* `FULL` has one scenario per fault of issue 8, at full length (the two-minute platform
  outage, a 30 s read timeout with an 80 s half-open stream), and Job-backed runs with
  retries made by the real Job controller (issue 14, `jobscenario`); ``make soak`` runs
  it.
* `FAST` covers the same faults in five scenarios of 1,000 jobs each for ``make test``:
  faults of one side share a run (stream cut and half-open; every platform fault with a
  30 s outage; every process kill with the reconciler racing and being killed). Five
  1,000-job runs are what fits in the ~8 minutes ``make test`` may spend on this.
* Every scenario's `evidence` checks that its faults visibly happened (log lines, the
  platform's fault counters, the reconciler's reports), so none can pass vacuously.
* Settings differing from production defaults are in each scenario's `env` and listed in
  docs/reliability.md: shorter read timeouts (a half-open stream must be detected within a
  test's time), shorter leases in the fast run, low "never starts" thresholds.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable

from testbed.simulator.lifecycles import Expectation, State
from testbed.simulator.records import Change, SimResult
from tests.reliability import faults
from tests.reliability.context import Ctx
from tests.reliability.jobscenario import JOB_RETRIES
from tests.reliability.model import Load, Scenario, Step
from tests.reliability.verdict import PENDING_REASONS, scan_logs

LOAD = Load(jobs=1000, rate=25)
FAST_LEASE = {"SNIFFER_LEADER_LEASE_DURATION_S": "10", "SNIFFER_LEADER_RENEW_DEADLINE_S": "7",
              "SNIFFER_LEADER_RETRY_PERIOD_S": "1"}
STUCK_LIFECYCLES = ("unschedulable", "image-pull")
STUCK_REASONS = frozenset({"Unschedulable", "ErrImagePull", "ImagePullBackOff"})
STUCK_SHAPES = frozenset({"unschedulable", "err-image-pull", "image-pull-backoff"})
"""The simulator's shapes that show those reasons."""
STUCK_ENV = {"SNIFFER_STATES_PENDING_FAILURE_AFTER_S": "8",
             "SNIFFER_STATES_IMAGE_PULL_FAILURE_AFTER_S": "8"}
# Every lifecycle that leaves Pending at once (a pod the simulator, lagging, leaves Pending
# past the threshold may be failed there: `pending_past`), with more pods that never start: not
# late-scheduled (bound after half its duration, too close to the threshold for one honest
# expectation) nor init-error (its init container runs for the whole duration, so the
# pending rule fails it "Initializing" before the container's own error).
STUCK_MIX = ("succeeded=40,failed=8,oom=4,deadline=2,evicted=2,node-shutdown=1,preempted=2,"
             "evicted-api=2,cancelled=8,stopped=3,unschedulable=10,image-pull=10,crashloop=3,"
             "flaky=3")
# A stuck pod waits 20-30 s before its user gives up: well past the 8 s thresholds, so the
# watcher fails it first even when it lags seconds behind.
STUCK_DURATION = "uniform:20,30"


# -- evidence ------------------------------------------------------------------------------

def _counts(ctx: Ctx) -> dict[str, int]:
    return dict(scan_logs(w.log_path for w in ctx.watchers.values())[1])


def logged(**at_least: int) -> Callable[[Ctx], list[str]]:
    """Evidence: the watcher logs show each notable message at least so often."""
    def check(ctx: Ctx) -> list[str]:
        counts = _counts(ctx)
        return [f"fault not evident: {key} logged {counts.get(key, 0)} times, "
                f"expected >= {n}" for key, n in at_least.items() if counts.get(key, 0) < n]
    return check


def all_of(*checks: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
    def check(ctx: Ctx) -> list[str]:
        return [problem for c in checks for problem in c(ctx)]
    return check


def platform_injected(*kinds: str) -> Callable[[Ctx], list[str]]:
    def check(ctx: Ctx) -> list[str]:
        injected = ctx.platform.stats().get("faults_injected", {})
        return [f"fault not evident: the platform injected no {kind!r}" for kind in kinds
                if not injected.get(kind)]
    return check


def platform_answered(*statuses: str) -> Callable[[Ctx], list[str]]:
    def check(ctx: Ctx) -> list[str]:
        by_status = ctx.platform.stats().get("requests_by_status", {})
        return [f"fault not evident: the platform answered no {status}" for status in statuses
                if not by_status.get(status)]
    return check


def restarted_apiserver(ctx: Ctx) -> list[str]:
    if ctx.restartable is None or ctx.restartable.restarts < 1:
        return ["fault not evident: the API server was not restarted"]
    return []


def reconcile_killed_then_clean(ctx: Ctx) -> list[str]:
    """One pass SIGKILLed after it applied repairs, a rerun that finished, and a last pass
    with nothing left to repair (idempotence)."""
    problems = []
    killed = [p for p in ctx.reconciles if p["killed"]]
    if not killed or not killed[0]["platform_updates_during_pass"]:
        problems.append("fault not evident: no reconcile pass was killed mid-repair")
    done = [p for p in ctx.reconciles if not p["killed"]]
    if len(done) < 2 or any(p["exit_code"] != 0 for p in done[-2:]):
        problems.append(f"reconcile reruns did not both finish with 0: {done[-2:]}")
    elif sum((done[-1]["repaired"] or {}).values()):
        problems.append(f"the last reconcile pass still repaired {done[-1]['repaired']}: "
                        "a pass after a complete one must find nothing")
    return problems


def reconciled_beside_watcher(min_passes: int) -> Callable[[Ctx], list[str]]:
    def check(ctx: Ctx) -> list[str]:
        n = len([p for p in ctx.reconciles if not p["killed"]])
        return [] if n >= min_passes else [
            f"fault not evident: only {n} reconcile passes raced the watcher"]
    return check


def stuck_failed(ctx: Ctx) -> list[str]:
    runs = {r["id"]: r for r in ctx.platform.list_runs()}
    reasons = {runs[r].get("reason") for r in ctx.allowed_reasons if r in runs}
    problems = []
    if "Unschedulable" not in reasons:
        problems.append("fault not evident: no stuck-pending run was failed Unschedulable")
    if not reasons & {"ErrImagePull", "ImagePullBackOff"}:
        problems.append("fault not evident: no image-pull run was failed")
    return problems


# -- expectations ----------------------------------------------------------------------------

async def expect_stuck(ctx: Ctx) -> None:
    """Pods that never start are failed by the watcher's state rules once past the (low)
    thresholds, before their user gives up on them: the simulator's oracle assumes the
    rules never fire, so these runs expect failed with a pending reason.

    A simulator lagging on a loaded machine moves its pods later than planned, and the
    pending rule judges the pod as the API server holds it when the rule fires: a pod of
    the other lifecycles (which leave Pending at once) still Pending then may be failed
    with its pending reason, and a stuck pod that does not show its stuck condition yet
    may be failed with the reason of the shape before it (`pending_past`)."""
    limit_s = float(STUCK_ENV["SNIFFER_STATES_PENDING_FAILURE_AFTER_S"])
    late_stuck = pending_past(ctx.sims, limit_s,
                              until=lambda c: c.shape in STUCK_SHAPES or c.expect != State.QUEUED)
    for sim in ctx.sims:
        for outcome in sim.outcomes:
            if outcome.lifecycle in STUCK_LIFECYCLES:
                ctx.overrides[outcome.run_id] = Expectation(State.FAILED, None, None)
                ctx.allowed_reasons[outcome.run_id] = STUCK_REASONS | (
                    PENDING_REASONS if outcome.run_id in late_stuck else frozenset())
    late = pending_past(ctx.sims, limit_s, until=lambda c: c.expect != State.QUEUED)
    for run_id in late - set(ctx.overrides):
        ctx.alternatives.setdefault(run_id, []).extend(
            Expectation(State.FAILED, reason, None) for reason in sorted(PENDING_REASONS))


def pending_past(sims: Iterable[SimResult], limit_s: float, *,
                 until: Callable[[Change], bool]) -> set[str]:
    """Runs whose pod may not have shown its first change matching `until` yet when the
    watcher's pending rule fired, `limit_s` after the pod's creation.

    The rule fires at creationTimestamp + `limit_s`, and creationTimestamp (whole seconds,
    set while the create was in flight) is at least the floor of the create's send time.
    The watcher judges the pod from a read at or after that moment (it confirms a judged
    failure on the API server), so it can see the pod before that change only if the
    change was accepted after it. Runs whose change was accepted at or before it are not
    in the set: a failure judged from the older shape is then a defect. Only pod changes
    count (not the platform's run-* records)."""
    out: set[str] = set()
    for sim in sims:
        created: dict[str, float] = {}
        reached: dict[str, float] = {}
        for c in sim.changes:
            if c.op == "create":
                created.setdefault(c.run_id, c.sent_at)
            elif not c.op.startswith("run-") and c.run_id in created and until(c):
                reached.setdefault(c.run_id, c.accepted_at)
        for run_id, at in created.items():
            if reached.get(run_id, float("inf")) > math.floor(at) + limit_s:
                out.add(run_id)
    return out


async def expect_blind_stops(ctx: Ctx) -> None:
    """While every replica is down, a job stopped by deletion reaches its terminal phase
    unseen; the next leader's first view (after the kubelet's final DELETE moved
    deletionTimestamp) cannot tell the stop from the SIGTERM exit it caused. The state
    (failed) is still checked; the reason may be either, or PodLost when the pod was also
    created in that window (it never got the finalizer)."""
    for sim in ctx.sims:
        for outcome in sim.outcomes:
            if outcome.reason == "Deleted":
                ctx.overrides[outcome.run_id] = Expectation(State.FAILED, None, None)
                ctx.allowed_reasons[outcome.run_id] = frozenset({"Deleted", "Error", "PodLost"})


async def expect_meddled(ctx: Ctx) -> None:
    meddler = ctx.extras.get("meddler")
    if isinstance(meddler, faults.Meddler):
        await meddler.expect(ctx)


# -- fault schedules --------------------------------------------------------------------------

def cuts_then_half_open(cuts: tuple[float, ...], freeze_at: float, freeze_s: float) -> Step:
    async def inject(ctx: Ctx) -> None:
        await faults.cut_streams(ctx, cuts)
        await faults.half_open(ctx, freeze_at, freeze_s)
    return inject


async def _platform_sequence(ctx: Ctx, outage_s: float) -> None:
    await faults.platform_burst(ctx, 0.08, 6, "platform 500 burst", error_rate=0.35,
                                error_status=500)
    await faults.platform_burst(ctx, 0.18, 6, "platform 503 burst (Retry-After 1 s)",
                                error_rate=0.35, error_status=503, retry_after_s=1)
    await faults.platform_burst(ctx, 0.28, 6, "platform 429 burst (Retry-After 0.5 s)",
                                error_rate=0.35, error_status=429, retry_after_s=0.5)
    await faults.platform_burst(ctx, 0.38, 8, "platform slow-drip responses (3 s)",
                                slow_drip_ms=3000)
    await faults.platform_burst(ctx, 0.48, 5, "platform resets before the request",
                                reset_rate=0.25, reset_phase="before")
    await faults.platform_burst(ctx, 0.53, 5, "platform resets after the request",
                                reset_rate=0.25, reset_phase="after")
    await faults.platform_outage(ctx, 0.62, outage_s)


def all_platform_faults(outage_s: float) -> Step:
    async def inject(ctx: Ctx) -> None:
        meddler = ctx.extras["meddler"] = faults.Meddler(ctx)
        await asyncio.gather(_platform_sequence(ctx, outage_s), meddler.run(0.05, 0.9))
    return inject


async def meddle(ctx: Ctx) -> None:
    meddler = ctx.extras["meddler"] = faults.Meddler(ctx, share=0.08)
    await meddler.run(0.05, 0.95)


async def process_kills(ctx: Ctx) -> None:
    """Leader SIGKILLed with a standby; every replica SIGKILLed mid-burst and restarted;
    the reconciler racing the watcher meanwhile; then the watchers stop, the rest of the
    load runs unwatched, and a reconcile pass is SIGKILLed mid-repair and rerun."""
    simulation = ctx.start_simulation()
    race = asyncio.create_task(faults.reconcile_race(ctx, 0.05, 0.55))
    await faults.kill_leader_with_standby(ctx, 0.12)
    await faults.kill_all_watchers(ctx, 0.35)  # at once if the takeover took longer
    await race
    await ctx.at(0.65)
    gap = ctx.gap_begins("watchers stopped; load runs unwatched")
    await faults.stop_all_watchers(ctx)
    await simulation
    await faults.reconcile_killed_and_rerun(ctx, kill_after_updates=30, env=AFTER_LOAD)
    for watcher in ctx.watchers.values():
        watcher.start()
    for watcher in ctx.watchers.values():
        await watcher.wait_ready()
    await ctx.leader()
    ctx.gap_ends(gap)


async def sigkill_mid_burst(ctx: Ctx) -> None:
    simulation = ctx.start_simulation()
    await faults.kill_all_watchers(ctx, 0.4, restart_after_s=2.0)
    await simulation


async def leader_sigkill(ctx: Ctx) -> None:
    simulation = ctx.start_simulation()
    await faults.kill_leader_with_standby(ctx, 0.35)
    await simulation


async def reconcile_race(ctx: Ctx) -> None:
    simulation = ctx.start_simulation()
    race = asyncio.create_task(faults.reconcile_race(ctx, 0.02, 1.0))
    await simulation
    await race
    async with ctx.fault("sniffer reconcile after the load"):
        await ctx.reconcile()


async def reconcile_killed(ctx: Ctx) -> None:
    simulation = ctx.start_simulation()
    await ctx.at(0.5)
    gap = ctx.gap_begins("watcher stopped; load runs unwatched")
    await faults.stop_all_watchers(ctx)
    await simulation
    await asyncio.to_thread(ctx.platform.set_faults, latency_ms=20)  # a pass long enough
    try:
        await faults.reconcile_killed_and_rerun(ctx, kill_after_updates=50, env=AFTER_LOAD)
    finally:
        await asyncio.to_thread(ctx.platform.clear_faults)
    for watcher in ctx.watchers.values():
        watcher.start()
        await watcher.wait_ready()
    ctx.gap_ends(gap)


async def gone_restart(ctx: Ctx) -> None:
    await faults.gone_after_compaction_and_restart(ctx, ctx.scenario.load.jobs // 2)


# Passes after the load (runs at least 5.5 s old) use the short grace period again, so the
# rerun judges every lost pod and the pass after it must find nothing.
AFTER_LOAD = {"SNIFFER_RECONCILE_CONCURRENCY": "4", "SNIFFER_RECONCILE_GRACE_PERIOD_S": "5"}


def _race_grace() -> dict[str, str]:
    # Passes racing a live load use a production-like grace period: a run whose pod the
    # simulator has not created yet is not lost.
    return {"SNIFFER_RECONCILE_GRACE_PERIOD_S": "30"}


# -- the catalogues --------------------------------------------------------------------------

FAST: tuple[Scenario, ...] = (
    Scenario("stream-faults", "watch streams cut 3 times; half-open streams for 25 s "
             "(read timeout 10 s)", LOAD,
             inject=cuts_then_half_open((0.2, 0.35, 0.5), 0.6, 25),
             env={"SNIFFER_KUBE_READ_TIMEOUT_S": "10"}, proxy=True, leader_election=False,
             evidence=logged(watch_errors=1, stalled=1)),
    Scenario("gone-and-restart", "watcher cut off, etcd compacted, API server restarted: "
             "410 Gone at open, relist", LOAD, drive=gone_restart,
             own_apiserver=("--watch-cache=false",), proxy=True, leader_election=False,
             reconcile_after=True, evidence=all_of(logged(expired=1), restarted_apiserver)),
    Scenario("platform-faults", "500/503/429 bursts, 3 s slow-drip bodies, connection "
             "resets, 30 s outage, runs moved ahead by someone else (409/412)", LOAD,
             inject=all_platform_faults(30), expect=expect_meddled,
             evidence=all_of(platform_injected("error", "slow_drip", "reset", "outage"),
                             platform_answered("409"), logged(conflicts=1))),
    Scenario("process-kills", "leader SIGKILLed with a standby; all replicas SIGKILLed "
             "mid-burst; reconcile racing; watchers stopped, reconcile SIGKILLed mid-pass "
             "and rerun", LOAD, drive=process_kills, replicas=2,
             env={**FAST_LEASE, **_race_grace()}, expect=expect_blind_stops,
             evidence=all_of(reconcile_killed_then_clean, reconciled_beside_watcher(2))),
    Scenario("deleted-instantly-and-stuck", "pods deleted the instant they finish "
             "(finalizer mode); pods stuck Pending or in image pull errors (8 s thresholds)",
             Load(1000, 25, duration=STUCK_DURATION, mix=STUCK_MIX, delete_finished=True),
             env=STUCK_ENV, expect=expect_stuck, evidence=stuck_failed),
)

FULL: tuple[Scenario, ...] = (
    Scenario("watch-cut", "watch streams cut 5 times", LOAD,
             inject=lambda ctx: faults.cut_streams(ctx, (0.15, 0.3, 0.45, 0.6, 0.75)),
             proxy=True, leader_election=False, evidence=logged(watch_errors=3)),
    Scenario("half-open", "bytes stop, connections stay open, for 80 s (read timeout 30 s)",
             LOAD, inject=lambda ctx: faults.half_open(ctx, 0.3, 80),
             env={"SNIFFER_KUBE_READ_TIMEOUT_S": "30"}, proxy=True, leader_election=False,
             evidence=logged(stalled=1)),
    Scenario("gone-and-restart", "watcher cut off, etcd compacted, API server restarted: "
             "410 Gone at open, relist", LOAD, drive=gone_restart,
             own_apiserver=("--watch-cache=false",), proxy=True, leader_election=False,
             reconcile_after=True, evidence=all_of(logged(expired=1), restarted_apiserver)),
    Scenario("deleted-instantly", "every pod deleted the instant it finishes (finalizer "
             "mode)", Load(1000, 25, delete_finished=True)),
    Scenario("deleted-instantly-no-finalizers", "every pod deleted the instant it finishes "
             "(finalizer mode off)", Load(1000, 25, delete_finished=True),
             env={"SNIFFER_FINALIZERS_ENABLED": "false"}),
    Scenario("never-start", "pods stuck Pending (unschedulable) or in image pull errors "
             "(8 s thresholds)", Load(1000, 25, duration=STUCK_DURATION, mix=STUCK_MIX),
             env=STUCK_ENV, expect=expect_stuck, evidence=stuck_failed),
    Scenario("platform-errors", "platform 500, 503 (Retry-After 1 s) and 429 (Retry-After "
             "0.5 s) bursts, 35% of calls for 10 s each", LOAD,
             inject=lambda ctx: _bursts(ctx),
             evidence=platform_injected("error")),
    Scenario("platform-outage", "platform down for 2 minutes (503, Retry-After)", LOAD,
             inject=lambda ctx: faults.platform_outage(ctx, 0.3, 120),
             evidence=platform_injected("outage"), settle_bound_s=300),
    Scenario("platform-slow-drip", "platform bodies trickled over 3 s, plus 200±150 ms "
             "latency, for 30 s", LOAD,
             inject=lambda ctx: faults.platform_burst(
                 ctx, 0.3, 30, "slow drip and latency", slow_drip_ms=3000, latency_ms=200,
                 latency_jitter_ms=150),
             evidence=platform_injected("slow_drip")),
    Scenario("platform-resets", "25% of platform connections reset, before and after the "
             "request is applied, 10 s each", LOAD, inject=lambda ctx: _resets(ctx),
             evidence=platform_injected("reset")),
    Scenario("platform-409", "8% of runs moved ahead by someone else (to running, or "
             "cancelled by an operator): 409s and 412s", LOAD, inject=meddle,
             expect=expect_meddled, evidence=all_of(platform_answered("409"),
                                                    logged(conflicts=1))),
    Scenario("watcher-sigkill", "sniffer watch SIGKILLed mid-burst (40/s offered), restarted "
             "2 s later", Load(1000, 40), drive=sigkill_mid_burst, reconcile_after=True),
    Scenario("leader-sigkill", "the leader SIGKILLed with a standby running (15 s lease)",
             LOAD, drive=leader_sigkill, replicas=2),
    Scenario("reconcile-race", "sniffer reconcile passes back to back beside the watcher",
             LOAD, drive=reconcile_race, env=_race_grace(),
             evidence=reconciled_beside_watcher(3)),
    Scenario("reconcile-killed", "watcher stopped half-way; sniffer reconcile SIGKILLed "
             "mid-pass, rerun, and a third pass finds nothing", LOAD, drive=reconcile_killed,
             evidence=reconcile_killed_then_clean),
    JOB_RETRIES,
)


async def _bursts(ctx: Ctx) -> None:
    await faults.platform_burst(ctx, 0.15, 10, "platform 500 burst", error_rate=0.35,
                                error_status=500)
    await faults.platform_burst(ctx, 0.4, 10, "platform 503 burst (Retry-After 1 s)",
                                error_rate=0.35, error_status=503, retry_after_s=1)
    await faults.platform_burst(ctx, 0.65, 10, "platform 429 burst (Retry-After 0.5 s)",
                                error_rate=0.35, error_status=429, retry_after_s=0.5)


async def _resets(ctx: Ctx) -> None:
    await faults.platform_burst(ctx, 0.25, 10, "platform resets before the request",
                                reset_rate=0.25, reset_phase="before")
    await faults.platform_burst(ctx, 0.55, 10, "platform resets after the request",
                                reset_rate=0.25, reset_phase="after")


def by_name(name: str) -> Scenario:
    for scenario in (*FULL, *FAST):
        if scenario.name == name:
            return scenario
    raise KeyError(name)


__all__ = ["FAST", "FULL", "by_name"]
