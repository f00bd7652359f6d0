"""The worker pool: N workers taking keys from one work queue and handing each to a handler,
and the one place each handler outcome becomes a queue operation.

Both of the watcher's queues run on this one pool type: the platform queue (its handler
is `watch.handler.PlatformHandler`) and the finalizer queue (`watch.finalizer_loop`).

Contract of the pool:
* A key is never handled by two workers at once (the queue is stingy); other keys are
  handled in parallel, by at most `workers` workers.
* `on_change(key, priority)` is how an observed change enters the pool: ignored until
  `accept()` (a standby queues nothing), then it stamps the change's observation time
  (the first one of a key still pending) and adds the key to the queue with its
  priority: LIVE for a watch event (the default), LIST for a change an initial list or a
  relist found, so a backlog never delays live changes (`watch.workqueue`).
  `oldest_pending_age()` is the age of the oldest change no outcome has resolved yet
  (freshness).
* Every key a worker takes gets exactly one outcome: the handler's answer, or, if the
  handler raised, `outcome_of` of the exception (one bad object never kills a worker),
  or `INTERRUPTED` if the call was cancelled (its change stays pending; the worker
  re-raises the `CancelledError`). That outcome goes through the pool's `OutcomeMap`
  before the key is marked `done`.
* Busy tracking: `longest_busy_s()` is how long the longest-running handler call has
  been running (0 when idle); `busy` how many keys are being handled.
* `run()` runs the workers until the queue is shut down and every worker finished its
  key. Constructing starts nothing; `run()` may be called once.

Contract of the outcomes:
* The handler's answer for one key is one `Outcome`. An exception it raises becomes one
  too (`outcome_of`).
* Retry policy: transient failures retry — the platform unavailable (408/429/5xx,
  timeouts; its Retry-After is the retry's least delay), Kubernetes API errors, any
  unexpected exception. A platform rejection is not retried: the change is dropped.
* `OutcomeMap.finish` is the one place an outcome becomes exactly one queue operation
  and one metric label (controller-runtime's reconcileHandler):

  ============= ======================================== ================
  result        queue operation                          change pending
  ============= ======================================== ================
  DONE          ``forget``                               no
  REQUEUE       ``forget``, ``add``                      yes
  REQUEUE_AFTER ``forget``, ``add_after(delay)``         no (a recheck)
  RETRY         ``add_rate_limited(at_least=delay)``     yes
  DROP          ``forget``; a tombstone is forgotten     no
  ============= ======================================== ================

  A RETRY of a key that has already been requeued `max_retries` times is a DROP; with
  `max_retries` None (the finalizer loop, `watch.finalizer_loop`) never: a release
  given up would leave its pod stuck Terminating, so it is retried, with backoff,
  until it succeeds.
* A change is *dropped* (logged at error, counted by `dropped` and by the `dropped`
  metric) iff it is given up with no retry pending. Nobody handles it again until the
  pod changes; `sniffer reconcile` repairs the run.
* A handler call cancelled before it returned (shutdown past the drain deadline) is
  `INTERRUPTED`, a REQUEUE: whatever it was writing may never have been written, so its
  change stays pending (its freshness clock keeps running) and, if the queue still takes
  work, the key is handled again. The worker re-raises the `CancelledError`.
* The change of a key is *resolved* iff it is no longer pending (the "no" rows above):
  the pool stops its freshness clock there and calls its `resolved(key)`.

Invariants:
* a key is in `WorkerPool._busy` iff a worker has taken it and not yet marked it done;
* a key is in `WorkerPool._observed` iff `on_change` saw a change of it since the last
  time the outcome map resolved it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from sniffer.kubedecode import KubeError
from sniffer.platform_model import PlatformRejected, PlatformUnavailable
from watch.workqueue import Priority, ShutDown, WorkQueue

log = logging.getLogger("watch.controller")


class Result(Enum):
    DONE = "done"
    REQUEUE = "requeue"
    REQUEUE_AFTER = "requeue_after"
    RETRY = "retry"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the handler asks of the queue for one key."""

    result: Result
    delay: float = 0.0
    error: str | None = None

    @classmethod
    def done(cls) -> Outcome:
        return DONE

    @classmethod
    def retry(cls, error: str, retry_after: float | None = None) -> Outcome:
        return cls(Result.RETRY, delay=retry_after or 0.0, error=error)


DONE = Outcome(Result.DONE)
"""Shared: most keys end this way, and an outcome is immutable."""

INTERRUPTED = Outcome(Result.REQUEUE, error="cancelled before it finished")
"""The outcome of a handler call that was cancelled (see the contract)."""


def outcome_of(key: str, exc: Exception) -> Outcome:
    """The outcome of a handler call for `key` that raised `exc` (the retry policy)."""
    if isinstance(exc, PlatformUnavailable):
        return Outcome.retry(f"platform unavailable: {exc}", exc.retry_after)
    if isinstance(exc, PlatformRejected):
        return Outcome(Result.DROP, error=f"platform rejected the update: {exc}")
    if isinstance(exc, KubeError):
        return Outcome.retry(f"kubernetes API: {exc}")
    log.exception("handler failed", exc_info=exc, extra={"key": key})
    return Outcome.retry(f"{type(exc).__name__}: {exc}")


class OutcomeQueue(Protocol):
    """The work-queue operations an outcome maps to (`watch.workqueue.WorkQueue`)."""

    def add(self, key: str) -> None: ...
    def add_after(self, key: str, delay: float) -> None: ...
    def add_rate_limited(self, key: str, *, at_least: float = 0.0) -> None: ...
    def forget(self, key: str) -> None: ...
    def num_requeues(self, key: str) -> int: ...


