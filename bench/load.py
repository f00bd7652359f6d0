"""Load shapes for the benchmarks, built on the simulator's pieces (plans, manifests, shapes).

Contract:

* Every load plays kubelet-shaped status updates of the simulator (`testbed.simulator`)
  through the harness's `Kube` client, and records, per change of the run state the
  platform should show, the wall-clock time the API server's answer arrived
  (`Change.accepted_at`): the "API server accepted the change" end of the latency.
* The lifecycle mix is the simple one every peer can follow (`MIX`): jobs that succeed,
  fail (exit 1) or are OOMKilled. Each run's expected final platform record is the
  simulator's own oracle (`Lifecycle.outcome`), kept in `Recorder.expect`.
* Shapes: `steady` (runs started at a fixed rate, each a whole lifecycle), `prelude` +
  `finish` (election night: N pods brought to running, then all finished within a
  window), `bulk` (cold start: N pods created already finished or running, no timing).
* Runs are created on the platform before their pods (`create_runs`), as the platform
  does when a user submits a job. Nothing here retries: a failed call is counted in
  `Recorder.errors` and its job abandoned (its expectation removed), never hidden.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.kube import JSON, Kube
from testbed.simulator.config import Distribution, SimConfig
from testbed.simulator.lifecycles import (
    TERMINAL,
    Expectation,
    Kind,
    Op,
    Shape,
    State,
    expected_state,
)
from testbed.simulator.shapes import render
from testbed.simulator.workloads import Plan, draw_plans, new_traceparent, pod_manifest

MIX: dict[str, float] = {"succeeded": 80, "failed": 15, "oom": 5}
"""Lifecycles whose outcome follows from the pod phase and the main container alone."""


@dataclass(frozen=True, slots=True)
class Change:
    """The API server accepted a pod update that moves the run to `state`."""

    run_id: str
    state: str
    accepted_at: float


@dataclass
class Recorder:
    """What a load did: the changes it made, what the platform should end with."""

    changes: list[Change] = field(default_factory=list)
    expect: dict[str, Expectation] = field(default_factory=dict)
    pod_writes: int = 0
    errors: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    def abandon(self, plan: Plan, error: BaseException) -> None:
        self.errors.append(f"{plan.pod_name}: {error}")
        self.expect.pop(plan.run_id, None)

    @property
    def offered_rate(self) -> float:
        """State changes per second the API server accepted while the load ran."""
        span = self.finished - self.started
        return len(self.changes) / span if span > 0 else 0.0


def make_plans(jobs: int, *, namespace: str, prefix: str, seed: int = 7,
               duration: str = "uniform:0.5,3", step_delay: str = "fixed:0.05") -> list[Plan]:
    config = SimConfig(jobs=jobs, mix=MIX, kinds={Kind.JOB: 1.0}, namespace=namespace,
                       duration=Distribution.parse(duration),
                       step_delay=Distribution.parse(step_delay), run_prefix=prefix)
    return draw_plans(config, seed, prefix)


class PlatformLoad:
    """Creates runs on the platform (the user's side of a job submission)."""

    def __init__(self, url: str, token: str, *, concurrency: int = 32) -> None:
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._concurrency = concurrency

    async def create_runs(self, plans: Sequence[Plan],
                          progress: Callable[[int], None] | None = None) -> None:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency)) as session:
            done = 0

            async def one(plan: Plan) -> None:
                nonlocal done
                body = {"id": plan.run_id, "kind": plan.kind.value,
                        "pod_namespace": plan.namespace, "pod_name": plan.pod_name}
                async with session.post(f"{self._url}/api/v1/runs", data=json.dumps(body),
                                        headers=self._headers) as response:
                    if response.status not in (201, 409):
                        raise RuntimeError(f"creating run {plan.run_id}: {response.status} "
                                           f"{await response.text()}")
                done += 1
                if progress is not None and done % 1000 == 0:
                    progress(done)

            await _bounded_gather((one(p) for p in plans), self._concurrency)


