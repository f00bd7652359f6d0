"""Handler outcomes: what becomes of a key once the handler is through with it.

Contract:
* The handler's answer for one key is one `Outcome`. An exception it raises becomes one
  too (`outcome_of`), so one bad object never kills a worker (`watch.workers`).
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
  `max_retries` None (the finalizer loop, `watch.finalizer_loop`) never: a release given up
  would leave its pod stuck Terminating, so it is retried, with backoff, until it succeeds.
* A change is *dropped* (logged at error, counted by `dropped` and by the `dropped`
  metric) iff it is given up with no retry pending. Nobody handles it again until the
  pod changes; `sniffer reconcile` repairs the run.
* A handler call cancelled before it returned (shutdown past the drain deadline) is
  `INTERRUPTED`, a REQUEUE: whatever it was writing may never have been written, so its
  change stays pending (its freshness clock keeps running) and, if the queue still takes
  work, the key is handled again. The worker re-raises the `CancelledError`.
* `resolved(key)` is called iff the key's observed change is no longer pending (the
  "no" rows above): the caller stops the change's freshness clock there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from sniffer.kube import KubeError
from sniffer.platform_model import PlatformRejected, PlatformUnavailable
from watch.store import Cached

# The controller's log lines, under the logger name they always had: operators filter
# on it, and the reliability verdict counts these messages.
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
    """What a drop reads and clears in the pod cache (`watch.store.PodStore`)."""

    def get(self, key: str) -> Cached | None: ...
    def is_deleted(self, key: str) -> bool: ...
    def forget_tombstone(self, key: str, pod: Cached) -> None: ...


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
            self._metrics.dropped(pod.phase if pod else "unknown", outcome.error or "")
            self.dropped += 1
            self._queue.forget(key)
            self._resolved(key)
            if pod is not None and self._store.is_deleted(key):
                self._store.forget_tombstone(key, pod)
