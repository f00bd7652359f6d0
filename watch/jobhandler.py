"""The Job handler: from one cached Job (and its cached attempt pods) to the platform.

Contract (the pod handler's, `watch.handler`, for a run backed by a batch/v1 Job):
* `handle(key)` derives the run's state from the Job cached for `key` and its attempt
  pods (`sniffer.jobs.derive_job`), and sends an update only when it is ahead of what the
  platform last acknowledged (`watch.ledger.RunLedger`, shared with the pod path), with
  that state as the write's precondition (412: handle again; 409: recorded). The run is
  bound to the Job's uid (the update names the Job as the run's "pod"): attempts come
  and go, the Job stays. A failed attempt the Job retries is never terminal: only the
  Job's own conditions, its deletion or a cancel end the run.
* A Job's failure waits for its last failed attempt: the pod and Job watches are separate
  streams, so the Job's FailureTarget/Failed can reach the cache before the attempt
  pod's end that caused it. While the Job knows of more failed attempts than the cached
  pods show (`sniffer.jobs.attempts_behind`), the key is rechecked every
  `CATCH_UP_POLL_S`, for at most `CATCH_UP_S`; past that (the pods were removed), the
  failure is sent without an exit code rather than with an earlier attempt's.
* Attempts: each update carries the attempt count and the current attempt's pod
  (`sniffer.jobs.attempts`); an open run whose Job made more attempts than the platform
  acknowledged gets a same-state update with the new count (the platform keeps the
  largest; a count never moves a run backwards).
* It answers with one `watch.workers.Outcome`; whatever it learns from the platform is
  recorded in the ledger before it returns.
* A Job with no run id, whose run the platform does not know, or whose run is bound to
  another uid is not reported.
* Outcome never lost: a tracked Job whose run is open carries Sniffer's finalizer
  `sniffer.io/outcome` (on the Job, not its pods: the Job controller already holds its
  pods with its own finalizer until it has counted them, and the Job's status outlives
  its pods), so a Job deleted by a user, the platform's cancel or its TTL stays, with
  its conditions, until the platform acknowledged a terminal state; then the finalizer
  is released. Unlike the pod path, the handler patches the finalizer itself (a Job
  sees a handful of changes in its life, not a burst): a patch that fails retries the
  key with backoff.
* A deletion: once through with a deleted Job it forgets the tombstone, the run's
  terminal ledger entry and the Job's attempts (`watch.jobindex.JobIndex.forget`).
* Writes (platform updates and finalizer patches) happen only while `is_leader()` is true.
* Spans and metrics carry the workload kind (`sniffer.workload.kind` = "Job").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from sniffer.jobs import Attempts, attempts, attempts_behind, derive_job
from sniffer.jobview import JobView
from sniffer.nullmetrics import NULL_METRICS
from sniffer.platform import PlatformClient
from sniffer.platform_model import Outcome as PlatformOutcome
from sniffer.platform_model import StateUpdate
from sniffer.podview import OUTCOME_FINALIZER
from sniffer.states import Derived, StatePolicy, WorkloadState
from watch.handler import HandlerMetrics, _links
from watch.jobindex import JobIndex
from watch.ledger import Acked, RunLedger
from watch.store import JobStore
from watch.workers import DONE, Outcome, Result

log = logging.getLogger("watch.controller")
tracer = trace.get_tracer("sniffer.watch")
JOB = "Job"
CATCH_UP_S = 10.0
"""How long a Job's failure waits for the pod cache to show the attempt the Job counts
(`sniffer.jobs.attempts_behind`); past it, the failure goes without an exit code."""
CATCH_UP_POLL_S = 0.2


class JobFinalizers(Protocol):
    """The finalizer patches (`watch.jobsource.add_finalizer`/`release_finalizer`)."""

    def add(self, job: JobView) -> Awaitable[bool]: ...
    def release(self, job: JobView) -> Awaitable[bool]: ...


class JobHandler:
    """Brings the platform in line with one cached Job. Constructing starts nothing."""

    def __init__(self, *, store: JobStore, index: JobIndex, ledger: RunLedger,
                 platform: PlatformClient, finalizers: JobFinalizers, enabled: bool,
                 policy: StatePolicy, is_leader: Callable[[], bool] = lambda: True,
                 metrics: HandlerMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`enabled`: finalizer mode (`finalizers.enabled`); off, no finalizer is added
        (a leftover one is still released)."""
        self._store = store
        self._index = index
        self._ledger = ledger
        self._platform = platform
        self._finalizers = finalizers
        self._enabled = enabled
        self._policy = policy
        self._is_leader = is_leader
        self._metrics: HandlerMetrics = metrics or NULL_METRICS
        self._clock = clock
        self._held: dict[str, float] = {}
        """Job key → monotonic time its failure was first held for the pod cache."""
        self._attempts_acked: dict[str, int] = {}
        """run id → the largest attempt count the platform acknowledged (open runs only:
        an entry goes when the run's ledger entry does)."""

    async def handle(self, key: str) -> Outcome:
        job = self._store.get(key)
        if job is None:
            return DONE
        if job.run_id is None:
            return await self._not_reported(job)
        acked = (self._ledger.get(job.run_id) or self._ledger.from_seed(job)
                 or await self._refresh(job))
        if acked is None:
            self._metrics.orphan()
            log.warning("Job's run is unknown to the platform; not reporting it",
                        extra={"key": key, "run_id": job.run_id, "kind": JOB})
            return await self._not_reported(job)
        if acked.pod_uid and acked.pod_uid != job.uid:
            log.warning("run is bound to another uid; not reporting this Job",
                        extra={"key": key, "run_id": job.run_id, "job_uid": job.uid})
            return await self._not_reported(job)
        if (job.deletion_timestamp is not None and not acked.terminal
                and not acked.cancel_requested):
            # A deletion may follow a cancel on the platform we have not seen yet.
            acked = await self._refresh(job) or acked
        pods = self._index.attempts(job)
        derived = derive_job(job, pods, now=self._clock(), policy=self._policy,
                             cancel_requested=acked.cancel_requested)
        tried = attempts(job, pods)
        failure = job.holds("FailureTarget") or job.holds("Failed")
        if failure and derived.state is WorkloadState.FAILED and attempts_behind(job, pods):
            if not acked.terminal and self._hold(key):
                return Outcome(Result.REQUEUE_AFTER, CATCH_UP_POLL_S)
            derived = replace(derived, exit_code=None)  # gone for good: never a wrong one
        self._held.pop(key, None)
        if acked.terminal or not self._ahead(job.run_id, acked, derived, tried.count):
            return await self._nothing_to_send(job, acked, derived)
        if not self._is_leader():
            return Outcome.retry("not the leader")
        return await self._send(job, acked, derived, tried)

    def _hold(self, key: str) -> bool:
        """Whether a failure the pod cache is behind on should wait (for `CATCH_UP_S` from
        the first hold): the last attempt's end is then seen before the run ends."""
        now = time.monotonic()
        first = self._held.setdefault(key, now)
        if now - first < CATCH_UP_S:
            return True
        log.warning("Job failed but its last failed attempt is not in the cache; sending the"
                    " failure without an exit code", extra={"key": key, "kind": JOB})
        return False

    def _ahead(self, run_id: str, acked: Acked, derived: Derived, count: int) -> bool:
        """A later state, or the same open state with more attempts than acknowledged
        (the platform shows attempts; a count never moves the run backwards)."""
        assert acked.state is not None
        if derived.state.rank != acked.state.rank:
            return derived.state.rank > acked.state.rank
        return count > self._attempts_acked.get(run_id, 0)

    async def _send(self, job: JobView, acked: Acked, derived: Derived,
                    tried: Attempts) -> Outcome:
        assert job.run_id is not None
        assert acked.state is not None
        update = StateUpdate.derived(job.run_id, derived, job, attempts=tried.count,
                                     attempt_pod=tried.current_pod)
        count = tried.count
        with tracer.start_as_current_span(
                "sniffer.state_change", kind=SpanKind.INTERNAL, links=_links(job.traceparent),
                attributes={"sniffer.key": job.key, "sniffer.run_id": job.run_id,
                            "sniffer.workload.kind": JOB,
                            "sniffer.state.from": acked.state.value,
                            "sniffer.state.to": derived.state.value,
                            "sniffer.job.attempts": count,
                            "k8s.namespace.name": job.namespace, "k8s.job.name": job.name,
                            "k8s.job.uid": job.uid}):
            self._metrics.sent(derived.state.value)
            result = await self._platform.update_state(update,
                                                       expected_state=acked.state.value)
        if result.outcome is PlatformOutcome.NOT_FOUND or result.run is None:
            self._ledger.record_unknown(job.run_id)
            self._metrics.orphan()
            return await self._not_reported(job)
        self._ledger.record(job.run_id, new := Acked.of(result.run))
        self._attempts_acked[job.run_id] = max(result.run.attempts,
                                               self._attempts_acked.get(job.run_id, 0))
        if result.outcome is PlatformOutcome.PRECONDITION_FAILED:
            return Outcome(Result.REQUEUE)
        if result.outcome in (PlatformOutcome.APPLIED, PlatformOutcome.UNCHANGED):
            self._metrics.acknowledged(derived.state.value, self._clock(), None)
        return await self._nothing_to_send(job, new, derived)

    async def _nothing_to_send(self, job: JobView, acked: Acked, derived: Derived) -> Outcome:
        """Put the finalizer where it belongs; forget a handled deletion."""
        held = OUTCOME_FINALIZER in job.finalizers
        deleted = self._store.is_deleted(job.key)
        if acked.terminal:
            self._index.forget(job, deleted=False)
            if held and not deleted:
                return await self._patch(job, release=True)
            return self._forget_if_deleted(job, terminal=True)
        if deleted:
            return self._forget_if_deleted(job)
        if (self._enabled and not held and job.deletion_timestamp is None
                and not derived.state.is_terminal):
            return await self._patch(job, release=False)
        return DONE

    async def _not_reported(self, job: JobView) -> Outcome:
        self._index.forget(job, deleted=False)
        if OUTCOME_FINALIZER in job.finalizers and not self._store.is_deleted(job.key):
            return await self._patch(job, release=True)
        return self._forget_if_deleted(job)

    async def _patch(self, job: JobView, *, release: bool) -> Outcome:
        if not self._is_leader():
            return Outcome.retry("not the leader")
        patch = self._finalizers.release if release else self._finalizers.add
        if await patch(job):
            self._metrics.finalizer("removed" if release else "added")
        return DONE

    def _forget_if_deleted(self, job: JobView, *, terminal: bool = False) -> Outcome:
        if self._store.is_deleted(job.key):
            self._held.pop(job.key, None)
            self._store.forget_tombstone(job.key, job)
            self._index.forget(job)
            if job.run_id is not None:
                self._attempts_acked.pop(job.run_id, None)
                if terminal:
                    self._ledger.forget(job.run_id)
                else:
                    self._ledger.forget_unknown(job.run_id)
        return DONE

    async def _refresh(self, job: JobView) -> Acked | None:
        assert job.run_id is not None
        run = await self._platform.get_run(job.run_id)
        if run is None:
            self._ledger.record_unknown(job.run_id)
            return None
        self._ledger.record(job.run_id, acked := Acked.of(run))
        self._attempts_acked[job.run_id] = max(run.attempts,
                                               self._attempts_acked.get(job.run_id, 0))
        return acked