async def _bounded_gather(coros: Iterable[Any], limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def guarded(coro: Any) -> None:
        async with semaphore:
            await coro

    async with asyncio.TaskGroup() as group:
        for coro in coros:
            group.create_task(guarded(coro))


def _running(plan: Plan) -> int:
    """Index of the step that starts the main container (Shape.RUNNING)."""
    return next(i for i, s in enumerate(plan.steps) if s.shape is Shape.RUNNING)


class Player:
    """Plays plans against one API server, recording into one `Recorder`."""

    def __init__(self, kube: Kube, recorder: Recorder) -> None:
        self.kube = kube
        self.rec = recorder
        self.pods: dict[str, JSON] = {}
        """Latest pod object per run id (for steps played later, e.g. `finish`)."""
        self.states: dict[str, State] = {}

    async def _create(self, plan: Plan) -> JSON:
        pod = await self.kube.create_pod(pod_manifest(plan, new_traceparent()))
        self.rec.pod_writes += 1
        self.states[plan.run_id] = State.QUEUED
        return pod

    async def _step(self, plan: Plan, index: int, pod: JSON, *, record: bool = True) -> JSON:
        step = plan.steps[index]
        assert step.op is Op.STATUS, step
        assert step.shape is not None, step
        status = render(step.shape, pod, time.time(), restarts=step.restarts)
        pod = await self.kube.patch_status(plan.namespace, plan.pod_name, status)
        accepted = time.time()
        self.rec.pod_writes += 1
        before = self.states[plan.run_id]
        after = expected_state(plan.lifecycle, step, plan.kind, before)
        if after != before:
            self.states[plan.run_id] = after
            if record:
                self.rec.changes.append(Change(plan.run_id, after.value, accepted))
        self.pods[plan.run_id] = pod
        return pod

    async def play(self, plan: Plan) -> None:
        """The whole lifecycle, with the plan's waits between steps."""
        self.rec.expect[plan.run_id] = plan.lifecycle.outcome(plan.kind)
        try:
            pod = await self._create(plan)
            for index, wait in enumerate(plan.waits):
                if wait > 0:
                    await asyncio.sleep(wait)
                pod = await self._step(plan, index, pod)
        except Exception as e:  # noqa: BLE001 - counted and reported, never hidden
            self.rec.abandon(plan, e)

    async def start_running(self, plan: Plan) -> None:
        """Create the pod and bring it straight to running (the election-night prelude)."""
        self.rec.expect[plan.run_id] = Expectation(State.RUNNING, None, None)
        try:
            pod = await self._create(plan)
            await self._step(plan, _running(plan), pod)
        except Exception as e:  # noqa: BLE001 - counted and reported, never hidden
            self.rec.abandon(plan, e)

    async def finish_one(self, plan: Plan) -> None:
        """Play the plan's last (terminal) step on the pod left by `start_running`."""
        self.rec.expect[plan.run_id] = plan.lifecycle.outcome(plan.kind)
        try:
            await self._step(plan, len(plan.steps) - 1, self.pods[plan.run_id])
        except Exception as e:  # noqa: BLE001 - counted and reported, never hidden
            self.rec.abandon(plan, e)


async def paced(items: Sequence[Plan], rate: float, action: Callable[[Plan], Any], *,
                limit: int, progress: Callable[[int, int], None] | None = None) -> None:
    """Start `action(item)` for each item at `rate` per second (as fast as `limit`
    concurrent actions allow when the API server cannot keep up)."""
    semaphore = asyncio.Semaphore(limit)
    t0 = time.monotonic()

    async def guarded(item: Plan) -> None:
        try:
            await action(item)
        finally:
            semaphore.release()

    async with asyncio.TaskGroup() as group:
        for i, item in enumerate(items):
            delay = t0 + i / rate - time.monotonic() if rate > 0 else 0.0
            if delay > 0:
                await asyncio.sleep(delay)
            await semaphore.acquire()
            group.create_task(guarded(item))
            if progress is not None and i % 200 == 0:
                progress(i, len(items))


async def steady(player: Player, plans: Sequence[Plan], rate: float, *, limit: int = 512,
                 progress: Callable[[int, int], None] | None = None) -> None:
    """Start one job per 1/`rate` seconds; each plays its whole lifecycle."""
    player.rec.started = time.time()
    await paced(plans, rate, player.play, limit=limit, progress=progress)
    player.rec.finished = time.time()


async def prelude(player: Player, plans: Sequence[Plan], *, limit: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> None:
    await paced(plans, 0, player.start_running, limit=limit, progress=progress)


async def finish(player: Player, plans: Sequence[Plan], window_s: float, *, limit: int = 256,
                 progress: Callable[[int, int], None] | None = None) -> None:
    """Finish every plan's pod, spread evenly over `window_s` (or as fast as possible)."""
    player.rec.started = time.time()
    await paced(plans, len(plans) / window_s if window_s > 0 else 0, player.finish_one,
                limit=limit, progress=progress)
    player.rec.finished = time.time()


async def bulk(player: Player, plans: Sequence[Plan], finished: Callable[[Plan], bool], *,
               limit: int = 64, progress: Callable[[int, int], None] | None = None) -> None:
    """Create pods already finished (when `finished(plan)`) or running, as fast as possible:
    one create and one status update each. Expectations: the outcome, or running."""

    async def one(plan: Plan) -> None:
        done = finished(plan)
        player.rec.expect[plan.run_id] = (plan.lifecycle.outcome(plan.kind) if done
                                          else Expectation(State.RUNNING, None, None))
        try:
            pod = await player._create(plan)
            index = len(plan.steps) - 1 if done else _running(plan)
            await player._step(plan, index, pod, record=False)
            player.pods.pop(plan.run_id, None)  # 100k pod objects are not needed later
        except Exception as e:  # noqa: BLE001 - counted and reported, never hidden
            player.rec.abandon(plan, e)

    await paced(plans, 0, one, limit=limit, progress=progress)


def is_terminal(expectation: Expectation) -> bool:
    return expectation.state in TERMINAL
