"""The worker pool: N workers taking keys from one work queue and handing each to a handler.

Both of the watcher's queues run on this one pool type: the platform queue (its handler
is `watch.handler.PlatformHandler`) and the finalizer queue (`watch.finalizer_loop`).

Contract:
* A key is never handled by two workers at once (the queue is stingy); other keys are
  handled in parallel, by at most `workers` workers.
* Every key a worker takes gets exactly one outcome: the handler's answer, or, if the
  handler raised, `watch.outcomes.outcome_of` of the exception (one bad object never
  kills a worker), or `INTERRUPTED` if the call was cancelled (its change stays
  pending; the worker re-raises the `CancelledError`). That outcome goes through the
  pool's `OutcomeMap` (the one place it becomes a queue operation and a metric label)
  before the key is marked `done`.
* Busy tracking: `longest_busy_s()` is how long the longest-running handler call has
  been running (0 when idle); `busy` how many keys are being handled.
* `run()` runs the workers until the queue is shut down and every worker finished its
  key. Constructing starts nothing; `run()` may be called once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from watch.outcomes import (
    INTERRUPTED,
    Outcome,
    OutcomeMap,
    OutcomeMetrics,
    OutcomeStore,
    outcome_of,
)
from watch.workqueue import ShutDown, WorkQueue


class Handler(Protocol):
    """What the pool calls for each key (`watch.handler`, `watch.finalizer_loop`)."""

    async def handle(self, key: str) -> Outcome:
        """Bring the world in line with the cached object `key`. May raise."""
        ...


class WorkerPool:
    """Runs `workers` workers over `queue`. Constructing starts nothing."""

    def __init__(self, *, name: str, queue: WorkQueue[str], handler: Handler, workers: int,
                 store: OutcomeStore, metrics: OutcomeMetrics, max_retries: int | None,
                 resolved: Callable[[str], None] = lambda key: None) -> None:
        """`name` names the worker tasks; `max_retries` and `resolved` are the outcome
        map's (`watch.outcomes.OutcomeMap`): None retries for ever, and `resolved(key)`
        is called once the key's change is no longer pending."""
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers!r}")
        self.queue = queue
        self._name = name
        self._handler = handler
        self._workers = workers
        self.outcomes = OutcomeMap(queue=queue, store=store, metrics=metrics,
                                   max_retries=max_retries, resolved=resolved)
        """The pool's outcome map: `handled` and `dropped` count what it finished."""
        self._busy: dict[str, float] = {}
        """key → monotonic time a worker took it; a key is here iff a worker has it."""
        self._started = False

    @property
    def busy(self) -> int:
        """Keys being handled now; informational."""
        return len(self._busy)

    def longest_busy_s(self) -> float:
        """Seconds the longest-running handler call has been running (0 if idle)."""
        now = time.monotonic()
        return max((now - t for t in self._busy.values()), default=0.0)

    async def run(self) -> None:
        """Run the workers until the queue is shut down and each finished its key."""
        if self._started:
            raise RuntimeError(f"WorkerPool({self._name}).run() called twice")
        self._started = True
        async with asyncio.TaskGroup() as group:
            for i in range(self._workers):
                group.create_task(self._worker(), name=f"{self._name}-{i}")

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            self._busy[key] = time.monotonic()
            outcome = INTERRUPTED  # if cancelled: the change stays pending
            try:
                outcome = await self._handle_safely(key)
            finally:
                del self._busy[key]
                self.outcomes.finish(key, outcome)
                self.queue.done(key)

    async def _handle_safely(self, key: str) -> Outcome:
        try:
            return await self._handler.handle(key)
        except Exception as exc:  # one bad object must never kill a worker
            return outcome_of(key, exc)
