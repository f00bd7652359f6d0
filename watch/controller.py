"""Workers and the handler: from a changed pod key to the platform's acknowledgement.

Contract:
* N workers take keys from the work queue; a key is never handled by two workers at
  once (the queue guarantees it), other keys are handled in parallel.
* The handler derives the workload state from the cached pod (`sniffer.states.derive`)
  and sends an update only when it is ahead of what the platform last acknowledged
  for the run (`_acked`), with that state as the write's precondition. Relisting
  thousands of finished pods after a restart sends nothing that is already right:
  acknowledgements are seeded from one listing of the platform's non-terminal runs.
* Each handler result is one `Outcome`, mapped to exactly one queue operation and one
  metric label in `_finish` (controller-runtime's reconcileHandler).
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
* Finalizer mode: a tracked live pod gets Sniffer's finalizer while its run is not
  terminal; it is released once the platform acknowledged a terminal state, when the
  run is unknown, or when the pod stops being tracked.
* Writes happen only while `is_leader()` is true (checked right before each write).
* `run()` returns when the queue is shut down and every worker finished its key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sniffer.kube import KubeError
from sniffer.platform import Outcome as PlatformOutcome
from sniffer.platform import (
    PlatformClient,
    PlatformRejected,
    PlatformUnavailable,
    Run,
    StateUpdate,
)
from sniffer.podview import PodView
from sniffer.states import Derived, StatePolicy, Underivable, WorkloadState, derive
from watch.finalizers import Finalizers
from watch.store import PodStore
from watch.workqueue import ShutDown, WorkQueue

log = logging.getLogger(__name__)
tracer = trace.get_tracer("sniffer.watch")
_propagator = TraceContextTextMapPropagator()


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
        return _DONE

    @classmethod
    def retry(cls, error: str, retry_after: float | None = None) -> Outcome:
        return cls(Result.RETRY, delay=retry_after or 0.0, error=error)


_DONE = Outcome(Result.DONE)


@dataclass(frozen=True, slots=True)
class Acked:
    """What the platform last confirmed for a run. `state` None means terminal, exact
    state unknown (seeded: the run was absent from the non-terminal listing)."""

    state: WorkloadState | None
    cancel_requested: bool = False
    pod_uid: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state is None or self.state.is_terminal

    @classmethod
    def of(cls, run: Run) -> Acked:
        return cls(WorkloadState(run.state), run.cancel_requested, run.pod_uid)


class ControllerMetrics(Protocol):
    """What the controller reports; `sniffer.telemetry` implements it."""

    def outcome(self, result: str) -> None: ...
    def sent(self, state: str) -> None: ...
    def acknowledged(self, state: str, observed_at: float, changed_at: float | None) -> None: ...
    def dropped(self, state: str, reason: str) -> None: ...
    def finalizer(self, op: str) -> None: ...
    def orphan(self) -> None: ...
    def underivable(self) -> None: ...


class _NoMetrics:
    def outcome(self, result: str) -> None:
        pass

    def sent(self, state: str) -> None:
        pass

    def acknowledged(self, state: str, observed_at: float, changed_at: float | None) -> None:
        pass

    def dropped(self, state: str, reason: str) -> None:
        pass

    def finalizer(self, op: str) -> None:
        pass

    def orphan(self) -> None:
        pass

    def underivable(self) -> None:
        pass


NON_TERMINAL = (WorkloadState.QUEUED.value, WorkloadState.RUNNING.value)
# Shared by every run seeded as "not open": a cold start over 100,000 finished pods must
# not cost 100,000 identical objects.
_TERMINAL_UNKNOWN = Acked(None)
# A pod created this long before the seed listing cannot belong to a run created after
# it; creationTimestamp has one-second resolution, so keep a margin.
_SEED_MARGIN_S = 5.0


class Controller:
    """Turns pod changes into platform updates. Constructing starts nothing."""

    def __init__(self, *, store: PodStore, queue: WorkQueue[str], platform: PlatformClient,
                 finalizers: Finalizers, policy: StatePolicy, workers: int,
                 max_retries: int, is_leader: Callable[[], bool] = lambda: True,
                 metrics: ControllerMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._queue = queue
        self._platform = platform
        self._finalizers = finalizers
        self._policy = policy
        self._workers = workers
        self._max_retries = max_retries
        self._is_leader = is_leader
        self._metrics: ControllerMetrics = metrics or _NoMetrics()
        self._clock = clock
        self._acked: dict[str, Acked] = {}
        """run id → last acknowledged state; an entry exists iff the run's pod is cached
        (or tombstoned) and the platform told us its state."""
        self._seed: dict[str, Acked] | None = None
        self._seed_time = 0.0
        self._observed: dict[str, float] = {}
        """key → wall time a not-yet-handled change was first observed (freshness)."""
        self._busy: dict[str, float] = {}
        self._started = False
        self.handled = 0
        """Keys handled so far (any outcome); informational, for tests and the demo."""
        self.dropped = 0
        """Changes given up (see the contract); informational, like `handled`."""

    # --- wiring ------------------------------------------------------------------------

    def on_change(self, key: str) -> None:
        """Reflector callback: a pod changed. Never blocks. Before `run()` (a standby)
        nothing is queued: `run()` enqueues every cached pod when it starts."""
        if not self._started:
            return
        self._observed.setdefault(key, self._clock())
        self._queue.add(key)

    def oldest_unhandled_age(self) -> float:
        """Seconds since the oldest change not yet acknowledged was observed (0 if none)."""
        if not self._observed:
            return 0.0
        return max(0.0, self._clock() - min(self._observed.values()))

    def longest_busy_s(self) -> float:
        """Seconds the longest-running handler call has been running (0 if idle)."""
        now = time.monotonic()
        return max((now - t for t in self._busy.values()), default=0.0)

    @property
    def running(self) -> bool:
        """True once `run()` started the workers (this replica leads)."""
        return self._started

    @property
    def acked_runs(self) -> int:
        return len(self._acked)

    async def run(self) -> None:
        """Seed acknowledgements, enqueue every cached pod, run the workers until the
        queue shuts down. Caller duty: the store must be synced and this replica
        elected before calling. Call once."""
        if self._started:
            raise RuntimeError("Controller.run() called twice")
        self._started = True
        await self._seed_from_platform()
        for key in self._store.all_keys():
            self._queue.add(key)
        async with asyncio.TaskGroup() as group:
            for i in range(self._workers):
                group.create_task(self._worker(), name=f"worker-{i}")

    async def _seed_from_platform(self) -> None:
        started = self._clock()
        seed: dict[str, Acked] = {}
        try:
            async for run in self._platform.list_runs(NON_TERMINAL):
                seed[run.id] = Acked.of(run)
        except (PlatformUnavailable, PlatformRejected) as exc:
            log.warning("could not list non-terminal runs; runs will be read one by one",
                        extra={"error": str(exc)})
            return
        self._seed, self._seed_time = seed, started
        log.info("seeded acknowledgements", extra={"non_terminal_runs": len(seed)})

    async def _worker(self) -> None:
        while True:
            try:
                key = await self._queue.get()
            except ShutDown:
                return
            self._busy[key] = time.monotonic()
            outcome = _DONE
            try:
                outcome = await self._handle_safely(key)
            finally:
                del self._busy[key]
                self._finish(key, outcome)
                self._queue.done(key)

    async def _handle_safely(self, key: str) -> Outcome:
        try:
            return await self.handle(key)
        except PlatformUnavailable as exc:
            return Outcome.retry(f"platform unavailable: {exc}", exc.retry_after)
        except PlatformRejected as exc:
            return Outcome(Result.DROP, error=f"platform rejected the update: {exc}")
        except KubeError as exc:
            return Outcome.retry(f"kubernetes API: {exc}")
        except Exception as exc:  # one bad object must never kill a worker
            log.exception("handler failed", extra={"key": key})
            return Outcome.retry(f"{type(exc).__name__}: {exc}")

    def _finish(self, key: str, outcome: Outcome) -> None:
        """The one place an outcome becomes a queue operation and a metric label."""
        self.handled += 1
        result = outcome.result
        if result is Result.RETRY and self._queue.num_requeues(key) >= self._max_retries:
            result = Result.DROP
        self._metrics.outcome(result.value)
        if result is Result.DONE:
            self._queue.forget(key)
            self._observed.pop(key, None)
        elif result is Result.REQUEUE:
            self._queue.forget(key)
            self._queue.add(key)
        elif result is Result.REQUEUE_AFTER:
            self._queue.forget(key)
            self._observed.pop(key, None)
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
            self._observed.pop(key, None)
            if pod is not None and self._store.is_deleted(key):
                self._store.forget_tombstone(key, pod)

    # --- the handler ---------------------------------------------------------------------

    async def handle(self, key: str) -> Outcome:
        """Bring the platform in line with the cached pod `key`."""
        pod = self._store.get(key)
        if pod is None:
            return _DONE
        if pod.run_id is None:
            await self._release(pod, "untracked")
            return self._forget_if_deleted(pod)
        acked = self._acked.get(pod.run_id) or await self._lookup(pod)
        if acked is None:
            self._metrics.orphan()
            log.warning("pod's run is unknown to the platform; not reporting it",
                        extra={"key": key, "run_id": pod.run_id})
            await self._release(pod, "orphan")
            return self._forget_if_deleted(pod)
        if acked.pod_uid and acked.pod_uid != pod.uid:
            log.warning("run is bound to another pod; not reporting this one",
                        extra={"key": key, "run_id": pod.run_id, "pod_uid": pod.uid})
            await self._release(pod, "foreign")
            return self._forget_if_deleted(pod)
        if (pod.deletion_timestamp is not None and not acked.terminal
                and not acked.cancel_requested and not pod.cancel_requested):
            # A deletion may follow a cancel on the platform we have not seen yet.
            acked = await self._refresh(pod) or acked
        derived = derive(pod, now=self._clock(), policy=self._policy,
                         cancel_requested=acked.cancel_requested)
        if isinstance(derived, Underivable):
            self._metrics.underivable()
            log.warning("cannot derive the pod's state; leaving it to the reconciler",
                        extra={"key": key, "run_id": pod.run_id, "reason": derived.reason})
            return self._forget_if_deleted(pod)
        if acked.terminal or derived.state.rank <= acked.state.rank:  # type: ignore[union-attr]
            return await self._settle(pod, acked, derived)
        if not self._is_leader():
            return Outcome.retry("not the leader")
        return await self._send(pod, acked, derived)

    async def _send(self, pod: PodView, acked: Acked, derived: Derived) -> Outcome:
        assert pod.run_id is not None and acked.state is not None
        update = StateUpdate(
            run_id=pod.run_id, state=derived.state.value, reason=derived.reason,
            message=derived.message, exit_code=derived.exit_code,
            started_at=_utc(derived.started_at), finished_at=_utc(derived.finished_at),
            pod_uid=pod.uid, pod_name=pod.name, pod_namespace=pod.namespace)
        links = _links(pod.traceparent)
        with tracer.start_as_current_span(
                "sniffer.state_change", kind=SpanKind.INTERNAL, links=links,
                attributes={"sniffer.key": pod.key, "sniffer.run_id": pod.run_id,
                            "sniffer.state.from": acked.state.value,
                            "sniffer.state.to": derived.state.value,
                            "sniffer.attempt": self._queue.num_requeues(pod.key) + 1,
                            "k8s.namespace.name": pod.namespace, "k8s.pod.name": pod.name,
                            "k8s.pod.uid": pod.uid}):
            self._metrics.sent(derived.state.value)
            result = await self._platform.update_state(update,
                                                       expected_state=acked.state.value)
        if result.outcome is PlatformOutcome.NOT_FOUND or result.run is None:
            self._acked.pop(pod.run_id, None)
            return await self._orphaned(pod)
        self._acked[pod.run_id] = new = Acked.of(result.run)
        if result.outcome is PlatformOutcome.PRECONDITION_FAILED:
            # Someone else moved the run; handle again against its real state.
            return Outcome(Result.REQUEUE)
        if result.outcome in (PlatformOutcome.APPLIED, PlatformOutcome.UNCHANGED):
            self._metrics.acknowledged(derived.state.value,
                                       self._observed.get(pod.key, self._clock()),
                                       pod.changed_at)
        elif result.outcome is PlatformOutcome.CONFLICT:
            log.info("platform already has a newer or terminal state",
                     extra={"key": pod.key, "run_id": pod.run_id, "ours": derived.state.value,
                            "theirs": result.run.state})
        return await self._settle(pod, new, derived)

    async def _orphaned(self, pod: PodView) -> Outcome:
        self._metrics.orphan()
        await self._release(pod, "orphan")
        return self._forget_if_deleted(pod)

    async def _settle(self, pod: PodView, acked: Acked, derived: Derived) -> Outcome:
        """Nothing (more) to send: put the finalizer where it belongs, plan a recheck."""
        if acked.terminal:
            await self._release(pod, "acknowledged")
            if self._store.is_deleted(pod.key):
                self._acked.pop(pod.run_id or "", None)
            return self._forget_if_deleted(pod)
        if self._store.is_deleted(pod.key):
            return self._forget_if_deleted(pod)
        if not derived.state.is_terminal and await self._finalizers.ensure(pod):
            self._metrics.finalizer("added")
        if derived.recheck_after is not None:
            return Outcome(Result.REQUEUE_AFTER, delay=derived.recheck_after)
        return _DONE

    async def _release(self, pod: PodView, why: str) -> None:
        if self._store.is_deleted(pod.key):
            return
        if await self._finalizers.release(pod):
            self._metrics.finalizer("removed")
            log.debug("released finalizer", extra={"key": pod.key, "why": why})

    def _forget_if_deleted(self, pod: PodView) -> Outcome:
        if self._store.is_deleted(pod.key):
            self._store.forget_tombstone(pod.key, pod)
        return _DONE

    async def _lookup(self, pod: PodView) -> Acked | None:
        """The run's acknowledged state when we have none: from the seed, else GET."""
        assert pod.run_id is not None
        if self._seed is not None:
            seeded = self._seed.pop(pod.run_id, None)
            if seeded is not None:
                self._acked[pod.run_id] = seeded
                return seeded
            if pod.created_at < self._seed_time - _SEED_MARGIN_S:
                # Not among the non-terminal runs, and older than the listing: the run is
                # terminal (or unknown). Either way there is nothing to send.
                acked = _TERMINAL_UNKNOWN
                self._acked[pod.run_id] = acked
                return acked
        return await self._refresh(pod)

    async def _refresh(self, pod: PodView) -> Acked | None:
        assert pod.run_id is not None
        run = await self._platform.get_run(pod.run_id)
        if run is None:
            self._acked.pop(pod.run_id, None)
            return None
        self._acked[pod.run_id] = acked = Acked.of(run)
        return acked


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _links(traceparent: str | None) -> list[Link]:
    if not traceparent:
        return []
    ctx = trace.get_current_span(_propagator.extract({"traceparent": traceparent}))
    span_context = ctx.get_span_context()
    return [Link(span_context)] if span_context.is_valid else []
