"""One fault scenario at load: servers, `sniffer watch` processes, faults, and the verdict.

Contract:
* `run_scenario(scenario, bed, workdir)` runs one `Scenario` on the API server of `bed`
  (or, if the scenario asks, on a `RestartableApiServer` of its own) with a fresh
  reference platform, in a fresh namespace, and returns a `Result`. It never raises for a
  failed check: every problem is a line in `Result.problems`, and `Result.ok` is True iff
  there is none. It does raise if the testbed itself cannot be had.
* The flow: start the watcher(s) as real processes (`python -m cli watch`,
  finalizer mode on unless the scenario says otherwise) and wait until they are ready →
  run the simulator and the scenario's fault schedule side by side (or the scenario's own
  `drive`) → wait, bounded, until the platform is consistent → run `sniffer reconcile`
  where the scenario plans it (a watcher gap) or where the watcher dropped changes (its
  documented repair path) → the checks → SIGTERM the watchers → scan their logs.
* The checks, the same for every scenario:
  - every run is in the state its pod reached: `testbed.verdict.mismatches` against the
    simulator's expectations, adjusted only where the outcome is honestly unknowable
    (`gap_alternatives`): a pod created *and* deleted while no watcher could see it, that
    never carried the finalizer (an independent watch of the namespace says so), may be
    reported "pod lost" by the reconciler (cancelled if its run had a cancel request); a
    pod whose deletion was requested and completed while no watcher could see it is
    judged by state only (its final object no longer says whether the deletion ended
    it). A scenario that moves runs itself (409s) or sets state rules (stuck pods)
    states its own expectations;
  - no run went backwards (`testbed.verdict.regressions` over the platform's update log),
    nor moved wrongly by the scenario's own rule (`Scenario.regressions`: a Job-backed
    run ended before its Job did);
  - no pod keeps Sniffer's finalizer (a live, non-terminal pod of a run the simulator
    failed to finish may: it is still running);
  - no traceback or unhandled exception in any watcher log, and every watcher exits 0 on
    SIGTERM at the end (SIGKILLed lives aside);
  - the fault actually happened (the scenario's `evidence` check);
  - the time to consistency: the last fault's end → the platform's last update that made
    it consistent (from the update log), with the lag behind the last pod change too.
* All times in a `Result` are epoch seconds or durations in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sniffer.kube import KubeClient
from sniffer.kubedecode import NotFound
from sniffer.podview import RUN_ID_LABEL
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer, launch
from testbed.simulator.lifecycles import Expectation
from testbed.verdict import regressions
from tests.reliability.context import Ctx
from tests.reliability.model import Result, Scenario, Window
from tests.reliability.processes import PodObserver, list_pods
from tests.reliability.servers import RestartableApiServer, ThreadedProxy
from tests.reliability.verdict import (
    Judgement,
    finalizers_left,
    gap_alternatives,
    judge,
    scan_logs,
    timing,
)

log = logging.getLogger(__name__)
POLL_S = 1.0


@dataclass
class Bed:
    """The shared API server of a series of scenarios (a scenario may bring its own)."""

    kube: ApiServer


# -- running one scenario -------------------------------------------------------------------

RESTART_DELAY_S = 1.0
"""How soon a watcher that exited on its own is started again (a kubelet's first restart
of a container is immediate; this leaves its log a moment to flush)."""


async def _supervise(ctx: Ctx, result: Result) -> None:
    """Start again every watcher that exits on its own, as its Deployment's restartPolicy
    Always would. Losing the lease is such an exit by design (the process exits 1 and
    says so in its log; a restart rejoins as a standby): a note. Any other exit is a
    problem. Runs until cancelled."""
    leases_lost: dict[str, int] = {}
    while True:
        await asyncio.sleep(POLL_S)
        for watcher in list(ctx.watchers.values()):
            code = watcher.exited_on_its_own()
            if code is None:
                continue
            lost = scan_logs([watcher.log_path])[1].get("lease_lost", 0)
            if lost > leases_lost.get(watcher.name, 0):
                leases_lost[watcher.name] = lost
                ctx.notes.append(f"{watcher.name} lost its lease and exited {code}; "
                                 "restarted as its Deployment would")
            else:
                result.problems.append(f"{watcher.name} exited {code} on its own")
            await asyncio.sleep(RESTART_DELAY_S)
            watcher.start()

async def run_scenario(scenario: Scenario, bed: Bed | None, workdir: Path) -> Result:
    workdir = workdir / scenario.name
    workdir.mkdir(parents=True, exist_ok=True)
    result = Result(scenario.name, scenario.faults, scenario.load.describe(),
                    started_at=time.time(), workdir=str(workdir))
    restartable: RestartableApiServer | None = None
    if scenario.own_apiserver is not None or bed is None:
        restartable = RestartableApiServer(workdir / "kube",
                                           extra_args=scenario.own_apiserver or ())
        kube_server = await asyncio.to_thread(restartable.start)
    else:
        kube_server = bed.kube
    platform = await asyncio.to_thread(launch, workdir / "platform")
    kube = await KubeClient.connect(kubeconfig=str(kube_server.kubeconfig), pool_size=96)
    namespace = f"rel-{scenario.name[:40]}-{secrets.token_hex(3)}"
    ctx = Ctx(scenario, kube_server, platform, kube, namespace, workdir, restartable)
    observer_task: asyncio.Task[None] | None = None
    supervisor: asyncio.Task[None] | None = None
    try:
        await kube.request_json("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        if scenario.proxy:
            ctx.proxy = ThreadedProxy(int(kube_server.url.rsplit(":", 1)[1]))
        observer = PodObserver(kube, namespace)
        observer_task = asyncio.create_task(observer.run(), name="pod-observer")
        for i in range(scenario.replicas):
            ctx.add_watcher(f"watcher-{i}").start()
        for watcher in ctx.watchers.values():
            await watcher.wait_ready()
        supervisor = asyncio.create_task(_supervise(ctx, result), name="watcher-supervisor")
        if scenario.leader_election:
            await ctx.leader()
        if scenario.drive is not None:
            await scenario.drive(ctx)
        else:
            await _simulate_with_faults(ctx)
        await _verdict(ctx, result, observer)
    except Exception as exc:
        log.exception("scenario %s failed to run", scenario.name)
        result.problems.append(f"the scenario could not run: {type(exc).__name__}: {exc}")
    finally:
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        for watcher in ctx.watchers.values():
            watcher.reap()
            code = await watcher.stop()
            if code is not None and code != 0:
                result.problems.append(f"{watcher.name} exited with {code} on SIGTERM")
        result.watcher_exit_codes = {w.name: w.exit_codes for w in ctx.watchers.values()}
        tracebacks, counts, bad = scan_logs(w.log_path for w in ctx.watchers.values())
        result.tracebacks = tracebacks
        result.log_counts = dict(counts)
        result.dropped = counts.get("dropped", 0)
        if tracebacks:
            result.problems.append(f"{tracebacks} traceback(s) in the watcher logs: {bad}")
        if observer_task is not None:
            observer_task.cancel()
            await asyncio.gather(observer_task, return_exceptions=True)
            _dump_jsonl(workdir / "finalizer-transitions.jsonl", observer.transitions)
        if ctx.proxy is not None:
            ctx.proxy.close()
        with contextlib.suppress(Exception):
            await _purge(kube, namespace)
        await kube.close()
        platform.stop()
        if restartable is not None:
            await asyncio.to_thread(restartable.stop)
        result.faults_applied = [_window_json(w) for w in ctx.windows]
        result.gaps = [_window_json(w) for w in ctx.gaps]
        result.notes.extend(ctx.notes)
        result.reconcile_passes = ctx.reconciles
        result.duration_s = round(time.time() - result.started_at, 1)
        result.ok = not result.problems
        (workdir / "result.json").write_text(json.dumps(result.to_json(), indent=2))
    return result


def _dump_jsonl(path: Path, items: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w") as out:
        for item in items:
            out.write(json.dumps(item) + "\n")


def _window_json(w: Window) -> dict[str, Any]:
    return {"name": w.name, "start": w.start, "end": w.end,
            "seconds": round(w.end - w.start, 2) if w.end is not None else None}


async def _simulate_with_faults(ctx: Ctx) -> None:
    simulation = ctx.start_simulation()
    faults = (asyncio.create_task(ctx.scenario.inject(ctx), name="faults")
              if ctx.scenario.inject is not None else None)
    try:
        await simulation
    finally:
        if faults is not None:
            if not faults.done():
                await asyncio.wait_for(asyncio.shield(faults), ctx.scenario.settle_bound_s)
            faults.result()


async def _runs(platform: PlatformServer) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in await asyncio.to_thread(platform.list_runs)}


async def _verdict(ctx: Ctx, result: Result, observer: PodObserver) -> None:
    scenario = ctx.scenario
    expected: dict[str, Expectation] = {}
    unfinished: set[str] = set()
    for sim in ctx.sims:
        expected.update(sim.expected)
        unfinished.update(e.run_id for e in sim.errors)
        result.jobs_created += sim.created
        result.sim_errors += len(sim.errors)
    unfinished -= set(expected)
    if result.sim_errors:
        result.notes.append(f"{result.sim_errors} simulator errors (those runs are not "
                            f"judged): {[e.error for e in ctx.sims[-1].errors[:3]]}")
    if scenario.expect is not None:
        await scenario.expect(ctx)
    expected.update({k: v for k, v in ctx.overrides.items() if k in expected})
    result.runs_checked = len(expected)

    async def look(before_reconcile: bool) -> tuple[Judgement, list[str]]:
        runs = await _runs(ctx.platform)
        pods = await list_pods(ctx.kube, ctx.namespace)
        present = {str((p["metadata"].get("labels") or {}).get(RUN_ID_LABEL)) for p in pods}
        alternatives = gap_alternatives(ctx, observer.finalized, present, runs)
        for run_id, alts in ctx.alternatives.items():
            alternatives.setdefault(run_id, []).extend(alts)
        verdict = judge(expected, alternatives, ctx.allowed_reasons, runs,
                        before_reconcile=before_reconcile)
        return verdict, finalizers_left(pods, unfinished)

    async def settle(bound_s: float, before_reconcile: bool = False,
                     ) -> tuple[Judgement, list[str]]:
        deadline = time.monotonic() + bound_s
        while True:
            verdict, left = await look(before_reconcile)
            if (not verdict.wrong and not left) or time.monotonic() > deadline:
                return verdict, left
            await asyncio.sleep(POLL_S)

    verdict, left = await settle(scenario.settle_bound_s,
                                 before_reconcile=scenario.reconcile_after)
    result.settled_by_watcher = not verdict.wrong and not left and \
        not verdict.awaiting_reconcile
    _, counts, _ = scan_logs(w.log_path for w in ctx.watchers.values())
    if scenario.reconcile_after or (not result.settled_by_watcher and counts.get("dropped")):
        if not scenario.reconcile_after:
            ctx.notes.append(f"the watcher dropped {counts['dropped']} change(s) after "
                             "retries; `sniffer reconcile` repairs them, as designed")
        await asyncio.sleep(5.5)  # runs must outlive the reconciler's 5 s grace period
        await ctx.reconcile()
        verdict, left = await settle(60.0)
    result.lost = len(verdict.wrong)
    result.lost_examples = verdict.wrong[:10]
    result.reported_as_pod_lost = verdict.pod_lost
    result.reason_unknowable = verdict.reason_unknowable
    result.failed_while_pending = verdict.failed_while_pending
    if verdict.failed_while_pending:
        ctx.notes.append(f"{verdict.failed_while_pending} run(s) failed by the pending rule: "
                         "the API server held their pod Pending past its threshold")
    result.finalizers_left = len(left)
    if verdict.wrong:
        result.problems.append(f"{len(verdict.wrong)} run(s) not in the state their pod "
                               f"reached, e.g. {verdict.wrong[:5]}")
    if left:
        result.problems.append(f"{len(left)} pod(s) keep Sniffer's finalizer, e.g. {left[:5]}")
    updates = await asyncio.to_thread(ctx.platform.updates)
    backwards = regressions(updates)
    wrong = scenario.regressions(ctx, updates) if scenario.regressions is not None else []
    result.regressed = len(backwards) + len(wrong)
    if backwards:
        result.problems.append(f"{len(backwards)} update(s) moved a run backwards: "
                               f"{backwards[:3]}")
    if wrong:
        result.problems.append(f"{len(wrong)} update(s) ended a run wrongly: {wrong[:3]}")
    timing(ctx, result, expected, updates)
    stats = await asyncio.to_thread(ctx.platform.stats)
    result.platform_requests = dict(stats.get("requests_by_status", {}))
    result.platform_faults = dict(stats.get("faults_injected", {}))
    if scenario.evidence is not None:
        result.problems.extend(scenario.evidence(ctx))
    for summary in ctx.reconciles:
        if summary["exit_code"] not in (0,) and not summary["killed"]:
            result.problems.append(f"sniffer reconcile pass {summary['pass']} exited with "
                                   f"{summary['exit_code']}")


async def _purge(kube: KubeClient, namespace: str) -> None:
    """Remove the scenario's Jobs and pods for good (after the checks), then its
    namespace."""
    jobs = kube.jobs_path(namespace)
    for job in (await kube.request_json("GET", jobs)).get("items") or ():
        if job["metadata"].get("finalizers"):
            with contextlib.suppress(NotFound):
                await kube.request_json("PATCH", f"{jobs}/{job['metadata']['name']}",
                                        body={"metadata": {"finalizers": None}},
                                        content_type="application/merge-patch+json")
    await kube.request_json("DELETE", jobs, query={"propagationPolicy": "Background"})
    for pod in await list_pods(kube, namespace):
        meta = pod["metadata"]
        if meta.get("finalizers"):
            with contextlib.suppress(NotFound):
                await kube.patch_pod(namespace, meta["name"], {"metadata": {"finalizers": None}},
                                     content_type="application/merge-patch+json")
    await kube.request_json("DELETE", f"/api/v1/namespaces/{namespace}/pods",
                            query={"gracePeriodSeconds": 0})
    await kube.request_json("DELETE", f"/api/v1/namespaces/{namespace}")
