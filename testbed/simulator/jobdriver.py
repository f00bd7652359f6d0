"""`simulate_jobs`: Job-backed runs whose attempt pods the real Job controller makes.

The simulator submits each run as a platform would (a platform run, then a batch/v1 Job
carrying the run id), and plays only the kubelet's part for the pods the Job controller
creates from the Job's template (`testbed.jobcontroller` runs it); the controller itself
counts attempts, waits out its backoff, retries, and writes the Job's conditions.

Contract:

* `simulate_jobs(kube, platform_url, token_file, config)` creates ``config.jobs`` runs and
  Jobs, one every ``1/rate`` seconds, per `jobplans.draw_job_plans`; the Job's pod template
  names a simulated node, so its pods are bound at creation. It returns a `SimResult` once
  every run has reached its end, or ``config.end_bound_s`` after the last creation (runs
  not ended by then get an `Error` and are not judged).
* Attempt pods: each pod the Job controller creates for a run is that run's next attempt
  (the controller makes the next only after the previous one failed). Its kubelet part:
  Running after `START_DELAY_S`, then, after the plan's duration, Succeeded (exit 0) or
  Failed (reason Error, the plan's exit code); a cancelled run's attempt runs until its
  deletion, which the stand-in kubelet (`kubelet.Kubelet`) finishes once the garbage
  collector deletes the pod. An attempt beyond the plan is an `Error`.
* A run's end: for ``first-try``, ``retry-*`` and ``exhausted`` runs, the Job's first
  terminal condition (SuccessCriteriaMet or Complete, FailureTarget or Failed: `ENDS`) as
  the simulator's watch of Jobs first shows it; for a cancelled run, the Job gone after
  the platform's cancel and the Job's DELETE (propagation Background). The cancel is
  requested only once the platform shows the run running and the Job carries Sniffer's
  finalizer, so the Job cannot vanish unseen (a Job deleted before any watcher held it
  is the reconciler's case, not this one's).
* Records: every write is a `Change` (ops ``run-create``, ``create-job``, ``status``,
  ``run-cancel``, ``delete-job``; the stand-in kubelet's ``status``/``delete``), with
  ``expect`` the state a correct Sniffer shows once it has seen it: queued, running
  (after every attempt's end too: the Job decides), and the run's final state from the
  change that decides it: the Job's DELETE, or the Job controller's condition, a
  ``job-condition`` change by actor ``job-controller``, "accepted" when the simulator saw
  it and "sent" when the last attempt's end was (the controller wrote it in between).
  Attempt pod shapes are prefixed ``attempt-``: the pod-scoped oracle rules for deleted
  pods do not apply to a run held by its Job.
  Each run ends with one `Outcome` (`JobPlan.expectation`), ``decided_at`` the deciding
  change's acceptance.
* At most ``config.concurrency`` requests are in flight; cancelling `simulate_jobs`
  cancels every task it started and re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sniffer.kube import KubeClient
from sniffer.kubedecode import KubeError, NotFound, Page
from sniffer.ownership import JOB_UID_LABEL
from sniffer.podview import KIND_LABEL, OUTCOME_FINALIZER, RUN_ID_LABEL
from testbed import jobshapes
from testbed.simulator.follow import follow, pod_pages
from testbed.simulator.jobplans import DEFAULT_JOB_MIX, JobPlan, draw_job_plans
from testbed.simulator.kubeapi import Accepted, Counters, PodApi
from testbed.simulator.kubelet import Kubelet
from testbed.simulator.lifecycles import TERMINAL, Shape, State
from testbed.simulator.records import Change, Error, Outcome, RecordLog, SimResult
from testbed.simulator.runs import PlatformError, RunsClient
from watch.jobsource import JobSource, jobs_path

log = logging.getLogger(__name__)
JSON = dict[str, Any]
START_DELAY_S = 0.2
CANCEL_WAIT_S = 180.0
"""How long a cancel waits for the platform to show the run running and for Sniffer's
finalizer on the Job (a watcher gap may delay both)."""


@dataclass(frozen=True)
class JobSimConfig:
    jobs: int
    rate: float
    namespace: str
    seed: int
    run_prefix: str
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_JOB_MIX))
    backoff_limit: int = 3
    concurrency: int = 64
    end_bound_s: float = 600.0
    """After the last creation, how long runs may take to end (the controller's backoff
    before a 4th attempt alone is 10 + 20 + 40 s)."""


class _Run:
    """One plan being played. `attempts` are its pods' uids in creation order."""

    def __init__(self, plan: JobPlan) -> None:
        self.plan = plan
        self.attempts: list[str] = []
        self.running = asyncio.Event()
        self.ended = asyncio.Event()
        self.decided_at: float | None = None
        self.last_sent: float | None = None
        """When the write ending the last planned attempt was sent."""


