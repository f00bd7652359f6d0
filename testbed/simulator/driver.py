"""`simulate`: create runs and pods at a rate, play each pod's lifecycle, record everything.

Contract:

* `simulate(kube, platform_url, token_file, config)` creates ``config.jobs`` platform runs
  and their pods (in ``config.namespace``, created if missing), one every ``1/rate``
  seconds, and drives every pod through its planned lifecycle (`workloads.draw_plans`)
  concurrently. It returns a `SimResult` once every pod has reached its end: a terminal
  phase, or deleted (the kubelet stand-in finishes the deletions the simulator starts;
  objects held by finalizers stay Terminating: the simulator never removes finalizers).
* With ``config.delete_finished`` a pod reaching a terminal phase is deleted at once.
* At most ``config.concurrency`` requests (Kubernetes and platform together) are in flight;
  one `KubeClient` session and one aiohttp session for the platform are shared by all pods.
* A pod whose calls fail for good gets an `Error` record and the simulation goes on.
* `progress`, if given, is called every ``config.progress_interval_s`` with a `Progress`,
  and once more at the end.
* Records stream to ``records_path`` (JSONL) as they happen; see `records`.
* Cancelling `simulate` cancels every pod's task, closes the record file and re-raises.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from sniffer.kube import KubeClient
from sniffer.kubedecode import KubeError
from sniffer.podview import CANCEL_ANNOTATION, RUN_ID_LABEL
from testbed.simulator.config import SimConfig
from testbed.simulator.kubeapi import Accepted, Counters, PodApi
from testbed.simulator.kubelet import TERMINAL_PHASES, Kubelet
from testbed.simulator.lifecycles import (
    TERMINAL,
    Expectation,
    Op,
    Shape,
    State,
    Step,
    expected_state,
)
from testbed.simulator.records import Change, Error, Outcome, RecordLog, SimResult
from testbed.simulator.runs import PlatformError, RunsClient
from testbed.simulator.workloads import Plan, draw_plans, new_traceparent, pod_manifest

log = logging.getLogger(__name__)
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Progress:
    elapsed_s: float
    total: int
    created: int
    running: int
    """Pods whose last change should show as running on the platform."""
    finished: int
    errors: int
    requests: int


ProgressFn = Callable[[Progress], None]


class _Run:
    """One plan being played; `state` is the platform state expected so far."""

    __slots__ = ("decided_at", "plan", "state")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.state = State.QUEUED
        self.decided_at: float | None = None


class _Driver:
    def __init__(self, api: PodApi, runs: RunsClient, config: SimConfig, plans: list[Plan],
                 log_: RecordLog) -> None:
        self.api = api
        self.runs = runs
        self.config = config
        self.plans = plans
        self.records = log_
        self.kubelet = Kubelet(api, config.namespace, record=self._kubelet_wrote)
        self.by_run: dict[str, _Run] = {}
        self.created = self.running = self.finished = 0
        self.started = time.time()

    # --- records ---------------------------------------------------------------------

    def _change(self, run: _Run, op: str, actor: str, shape: Shape, expect: State,
                accepted: Accepted) -> None:
        before = run.state
        run.state = expect
        if before is not State.RUNNING and expect is State.RUNNING:
            self.running += 1
        elif before is State.RUNNING and expect is not State.RUNNING:
            self.running -= 1
        if expect in TERMINAL and run.decided_at is None:
            run.decided_at = accepted.accepted_at
        plan = run.plan
        self.records.add(Change(
            run_id=plan.run_id, pod=f"{plan.namespace}/{plan.pod_name}", op=op, actor=actor,
            shape=shape.value, expect=expect.value, sent_at=accepted.sent_at,
            accepted_at=accepted.accepted_at, resource_version=accepted.resource_version,
            lifecycle=plan.lifecycle.name, kind=plan.kind.value))

    def _kubelet_wrote(self, pod: JSON, op: str, shape: Shape, accepted: Accepted) -> None:
        run_id = ((pod.get("metadata") or {}).get("labels") or {}).get(RUN_ID_LABEL)
        run = self.by_run.get(run_id or "")
        if run is not None:
            outcome = run.plan.lifecycle.outcome(run.plan.kind).state
            self._change(run, op, "kubelet", shape, outcome, accepted)

    # --- playing ---------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.TaskGroup() as tg:
            for plan in self.plans:
                if self.config.rate > 0:
                    delay = start + plan.index / self.config.rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                tg.create_task(self._play(plan), name=f"sim:{plan.pod_name}")

    async def _play(self, plan: Plan) -> None:
        run = self.by_run[plan.run_id] = _Run(plan)
        op = "run-create"
        try:
            traceparent = new_traceparent()
            accepted = await self.runs.create(plan.run_id, kind=plan.kind.value,
                                              namespace=plan.namespace, pod_name=plan.pod_name,
                                              traceparent=traceparent)
            self._change(run, op, "platform", Shape.RUN_CREATED, State.QUEUED, accepted)
            op = "create"
            accepted = await self.api.create_pod(pod_manifest(plan, traceparent))
            shape = Shape.CREATED_ON_NODE if plan.lifecycle.scheduled else Shape.CREATED
            self._change(run, op, "platform", shape, State.QUEUED, accepted)
            self.created += 1
            pod: JSON | None = accepted.obj
            for step, wait in zip(plan.steps, plan.waits, strict=True):
                if pod is None:
                    break
                await asyncio.sleep(wait)
                op = step.op.value
                pod = await self._step(run, step, pod)
            if pod is not None and self.config.delete_finished and \
                    (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                op = "delete"
                accepted = await self.api.delete(plan.namespace, plan.pod_name, grace_s=None)
                self._change(run, "delete", "platform", Shape.DELETED_WHEN_FINISHED, run.state,
                             accepted)
        except (KubeError, PlatformError, aiohttp.ClientError, TimeoutError) as e:
            self._error(run, op, f"{type(e).__name__}: {e}")
            return
        except Exception as e:  # a bug must not stop the other pods
            log.exception("simulator: %s failed at %s", plan.pod_name, op)
            self._error(run, op, f"{type(e).__name__}: {e}")
            return
        finally:
            if run.state is State.RUNNING:
                self.running -= 1
        self.finished += 1
        expectation = plan.lifecycle.outcome(plan.kind)
        self.records.add(Outcome(
            run_id=plan.run_id, pod=f"{plan.namespace}/{plan.pod_name}",
            lifecycle=plan.lifecycle.name, kind=plan.kind.value,
            state=expectation.state.value, reason=expectation.reason,
            exit_code=expectation.exit_code,
            decided_at=run.decided_at if run.decided_at is not None else time.time()))

    def _error(self, run: _Run, op: str, message: str) -> None:
        plan = run.plan
        self.records.add(Error(run_id=plan.run_id, pod=f"{plan.namespace}/{plan.pod_name}",
                               op=op, error=message[:500], at=time.time()))

    async def _step(self, run: _Run, step: Step, pod: JSON) -> JSON | None:
        """Play one step; the pod as it now is (None once it is gone)."""
        plan = run.plan
        expect = expected_state(plan.lifecycle, step, plan.kind, run.state)
        ns, name = plan.namespace, plan.pod_name
        if step.op is Op.STATUS:
            assert step.shape is not None
            accepted = await self.kubelet.apply(pod, step.shape, restarts=step.restarts)
            actor = "scheduler" if step.shape in (Shape.UNSCHEDULABLE,
                                                  Shape.DISRUPTION_TARGET) else "kubelet"
            self._change(run, "status", actor, step.shape, expect, accepted)
            return accepted.obj
        if step.op is Op.BIND:
            accepted = await self.api.bind(ns, name, plan.node)
            self._change(run, "bind", "scheduler", Shape.SCHEDULED, expect, accepted)
            return await self.api.get(ns, name)  # the kubelet reads the bound pod
        if step.op is Op.CANCEL:
            accepted = await self.runs.cancel(plan.run_id)
            self._change(run, "run-cancel", "user", Shape.RUN_CANCEL_REQUESTED, run.state,
                         accepted)
            accepted = await self.api.annotate(ns, name, {CANCEL_ANNOTATION: "true"})
            self._change(run, "annotate", "platform", Shape.CANCEL_ANNOTATED, run.state,
                         accepted)
            await self._delete(run, expect, "platform", self.config.grace_period_s)
            return None
        if step.op is Op.DELETE:
            await self._delete(run, expect, step.actor or "admin", self.config.grace_period_s)
            return None
        if step.op is Op.PREEMPT:
            # The scheduler marks the victim (the platform still shows it running), then
            # deletes it with the pod's own grace period.
            accepted = await self.kubelet.apply(pod, Shape.DISRUPTION_TARGET)
            self._change(run, "status", "scheduler", Shape.DISRUPTION_TARGET, run.state,
                         accepted)
            await self._delete(run, expect, "scheduler", None)
            return None
        if step.op is Op.EVICT:
            accepted = await self.api.evict(ns, name, grace_s=None)
            self._change(run, "evict", "eviction-api", Shape.EVICTING, expect, accepted)
            evicted = await self.api.get(ns, name)  # the kubelet sees it Terminating
            if evicted is not None:
                await asyncio.sleep(plan.termination_delay_s)
                await self.kubelet.finish_deletion(evicted)
            return None
        raise ValueError(f"cannot play step {step.op.value}")

    async def _delete(self, run: _Run, expect: State, actor: str,
                      grace_s: int | None) -> None:
        """Delete the pod (as `actor`); a kubelet then stops it and deletes it for good."""
        plan = run.plan
        accepted = await self.api.delete(plan.namespace, plan.pod_name, grace_s=grace_s)
        obj = accepted.obj
        meta = (obj or {}).get("metadata") or {}
        at_once = meta.get("deletionGracePeriodSeconds") == 0  # unscheduled, or terminal
        gone = obj is None or (at_once and not meta.get("finalizers"))
        self._change(run, "delete", actor, Shape.DELETED if gone else Shape.TERMINATING, expect,
                     accepted)
        if obj is None or at_once:
            return  # gone, or only finalizers hold it: nothing left for a kubelet
        await asyncio.sleep(plan.termination_delay_s)
        await self.kubelet.finish_deletion(obj)

    def progress(self) -> Progress:
        counters = self.api.counters
        errors = len(self.records.errors)
        return Progress(elapsed_s=time.time() - self.started, total=len(self.plans),
                        created=self.created, running=self.running,
                        finished=self.finished, errors=errors,
                        requests=counters.kube_requests + counters.platform_requests)


async def _report(driver: _Driver, progress: ProgressFn, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        progress(driver.progress())


async def simulate(kube: KubeClient, platform_url: str, token_file: Path, config: SimConfig,
                   *, progress: ProgressFn | None = None, records_path: Path | None = None,
                   keep_records: bool = True) -> SimResult:
    """Run one simulation (see the module docstring). ``keep_records=False`` keeps only
    outcomes and errors in memory (the JSONL file still gets everything)."""
    seed = config.seed if config.seed is not None else random.randrange(2 ** 32)
    prefix = config.run_prefix or f"sim-{secrets.token_hex(3)}"
    plans = draw_plans(config, seed, prefix)
    limit = asyncio.Semaphore(config.concurrency)
    counters = Counters()
    api = PodApi(kube, limit, counters=counters)
    records = RecordLog(records_path, keep=keep_records)
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
    connector = aiohttp.TCPConnector(limit=config.concurrency)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            runs = RunsClient(platform_url, token_file, session, limit, counters=counters)
            driver = _Driver(api, runs, config, plans, records)
            await api.ensure_namespace(config.namespace)
            reporter = (asyncio.create_task(_report(driver, progress,
                                                    config.progress_interval_s))
                        if progress is not None else None)
            try:
                await driver.run()
            finally:
                if reporter is not None:
                    reporter.cancel()
                    await asyncio.gather(reporter, return_exceptions=True)
            if progress is not None:
                progress(driver.progress())
    finally:
        records.close()
    finished_at = time.time()
    ended = {o.run_id for o in records.outcomes}
    by_lifecycle: dict[str, int] = {}
    for plan in plans:
        by_lifecycle[plan.lifecycle.name] = by_lifecycle.get(plan.lifecycle.name, 0) + 1
    return SimResult(
        run_prefix=prefix, seed=seed, started_at=driver.started, finished_at=finished_at,
        created=driver.created, finished=len(ended),
        expected={p.run_id: p.lifecycle.outcome(p.kind) for p in plans if p.run_id in ended},
        changes=records.changes, outcomes=records.outcomes, errors=records.errors,
        by_lifecycle=by_lifecycle, kube_requests=counters.kube_requests,
        platform_requests=counters.platform_requests, retries=counters.retries)


__all__ = ["Expectation", "Progress", "ProgressFn", "SimConfig", "SimResult", "simulate"]