class OutcomeStore(Protocol):
    """What a drop reads and clears in the cache (`watch.store.PodStore`, or the Job
    cache `watch.store.JobStore`: any kind)."""

    def get(self, key: str) -> Any: ...
    def is_deleted(self, key: str) -> bool: ...
    def forget_tombstone(self, key: str, pod: Any) -> None: ...


class OutcomeMetrics(Protocol):
    """The labels `finish` reports (part of `watch.handler.HandlerMetrics`)."""

    def outcome(self, result: str) -> None: ...
    def dropped(self, state: str, reason: str) -> None: ...


class OutcomeMap:
    """Applies each handler outcome to the queue. Constructing starts nothing."""

    def __init__(self, *, queue: OutcomeQueue, store: OutcomeStore, metrics: OutcomeMetrics,
                 max_retries: int | None, resolved: Callable[[str], None]) -> None:
        self._queue = queue
        self._store = store
        self._metrics = metrics
        self._max_retries = max_retries
        self._resolved = resolved
        self.handled = 0
        """Outcomes finished so far (any result); informational, for tests and the demo."""
        self.dropped = 0
        """Changes given up (see the contract); informational, like `handled`."""

    def finish(self, key: str, outcome: Outcome) -> None:
        """The one place an outcome becomes a queue operation and a metric label.

        Caller duty: call once per handler call, while `key` is still in flight (before
        the queue's `done`): a retry then holds the key, and a change that arrived during
        the call waits for that retry instead of being handed out again by `done`."""
        self.handled += 1
        result = outcome.result
        if (result is Result.RETRY and self._max_retries is not None
                and self._queue.num_requeues(key) >= self._max_retries):
            result = Result.DROP
        self._metrics.outcome(result.value)
        if result is Result.DONE:
            self._queue.forget(key)
            self._resolved(key)
        elif result is Result.REQUEUE:
            self._queue.forget(key)
            self._queue.add(key)
        elif result is Result.REQUEUE_AFTER:
            self._queue.forget(key)
            self._resolved(key)
            self._queue.add_after(key, outcome.delay)
        elif result is Result.RETRY:
            log.info("retrying", extra={"key": key, "error": outcome.error,
                                        "attempt": self._queue.num_requeues(key) + 1})
            self._queue.add_rate_limited(key, at_least=outcome.delay)
        else:
            pod = self._store.get(key)
            log.error("dropping change after retries; the reconciler will repair it",
                      extra={"key": key, "run_id": pod.run_id if pod else None,
                             "error": outcome.error})
            # A Job view has no phase: its drops are labelled "job".
            self._metrics.dropped(getattr(pod, "phase", "job") if pod else "unknown",
                                  outcome.error or "")
            self.dropped += 1
            self._queue.forget(key)
            self._resolved(key)
            if pod is not None and self._store.is_deleted(key):
                self._store.forget_tombstone(key, pod)


class Handler(Protocol):
    """What the pool calls for each key (`watch.handler`, `watch.finalizer_loop`)."""

    async def handle(self, key: str) -> Outcome:
        """Bring the world in line with the cached object `key`. May raise."""
        ...


class WorkerPool:
    """Runs `workers` workers over `queue`. Constructing starts nothing."""

    def __init__(self, *, name: str, queue: WorkQueue[str], handler: Handler, workers: int,
                 store: OutcomeStore, metrics: OutcomeMetrics, max_retries: int | None,
                 resolved: Callable[[str], None] = lambda key: None,
                 clock: Callable[[], float] = time.time) -> None:
        """`name` names the worker tasks; `max_retries` is the outcome map's (None:
        retry for ever); `resolved(key)` is called once the key's change is no longer
        pending, after the pool stopped its freshness clock; `clock` is wall time."""
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers!r}")
        self.queue = queue
        self._name = name
        self._handler = handler
        self._workers = workers
        self._clock = clock
        self._on_resolved = resolved
        self._observed: dict[str, float] = {}
        """key → wall time its oldest pending change was observed (see the invariants)."""
        self._accepting = False
        self.outcomes = OutcomeMap(queue=queue, store=store, metrics=metrics,
                                   max_retries=max_retries, resolved=self._resolved)
        """The pool's outcome map: `handled` and `dropped` count what it finished."""
        self._busy: dict[str, float] = {}
        """key → monotonic time a worker took it; a key is here iff a worker has it."""
        self._started = False

    def accept(self) -> None:
        """Start taking changes through `on_change` (this replica leads)."""
        self._accepting = True

    def on_change(self, key: str, priority: Priority = Priority.LIVE) -> None:
        """A change of `key` was observed (by a watch event: LIVE; by a list: LIST).
        Never blocks; ignored before `accept()`."""
        if not self._accepting:
            return
        self._observed.setdefault(key, self._clock())
        self.queue.add(key, priority)

    def observed_at(self, key: str) -> float | None:
        """Wall time the oldest pending change of `key` was observed (None: none)."""
        return self._observed.get(key)

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest change not yet resolved was observed (0 if none)."""
        if not self._observed:
            return 0.0
        return max(0.0, self._clock() - min(self._observed.values()))

    def _resolved(self, key: str) -> None:
        self._observed.pop(key, None)
        self._on_resolved(key)

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
        except Exception as exc:  # noqa: BLE001 - one bad object must never kill a worker
            return outcome_of(key, exc)