ENDS = {"SuccessCriteriaMet": State.SUCCEEDED, "Complete": State.SUCCEEDED,
        "FailureTarget": State.FAILED, "Failed": State.FAILED}
"""The Job's terminal conditions: the controller writes the first of each pair when it
decides, the second once the Job's pods are accounted for."""


def job_manifest(plan: JobPlan) -> JSON:
    """The Job the platform submits for `plan`, its pods bound to the simulated node."""
    return jobshapes.job_manifest(plan.namespace, plan.job_name, plan.run_id,
                                  backoff_limit=plan.backoff_limit, node=plan.node, grace_s=2)


class _JobDriver:
    def __init__(self, kube: KubeClient, api: PodApi, runs: RunsClient, config: JobSimConfig,
                 plans: list[JobPlan], records: RecordLog) -> None:
        self.kube, self.api, self.runs, self.config = kube, api, runs, config
        self.records = records
        self.plans = plans
        self.by_run: dict[str, _Run] = {}
        self.by_job: dict[str, _Run] = {}
        self.kubelet = Kubelet(api, config.namespace, record=self._kubelet_wrote)
        self.rng = random.Random(config.seed ^ 0x5EED)
        self.created = 0
        self.all_submitted = asyncio.Event()
        """Set once every plan's task has been started."""
        self._tasks: set[asyncio.Task[None]] = set()

    # --- records ---------------------------------------------------------------------

    def _change(self, run: _Run, op: str, actor: str, shape: str, expect: State,
                accepted: Accepted, obj: str | None = None) -> None:
        plan = run.plan
        if expect in TERMINAL and run.decided_at is None:
            run.decided_at = accepted.accepted_at
        self.records.add(Change(
            run_id=plan.run_id, pod=f"{plan.namespace}/{obj or plan.job_name}", op=op,
            actor=actor, shape=shape, expect=expect.value, sent_at=accepted.sent_at,
            accepted_at=accepted.accepted_at, resource_version=accepted.resource_version,
            lifecycle=plan.lifecycle, kind="job"))

    def _kubelet_wrote(self, pod: JSON, op: str, shape: Shape, accepted: Accepted) -> None:
        run = self.by_run.get(((pod.get("metadata") or {}).get("labels") or {})
                              .get(RUN_ID_LABEL) or "")
        if run is not None:
            self._change(run, op, "kubelet", f"attempt-{shape.value}",
                         run.plan.expectation.state, accepted, pod["metadata"].get("name"))

    def _error(self, run: _Run, op: str, message: str) -> None:
        plan = run.plan
        self.records.add(Error(run_id=plan.run_id, pod=f"{plan.namespace}/{plan.job_name}",
                               op=op, error=message[:500], at=time.time()))

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the runs --------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.TaskGroup() as tg:
            for plan in self.plans:
                delay = start + plan.index / self.config.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tg.create_task(self._play(plan), name=f"job:{plan.job_name}")
            self.all_submitted.set()

    async def _play(self, plan: JobPlan) -> None:
        run = self.by_run[plan.run_id] = self.by_job[plan.job_name] = _Run(plan)
        op = "run-create"
        try:
            accepted = await self.runs.create(plan.run_id, kind="job", namespace=plan.namespace,
                                              pod_name=plan.job_name, traceparent=None)
            self._change(run, op, "platform", Shape.RUN_CREATED.value, State.QUEUED, accepted)
            op = "create-job"
            accepted = await self.api.call("POST", jobs_path(plan.namespace),
                                           body=job_manifest(plan))
            self._change(run, op, "platform", "job-created", State.QUEUED, accepted)
            self.created += 1
            if plan.cancel:
                op = "cancel"
                await self._cancel(run)
            op = "end"
            await run.ended.wait()
        except (KubeError, PlatformError, aiohttp.ClientError, TimeoutError) as e:
            self._error(run, op, f"{type(e).__name__}: {e}")
            return
        expectation = plan.expectation
        self.records.add(Outcome(
            run_id=plan.run_id, pod=f"{plan.namespace}/{plan.job_name}",
            lifecycle=plan.lifecycle, kind="job", state=expectation.state.value,
            reason=expectation.reason, exit_code=expectation.exit_code,
            decided_at=run.decided_at if run.decided_at is not None else time.time()))

    async def _cancel(self, run: _Run) -> None:
        """The user cancels once the run shows running and Sniffer holds the Job; the
        platform then deletes the Job."""
        plan = run.plan
        await asyncio.wait_for(run.running.wait(), CANCEL_WAIT_S)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while not (await self.runs.state(plan.run_id) == "running" and await self._held(plan)):
            if time.monotonic() > deadline:
                raise TimeoutError("the run never showed running with the Job held")
            await asyncio.sleep(0.5)
        await asyncio.sleep(self.rng.uniform(0.2, 1.5))
        accepted = await self.runs.cancel(plan.run_id)
        self._change(run, "run-cancel", "user", Shape.RUN_CANCEL_REQUESTED.value,
                     State.RUNNING, accepted)
        accepted = await self.api.call("DELETE", jobs_path(plan.namespace, plan.job_name),
                                       body={"apiVersion": "v1", "kind": "DeleteOptions",
                                             "propagationPolicy": "Background"})
        self._change(run, "delete-job", "platform", "job-deleted", State.CANCELLED, accepted)

    async def _held(self, plan: JobPlan) -> bool:
        try:
            job = (await self.api.call("GET", jobs_path(plan.namespace, plan.job_name))).obj
        except NotFound:
            return False
        return OUTCOME_FINALIZER in ((job or {}).get("metadata") or {}).get("finalizers", [])

    # --- attempt pods (the kubelet's part) --------------------------------------------

    def on_pod(self, event: str, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        run = self.by_run.get((meta.get("labels") or {}).get(RUN_ID_LABEL) or "")
        uid = meta.get("uid")
        if (run is None or not uid or event == "DELETED" or uid in run.attempts
                or not (meta.get("labels") or {}).get(JOB_UID_LABEL)
                or meta.get("deletionTimestamp")):
            return
        # No await between the check above and this append.
        run.attempts.append(uid)
        self._spawn(self._attempt(run, len(run.attempts) - 1, pod), f"attempt:{meta['name']}")

    async def _attempt(self, run: _Run, index: int, pod: JSON) -> None:
        plan, name = run.plan, pod["metadata"]["name"]
        if index >= len(plan.attempts):
            self._error(run, "attempt", f"unplanned attempt {index + 1} ({name})")
            return
        try:
            await asyncio.sleep(START_DELAY_S)
            accepted = await self.kubelet.apply(pod, Shape.RUNNING)
            self._change(run, "status", "kubelet", "attempt-running", State.RUNNING, accepted,
                         name)
            run.running.set()
            if plan.cancel:
                return  # runs until the garbage collector deletes it
            await asyncio.sleep(plan.durations[index])
            code = plan.attempts[index]
            pod = accepted.obj or pod
            if index == len(plan.attempts) - 1:
                run.last_sent = time.time()  # the Job controller's end comes after
            # Running still: only the Job's condition ends the run.
            if code == 0:
                accepted = await self.kubelet.apply(pod, Shape.SUCCEEDED)
                self._change(run, "status", "kubelet", "attempt-succeeded", State.RUNNING,
                             accepted, name)
            else:
                accepted = await self.kubelet.apply(pod, Shape.FAILED_ERROR, exit_code=code)
                self._change(run, "status", "kubelet", "attempt-failed", State.RUNNING,
                             accepted, name)
        except KubeError as e:
            self._error(run, "attempt", f"{name}: {type(e).__name__}: {e}")

    # --- Jobs (the controller's conditions, and deletions) ------------------------------

    def on_job(self, event: str, job: JSON) -> None:
        run = self.by_job.get((job.get("metadata") or {}).get("name") or "")
        if run is None or run.ended.is_set():
            return
        if event == "DELETED":
            if run.plan.cancel:
                run.ended.set()
            return
        for cond in (job.get("status") or {}).get("conditions") or ():
            state = ENDS.get(cond.get("type") or "")
            if state is not None and cond.get("status") == "True":
                now = time.time()
                # The controller wrote it after our last write was sent, before we saw it.
                sent = run.last_sent if run.last_sent is not None else now
                self._change(run, "job-condition", "job-controller",
                             f"job-{cond['type']}-{cond.get('reason')}", state,
                             Accepted(job, sent, now))
                if not run.plan.cancel:
                    run.ended.set()
                return

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def simulate_jobs(kube: KubeClient, platform_url: str, token_file: Path,
                        config: JobSimConfig, *, records_path: Path | None = None,
                        ) -> SimResult:
    """Run one Job simulation (see the module docstring)."""
    plans = draw_job_plans(config.jobs, config.seed, config.run_prefix, config.namespace,
                           mix=config.mix, backoff_limit=config.backoff_limit)
    limit = asyncio.Semaphore(config.concurrency)
    counters = Counters()
    api = PodApi(kube, limit, counters=counters)
    records = RecordLog(records_path, keep=True)
    source = JobSource(kube)
    started = time.time()
    ns, selector = config.namespace, f"{KIND_LABEL}=job"

    def pods() -> AsyncIterator[Page]:
        return pod_pages(kube, ns, selector)

    def pod_watch(rv: str) -> AsyncIterator[Any]:
        return kube.watch_pods(ns, label_selector=selector, resource_version=rv,
                               timeout_seconds=300, read_timeout=90)

    def job_pages() -> AsyncIterator[Page]:
        return source.pages(ns, label_selector=selector, page_size=500)

    def job_watch(rv: str) -> AsyncIterator[Any]:
        return source.watch(ns, label_selector=selector, resource_version=rv,
                            timeout_seconds=300, read_timeout=90)

    timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
    try:
        async with aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(limit=config.concurrency),
        ) as session:
            runs = RunsClient(platform_url, token_file, session, limit, counters=counters)
            driver = _JobDriver(kube, api, runs, config, plans, records)
            await api.ensure_namespace(ns)
            pods_ready, jobs_ready = asyncio.Event(), asyncio.Event()
            followers = [asyncio.create_task(follow(pods, pod_watch, driver.on_pod,
                                                    pods_ready, what="pods"),
                                             name="jobsim:pods"),
                         asyncio.create_task(follow(job_pages, job_watch, driver.on_job,
                                                    jobs_ready, what="jobs"),
                                             name="jobsim:jobs")]
            try:
                async with driver.kubelet.running():
                    await asyncio.wait_for(asyncio.gather(pods_ready.wait(),
                                                          jobs_ready.wait()), 60)
                    await _bounded(driver.run(), driver, config.end_bound_s)
            finally:
                for task in followers:
                    task.cancel()
                await asyncio.gather(*followers, return_exceptions=True)
                await driver.close()
    finally:
        records.close()
    ended = {o.run_id for o in records.outcomes}
    by_lifecycle: dict[str, int] = {}
    for plan in plans:
        by_lifecycle[plan.lifecycle] = by_lifecycle.get(plan.lifecycle, 0) + 1
    return SimResult(
        run_prefix=config.run_prefix, seed=config.seed, started_at=started,
        finished_at=time.time(), created=driver.created, finished=len(ended),
        expected={p.run_id: p.expectation for p in plans if p.run_id in ended},
        changes=records.changes, outcomes=records.outcomes, errors=records.errors,
        by_lifecycle=by_lifecycle, kube_requests=counters.kube_requests,
        platform_requests=counters.platform_requests, retries=counters.retries)


async def _bounded(playing: Awaitable[None], driver: _JobDriver, bound_s: float) -> None:
    """Play every run; once all are created, give them `bound_s` to end, then record an
    `Error` for each run still open (its task is cancelled)."""
    task = asyncio.ensure_future(playing)
    submitted = asyncio.ensure_future(driver.all_submitted.wait())
    await asyncio.wait({task, submitted}, return_when=asyncio.FIRST_COMPLETED)
    submitted.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), bound_s)
    if not task.done():
        for run in driver.by_run.values():
            if not run.ended.is_set():
                driver._error(run, "end", f"did not end within {bound_s:g}s")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BaseExceptionGroup):
            await task
    else:
        task.result()


__all__ = ["JobSimConfig", "job_manifest", "simulate_jobs"]
