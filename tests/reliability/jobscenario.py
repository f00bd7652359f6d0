"""The Job scenario of the full matrix: Job-backed runs with retries, made by the real Job
controller, under watch-stream cuts and a SIGKILLed watcher.

* `JOB_RETRIES` is a `Scenario` of `JOB_LOAD` (1,000 runs at 20/s): per
  `testbed.simulator.jobplans`, runs that succeed first time, fail once or twice then
  succeed (backoffLimit 3), exhaust their retries (failed BackoffLimitExceeded with the
  last attempt's exit code), or are cancelled (platform cancel, then the Job deleted).
* Its drive starts the real kube-controller-manager (`testbed.jobcontroller`: the Job
  controller and the garbage collector) on the scenario's API server, plays the attempt
  pods' kubelet part (`testbed.simulator.jobdriver`), and meanwhile cuts every watch
  stream four times (through the proxy) and SIGKILLs the watcher once, restarting it 2 s
  later. The controller-manager stops when the simulation has ended (every Job finished
  or, cancelled, gone).
* Its oracle, beside the harness's checks (every run in its expected final state:
  *lost*; no backwards move: *regressed*), counts as regressed every update that ended a
  run wrongly or before its Job ended (`tests.reliability.joboracle.premature_ends`).
* Its evidence: the watcher logged the cut streams, it was SIGKILLed, the attempt pods
  were the Job controller's (their creator in managedFields), runs were really retried,
  some exhausted their retries and some were cancelled; and two checks: no Job keeps
  Sniffer's finalizer at the end, and every judged run shows on the platform as many
  attempts as ran (`joboracle.wrong_attempts`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from testbed.jobcontroller import JobController
from testbed.simulator.jobdriver import JobSimConfig, simulate_jobs
from testbed.simulator.records import SimResult
from tests.reliability import faults
from tests.reliability.context import Ctx
from tests.reliability.joboracle import premature_ends, retried, wrong_attempts
from tests.reliability.model import Load, Scenario
from tests.reliability.processes import list_pods
from tests.reliability.verdict import scan_logs

JOB_LOAD = Load(jobs=1000, rate=20)
CUTS = (0.2, 0.5, 1.2, 1.8)
"""When the watch streams are cut, as fractions of the creation time (50 s): the tail
past 1.0 is where the retries are (the controller waits 10 s, 20 s, 40 s between
attempts)."""
KILL_AT = 0.8
CONTROLLER_MANAGER = "kube-controller-manager"
CONFLICT = "Operation cannot be fulfilled on jobs.batch"


def start_job_simulation(ctx: Ctx) -> asyncio.Task[SimResult]:
    """`Ctx.start_simulation` for Job-backed runs: `Ctx.at` counts from now."""
    load = ctx.scenario.load
    config = JobSimConfig(jobs=load.jobs, rate=load.rate, namespace=ctx.namespace,
                          seed=ctx.scenario.seed * 100 + 1,
                          run_prefix=f"{ctx.scenario.name[:18]}-1")
    ctx.sim_started = time.time()
    ctx.planned_s = load.planned_s

    async def play() -> SimResult:
        result = await simulate_jobs(ctx.kube, ctx.platform.url, ctx.platform.token_file,
                                     config, records_path=ctx.workdir / "records-1.jsonl")
        ctx.sims.append(result)
        return result

    return asyncio.create_task(play(), name="job-simulation")


async def job_retries(ctx: Ctx) -> None:
    controller = JobController(ctx.kube_server, ctx.workdir / "controller")
    await asyncio.to_thread(controller.start)
    ctx.notes.append(f"real {CONTROLLER_MANAGER} (job, garbage collector) pid "
                     f"{controller.pid}")
    try:
        simulation = start_job_simulation(ctx)
        cuts = asyncio.create_task(faults.cut_streams(ctx, CUTS))
        await faults.kill_all_watchers(ctx, KILL_AT, restart_after_s=2.0)
        await cuts
        await simulation
        ctx.extras["pod_creators"] = await _pod_creators(ctx)
    finally:
        await asyncio.to_thread(controller.stop)
    log = controller.log_path.read_text(errors="replace")
    ctx.notes.append(f"the Job controller retried {log.count(CONFLICT)} Job writes that "
                     "conflicted (Sniffer's finalizer patches bump the Job's version)")


async def _pod_creators(ctx: Ctx) -> Counter[str]:
    """Who wrote the attempt pods still in the namespace (the managers of their
    managedFields entries that are not of the status subresource, which the simulated
    kubelet writes)."""
    creators: Counter[str] = Counter()
    for pod in await list_pods(ctx.kube, ctx.namespace):
        for entry in (pod.get("metadata") or {}).get("managedFields") or ():
            if not entry.get("subresource"):
                creators[str(entry.get("manager"))] += 1
    return creators


def premature(ctx: Ctx, updates: Sequence[Mapping[str, Any]]) -> list[str]:
    return premature_ends([c for sim in ctx.sims for c in sim.changes], updates)


def _jobs(ctx: Ctx) -> list[dict[str, Any]]:
    out = subprocess.run(ctx.kube_server.kubectl_command(
        "-n", ctx.namespace, "get", "jobs", "-o", "json"), capture_output=True, text=True,
        check=True, timeout=120)
    return list(json.loads(out.stdout).get("items") or [])


def job_evidence(ctx: Ctx) -> list[str]:
    problems: list[str] = []
    counts = scan_logs(w.log_path for w in ctx.watchers.values())[1]
    if counts.get("watch_errors", 0) < len(CUTS):
        problems.append(f"fault not evident: {counts.get('watch_errors', 0)} watch errors "
                        f"logged for {len(CUTS)} cuts")
    if not any(w.killed for w in ctx.watchers.values()):
        problems.append("fault not evident: no watcher was SIGKILLed")
    creators = ctx.extras.get("pod_creators") or Counter()
    if not creators or set(creators) != {CONTROLLER_MANAGER}:
        problems.append(f"the attempt pods were not all the Job controller's: {dict(creators)}")
    changes = [c for sim in ctx.sims for c in sim.changes]
    lifecycles = Counter(o.lifecycle for sim in ctx.sims for o in sim.outcomes)
    n_retried = retried(changes)
    for what, n in (("retried runs", n_retried), ("exhausted runs", lifecycles["exhausted"]),
                    ("cancelled runs", lifecycles["cancelled"])):
        if not n:
            problems.append(f"fault not evident: no {what}")
    runs = {r["id"]: r for r in ctx.platform.list_runs()}
    judged = set(ctx.sims[-1].expected) if ctx.sims else set()
    miscounted = wrong_attempts([c for c in changes if c.run_id in judged], runs)
    if miscounted:
        problems.append(f"{len(miscounted)} run(s) show a wrong attempt count, e.g. "
                        f"{miscounted[:5]}")
    try:
        jobs = _jobs(ctx)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return [*problems, f"cannot list the Jobs: {e}"]
    held = [j["metadata"]["name"] for j in jobs
            if "sniffer.io/outcome" in (j["metadata"].get("finalizers") or ())]
    if held:
        problems.append(f"{len(held)} Job(s) keep Sniffer's finalizer, e.g. {held[:5]}")
    failed_attempts = sum(int((j.get("status") or {}).get("failed") or 0) for j in jobs)
    ctx.notes.append(
        f"{len(jobs)} Jobs left, {failed_attempts} failed attempts counted by the Job "
        f"controller; {n_retried} runs retried; ends planned: {dict(sorted(lifecycles.items()))}"
        f"; attempt pods by creator: {dict(creators)}")
    return problems


JOB_RETRIES = Scenario(
    "job-retries", "Job-backed runs, attempts made by the real Job controller (backoffLimit "
    "3: retried, exhausted, cancelled); watch streams cut 4 times; watcher SIGKILLed, "
    "restarted 2 s later", JOB_LOAD, drive=job_retries, proxy=True, leader_election=False,
    regressions=premature, evidence=job_evidence, settle_bound_s=300)
