"""Workers and the handler: from a changed pod key to the platform's acknowledgement.

Contract:
* N workers take keys from the work queue; a key is never handled by two workers at
  once (the queue guarantees it), other keys are handled in parallel.
* The handler derives the workload state from the cached pod (`sniffer.states.derive`)
  and sends an update only when it is ahead of what the platform last acknowledged
  for the run (`watch.ledger`), with that state as the write's precondition. Relisting
  thousands of finished pods after a restart sends nothing that is already right:
  acknowledgements are seeded from one listing of the platform's non-terminal runs.
* Each handler result (or exception) is one `watch.outcomes.Outcome`, mapped to exactly
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
* Finalizers: the handler never awaits a finalizer patch. Wherever what it learned may
  move a pod's finalizer (an acknowledgement, a read, a pod that is untracked, orphaned
  or foreign) it enqueues the key to the finalizer loop (`watch.finalizing`, its own
  queue and workers), which decides from the cache and `RunKnowledge` (this class
  answers it) whether to add or release. `run()` runs both worker pools; once the
  platform queue is shut down and its workers finished, nothing enqueues finalizer work
  any more and the finalizer queue is shut down too (its waiting keys still go out).
* Settled pods (`watch.store`): a pod is settled iff it is finished, carries no Sniffer
  finalizer and the platform acknowledged a terminal state for its run, by the rule of
  `watch.ledger.RunLedger.terminal_acknowledged`. The
  store keeps such pods as `SettledPod` records; the handler does nothing for a record
  but forget its tombstone, and compacts a view once it settles it. `seed()` may be
  called before the first LIST, so listed pods are judged as they come.
* Writes happen only while `is_leader()` is true (checked right before each write).
* A failure the state rules decided for a pod that has not ended (`Derived.judged`: stuck
  Pending, image pull, crash loop) is sent only after a quorum read of the pod shows the
  cached resourceVersion is still the latest: a terminal state cannot be undone, and a
  cache that lags its watch would otherwise fail a pod that has since started or
  finished. If the cache is behind (or the pod is gone) the key retries; the watch event
  on its way brings the newer view.
* `run()` returns when the queue is shut down and every worker of both pools finished
  its key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sniffer.kube import JSON, NotFound
from sniffer.platform import PlatformClient
from sniffer.platform_model import Outcome as PlatformOutcome
from sniffer.platform_model import StateUpdate
from sniffer.podview import PodView
from sniffer.states import Derived, StatePolicy, Underivable, derive
from watch.finalizers import Finalizers
from watch.finalizing import FinalizerLoop
from watch.ledger import Acked, RunLedger
from watch.outcomes import DONE, INTERRUPTED, Outcome, OutcomeMap, Result, outcome_of
from watch.store import PodStore, SettledPod
from watch.workqueue import ShutDown, WorkQueue

log = logging.getLogger(__name__)
tracer = trace.get_tracer("sniffer.watch")
_propagator = TraceContextTextMapPropagator()


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


class PodReader(Protocol):
    """The API server read that confirms a judged failure (`sniffer.kube.KubeClient`)."""

    async def get_pod(self, namespace: str, name: str, *, slim: bool = False) -> JSON: ...


class Controller:
    """Turns pod changes into platform updates. Constructing starts nothing."""

    def __init__(self, *, store: PodStore, queue: WorkQueue[str], platform: PlatformClient,
                 pods: PodReader, finalizers: Finalizers, policy: StatePolicy, workers: int,
                 max_retries: int, is_leader: Callable[[], bool] = lambda: True,
                 metrics: ControllerMetrics | None = None,
                 clock: Callable[[], float] = time.time,
                 finalizer_queue: WorkQueue[str] | None = None,
                 finalizer_workers: int = 16, ledger: RunLedger | None = None) -> None:
        self._store = store
        self._queue = queue
        self._platform = platform
        self._pods = pods
        self._policy = policy
        self._workers = workers
        self._is_leader = is_leader
        self._metrics: ControllerMetrics = metrics or _NoMetrics()
        self._clock = clock
        self._acks = ledger if ledger is not None else RunLedger(platform, clock=clock)
        """The one record of what the platform acknowledged, and the seed."""
        self._observed: dict[str, float] = {}
        """key → wall time its oldest unsettled change was observed (freshness); an entry
        exists iff `on_change` saw a change of the key that no outcome has settled since
        (`_settled`, called by the outcome map)."""
        self._outcomes = OutcomeMap(queue=queue, store=store, metrics=self._metrics,
                                    max_retries=max_retries,
                                    settled=self._settled)
        self._busy: dict[str, float] = {}
        self._started = False
        self.finalizing = FinalizerLoop(
            store=store, knowledge=self,
            queue=finalizer_queue if finalizer_queue is not None else WorkQueue[str](),
            finalizers=finalizers, policy=policy, workers=finalizer_workers,
            is_leader=is_leader, metrics=self._metrics, clock=clock)
        """The finalizer loop; `run()` runs its workers beside the platform workers."""

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
        return len(self._acks)

    @property
    def handled(self) -> int:
        """Keys handled so far (any outcome); informational, for tests and the demo."""
        return self._outcomes.handled

    @property
    def dropped(self) -> int:
        """Changes given up (see the contract); informational, like `handled`."""
        return self._outcomes.dropped

    async def run(self) -> None:
        """Seed acknowledgements, enqueue every cached pod, run the workers until the
        queue shuts down. Caller duty: the store must be synced and this replica
        elected before calling. Call once."""
        if self._started:
            raise RuntimeError("Controller.run() called twice")
        self._started = True
        await self.seed()
        for key in self._store.all_keys():
            self._queue.add(key)
        async with asyncio.TaskGroup() as group:
            group.create_task(self.finalizing.run(), name="finalizer-loop")
            async with asyncio.TaskGroup() as workers:
                for i in range(self._workers):
                    workers.create_task(self._worker(), name=f"worker-{i}")
            # No platform worker is left to enqueue finalizer work: let it drain.
            self.finalizing.queue.shut_down()

    async def seed(self) -> None:
        """Take the acknowledgement seed (`watch.ledger.RunLedger.seed`). `run()` takes a fresh
        one; calling it before the first LIST as well lets the store keep the pods it
        settles as records from the start. Caller duty: not concurrently with itself."""
        await self._acks.seed()

    async def _worker(self) -> None:
        while True:
            try:
                key = await self._queue.get()
            except ShutDown:
                return
            self._busy[key] = time.monotonic()
            outcome = INTERRUPTED  # if cancelled: the change stays pending
            try:
                outcome = await self._handle_safely(key)
            finally:
                del self._busy[key]
                self._outcomes.finish(key, outcome)
                self._queue.done(key)

    def _settled(self, key: str) -> None:
        """The outcome map is through with `key`'s change: stop its freshness clock."""
        self._observed.pop(key, None)

    async def _handle_safely(self, key: str) -> Outcome:
        try:
            return await self.handle(key)
        except Exception as exc:  # one bad object must never kill a worker
            return outcome_of(key, exc)

    def settled(self, pod: PodView) -> bool:
        """The store's question (`watch.store.Acknowledgements`): has the platform
        acknowledged a terminal state for `pod`'s run? The ledger answers
        it. Reads only; no await."""
        return self._acks.terminal_acknowledged(pod)

    def acked(self, run_id: str) -> Acked | None:
        """`watch.finalizing.RunKnowledge`: the platform's last answer about the run."""
        return self._acks.get(run_id)

    def run_unknown(self, run_id: str) -> bool:
        """`watch.finalizing.RunKnowledge`: was the platform's last answer "no such run"?"""
        return self._acks.unknown(run_id)

    # --- the handler ---------------------------------------------------------------------

    async def handle(self, key: str) -> Outcome:
        """Bring the platform in line with the cached pod `key`."""
        pod = self._store.get(key)
        if pod is None:
            return DONE
        if isinstance(pod, SettledPod):
            # Acknowledged terminal, no finalizer of ours: nothing to send or release.
            if self._store.is_deleted(key):
                self._acks.forget(pod.run_id)
                self._store.forget_tombstone(key, pod)
            return DONE
        if pod.run_id is None:
            self._finalize(pod)
            return self._forget_if_deleted(pod)
        acked = (self._acks.get(pod.run_id) or self._acks.from_seed(pod)
                 or await self._refresh(pod))
        if acked is None:
            self._metrics.orphan()
            log.warning("pod's run is unknown to the platform; not reporting it",
                        extra={"key": key, "run_id": pod.run_id})
            self._finalize(pod)
            return self._forget_if_deleted(pod)
        if acked.pod_uid and acked.pod_uid != pod.uid:
            log.warning("run is bound to another pod; not reporting this one",
                        extra={"key": key, "run_id": pod.run_id, "pod_uid": pod.uid})
            self._finalize(pod)
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
        if derived.judged and (behind := await self._cache_behind(pod)) is not None:
            return Outcome.retry(behind)
        return await self._send(pod, acked, derived)

    async def _cache_behind(self, pod: PodView) -> str | None:
        """Why the cached `pod` is not the API server's latest (None: it is). A GET
        without resourceVersion is a quorum read, never older than the watch."""
        try:
            fresh = await self._pods.get_pod(pod.namespace, pod.name, slim=True)
        except NotFound:
            return "judged failure not sent: the pod is gone on the API server"
        metadata = fresh.get("metadata")
        latest = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if latest == pod.resource_version:
            return None
        log.info("judged failure not sent: the cache is behind the API server",
                 extra={"key": pod.key, "run_id": pod.run_id, "reason": "cache behind",
                        "cached": pod.resource_version, "latest": latest})
        return f"judged failure not sent: cached resourceVersion {pod.resource_version}, " \
               f"API server has {latest}"

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
            self._unknown(pod.run_id)
            return self._orphaned(pod)
        self._record(pod.run_id, new := Acked.of(result.run))
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

    def _orphaned(self, pod: PodView) -> Outcome:
        self._metrics.orphan()
        self._finalize(pod)
        return self._forget_if_deleted(pod)

    async def _settle(self, pod: PodView, acked: Acked, derived: Derived) -> Outcome:
        """Nothing (more) to send: have the finalizer put where it belongs, plan a
        recheck."""
        if acked.terminal:
            self._finalize(pod)  # the release: the platform has the outcome now
            if self._store.is_deleted(pod.key):
                self._acks.forget(pod.run_id or "")
                return self._forget_if_deleted(pod)
            self._store.settle(pod.key, pod)
            return DONE
        if self._store.is_deleted(pod.key):
            return self._forget_if_deleted(pod)
        if not derived.state.is_terminal:
            self._finalize(pod)  # the add, if it is missing
        if derived.recheck_after is not None:
            return Outcome(Result.REQUEUE_AFTER, delay=derived.recheck_after)
        return DONE

    def _finalize(self, pod: PodView) -> None:
        """Enqueue `pod`'s key to the finalizer loop (a tombstone has nothing to patch)."""
        if not self._store.is_deleted(pod.key):
            self.finalizing.enqueue(pod)

    def _forget_if_deleted(self, pod: PodView) -> Outcome:
        if self._store.is_deleted(pod.key):
            self._store.forget_tombstone(pod.key, pod)
            self._acks.forget_unknown(pod.run_id or "")
        return DONE

    async def _refresh(self, pod: PodView) -> Acked | None:
        """Read the run's state from the platform and record it (None: unknown run)."""
        assert pod.run_id is not None
        run = await self._platform.get_run(pod.run_id)
        if run is None:
            self._unknown(pod.run_id)
            return None
        self._record(pod.run_id, acked := Acked.of(run))
        return acked

    def _record(self, run_id: str, acked: Acked) -> None:
        self._acks.record(run_id, acked)

    def _unknown(self, run_id: str) -> None:
        self._acks.record_unknown(run_id)


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _links(traceparent: str | None) -> list[Link]:
    if not traceparent:
        return []
    ctx = trace.get_current_span(_propagator.extract({"traceparent": traceparent}))
    span_context = ctx.get_span_context()
    return [Link(span_context)] if span_context.is_valid else []
