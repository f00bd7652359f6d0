"""The controller: the platform workers and the finalizer loop, run as one unit.

It wires what the watcher's leader runs: a `watch.workers.WorkerPool` over the platform
queue with `watch.handler.PlatformHandler` as its handler, and the finalizer loop
(`watch.finalizer_loop`, its own queue and pool), both reading the pod cache
(`watch.store`) and the run ledger (`watch.ledger`).

Contract:
* `on_change(key)` (the reflector's callback) is the platform pool's
  (`WorkerPool.on_change`): it enqueues the key once `run()` started; before that (a
  standby) nothing is queued: `run()` enqueues every cached pod when it starts.
* Each handler result (or exception) is one `watch.workers.Outcome`, mapped to exactly
  one queue operation and one metric label in one place, `OutcomeMap.finish`
  (controller-runtime's reconcileHandler); that module holds the retry policy.
* Transient failures (platform 429/5xx/timeouts, API errors) retry with per-key
  exponential backoff and the overall token bucket, honouring Retry-After. While a
  key waits out that backoff it is not handled: changes of the pod meanwhile coalesce
  into the pending retry, which handles the pod's latest view (the queue's backoff
  hold). So a busy pod cannot hit a platform that said "wait" once per update, and
  `max_retries` counts real attempts, each after its backoff.
* A change is *dropped* (logged, counted by `dropped`) iff it is given up with no retry
  pending: the platform rejected it, or its key failed its last allowed attempt. Nobody
  handles it again until the pod changes; the finalizer keeps the pod, and
  `sniffer reconcile` repairs the run.
* Freshness: `oldest_unhandled_age()` is the age of the oldest observed change that is
  still pending (the pool's outcome map has not *resolved* it).
* `run()` runs both pools; once the platform queue is shut down and its workers
  finished, nothing enqueues finalizer work any more and the finalizer queue is shut
  down too (its waiting keys still go out). It returns when every worker of both pools
  finished its key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sniffer.jobs import owned_by_job
from sniffer.nullmetrics import NULL_METRICS
from sniffer.platform import PlatformClient
from sniffer.podview import PodView
from sniffer.states import StatePolicy
from watch.finalizer_loop import FinalizerLoop
from watch.finalizer_patch import Finalizers
from watch.handler import HandlerMetrics, PlatformHandler, PodReader
from watch.ledger import RunLedger
from watch.store import PodStore
from watch.workers import WorkerPool
from watch.workqueue import Priority, WorkQueue

ControllerMetrics = HandlerMetrics
"""What the controller reports (the name `sniffer.telemetry` implements it under)."""


class Controller:
    """Turns pod changes into platform updates and finalizer patches. Constructing
    starts nothing; `run()` does, once."""

    def __init__(self, *, store: PodStore, ledger: RunLedger, queue: WorkQueue[str],
                 platform: PlatformClient, pods: PodReader, finalizers: Finalizers,
                 policy: StatePolicy, workers: int, max_retries: int,
                 is_leader: Callable[[], bool] = lambda: True,
                 metrics: ControllerMetrics | None = None,
                 clock: Callable[[], float] = time.time,
                 finalizer_queue: WorkQueue[str] | None = None,
                 finalizer_workers: int = 16,
                 job_held: Callable[[str | None], bool] = lambda uid: False,
                 controller_owned: Callable[[PodView], bool] = owned_by_job) -> None:
        """`ledger` must be the store's compaction policy (one record of the runs);
        `clock` is wall time; `job_held` and `controller_owned` are the handler's
        (`watch.handler`)."""
        self._store = store
        self._queue = queue
        self.ledger = ledger
        """The one record of what the platform acknowledged, and the seed."""
        sink: ControllerMetrics = metrics or NULL_METRICS
        self._started = False
        self.finalizing = FinalizerLoop(
            store=store, knowledge=ledger,
            queue=finalizer_queue if finalizer_queue is not None else WorkQueue[str](),
            finalizers=finalizers, policy=policy, workers=finalizer_workers,
            is_leader=is_leader, metrics=sink, clock=clock,
            controller_owned=controller_owned)
        """The finalizer loop; `run()` runs its workers beside the platform workers."""
        self.handler = PlatformHandler(
            store=store, ledger=ledger, platform=platform, pods=pods, policy=policy,
            attempts=queue, finalizer_loop=self.finalizing.enqueue,
            observed_at=self._observed_at, is_leader=is_leader, job_held=job_held,
            controller_owned=controller_owned, metrics=sink, clock=clock)
        self.pool = WorkerPool(name="worker", queue=queue, handler=self.handler,
                               workers=workers, store=store, metrics=sink,
                               max_retries=max_retries, clock=clock)
        """The platform workers."""
        self.on_change = self.pool.on_change
        """Reflector callback: a pod changed. Never blocks."""

    def oldest_unhandled_age(self) -> float:
        """Seconds since the oldest change not yet resolved was observed (0 if none)."""
        return self.pool.oldest_pending_age()

    def longest_busy_s(self) -> float:
        """Seconds the longest-running handler call has been running (0 if idle)."""
        return self.pool.longest_busy_s()

    @property
    def running(self) -> bool:
        """True once `run()` started the workers (this replica leads)."""
        return self._started

    @property
    def acked_runs(self) -> int:
        return len(self.ledger)

    @property
    def handled(self) -> int:
        """Keys handled so far (any outcome); informational, for tests and the demo."""
        return self.pool.outcomes.handled

    @property
    def dropped(self) -> int:
        """Changes given up (see the contract); informational, like `handled`."""
        return self.pool.outcomes.dropped

    async def run(self) -> None:
        """Seed the ledger, enqueue every cached pod, run the workers until the queue
        shuts down. Caller duty: the store must be synced and this replica elected
        before calling. Call once."""
        if self._started:
            raise RuntimeError("Controller.run() called twice")
        self._started = True
        self.pool.accept()
        await self.seed()
        for key in self._store.all_keys():  # a backlog: live changes go first
            self._queue.add(key, Priority.LIST)
        async with asyncio.TaskGroup() as group:
            group.create_task(self.finalizing.run(), name="finalizer-loop")
            await self.pool.run()
            # No platform worker is left to enqueue finalizer work: let it drain.
            self.finalizing.queue.shut_down()

    def _observed_at(self, key: str) -> float | None:
        # The handler is built before the pool that stamps the observations.
        return self.pool.observed_at(key)

    async def seed(self) -> None:
        """Take the ledger's seed (`watch.ledger.RunLedger.seed`). `run()` takes a fresh
        one; calling it before the first LIST as well lets the store keep the pods it
        settles as records from the start. Caller duty: not concurrently with itself."""
        await self.ledger.seed()
