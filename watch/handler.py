"""The platform handler: from one cached pod to the platform's acknowledgement.

Contract:
* `handle(key)` derives the workload state from the pod cached for `key`
  (`sniffer.states.derive`) and sends an update only when it is ahead of what the
  platform last acknowledged for the run (`watch.ledger.RunLedger`), with that state as
  the write's precondition (412: someone else moved the run; handle again against its
  real state; 409: the platform has a newer or terminal state, which is recorded).
  Relisting thousands of finished pods after a restart sends nothing that is already
  right: the ledger is seeded from one listing of the platform's non-terminal runs.
* It answers with one `watch.workers.Outcome`; a raised exception is the worker pool's
  to turn into one (`watch.workers`).
* Whatever it learns from the platform (a read, a write's answer, "no such run") is
  recorded in the ledger before it returns; nothing else records there.
* A pod a watched Job made (`sniffer.jobs.owned_by_job`, jobs among `kube.kinds`:
  `controller_owned`) is an attempt, not a run: the Job path
  (`watch.jobhandler`) reports its run from the Job, so it is never reported here (else
  a failed attempt the Job retries would end the run); like an untracked pod, its key
  goes to the finalizer loop, which releases a leftover finalizer. While the Job path
  holds its Job (`job_held(uid)`), its tombstone is the Job path's to forget
  (`watch.jobindex.JobIndex.forget`): the last attempt's end is the run's exit code, and
  pod GC may delete it before the Job fails. A deleted attempt of a Job the Job path
  does not hold (Jobs not watched; the Job deleted and forgotten first, as background
  propagation does) is forgotten here: no one else ever would. (So is an attempt deleted
  before its Job's first event arrived: the Job's conditions still give the run's state;
  only that attempt's exit code is missing from a failure's detail.)
* A replica pod of a watched app controller (`controller_owned`: a Deployment's ReplicaSet's or a
  StatefulSet's pod with a run id, the kind among `kube.kinds`) is never reported here
  either: the app path (`watch.apphandler`) reports its run from the controller, so a
  drain that deletes the pod does not end the run. Its tombstone is forgotten at once
  (the app path reads only live replicas); its key goes to the finalizer loop, which
  releases a leftover finalizer. With the kind not watched it is judged as a bare pod,
  as a Job's pod is with jobs not watched (as the reconciler judges them then, and as
  Sniffer did before it knew Jobs and apps).
* A pod with no run id, whose run the platform does not know (orphan) or whose run is
  bound to another pod uid (foreign) is not reported; its key goes to the finalizer
  loop, which releases a leftover finalizer.
* Finalizers: the handler never awaits a finalizer patch. Wherever what it learned may
  move a pod's finalizer (an acknowledgement, a read, a pod that is untracked, orphaned
  or foreign) it enqueues the key to the finalizer loop (`watch.finalizer_loop`), which
  decides from the cache and the ledger whether to add or release.
* Settled pods (`watch.store.SettledPod`: finished, no Sniffer finalizer, the run
  terminal and acknowledged): the handler does nothing for one but forget its
  tombstone.
* A deletion: once the handler is through with a deleted pod it forgets the pod's
  tombstone (`PodStore.forget_tombstone`) and, for a run acknowledged terminal, the
  run's ledger entry.
* A failure the state rules decided for a pod that has not ended (`Derived.judged`: stuck
  Pending, image pull, crash loop) is sent only after a quorum read of the pod shows the
  cached resourceVersion is still the latest: a terminal state cannot be undone, and a
  cache that lags its watch would otherwise fail a pod that has since started or
  finished. If the cache is behind (or the pod is gone) the key retries; the watch event
  on its way brings the newer view.
* Writes happen only while `is_leader()` is true (checked right before each write).
* The state-change span carries the workload kind (`sniffer.workload.kind` = "Pod"; the
  Job path's says "Job").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sniffer.jobs import owned_by_job
from sniffer.kubedecode import JSON, NotFound
from sniffer.nullmetrics import NULL_METRICS
from sniffer.platform import PlatformClient
from sniffer.platform_model import Outcome as PlatformOutcome
from sniffer.platform_model import StateUpdate
from sniffer.podview import PodView
from sniffer.states import Derived, StatePolicy, Underivable, derive
from watch.ledger import Acked, RunLedger
from watch.store import PodStore, SettledPod
from watch.workers import DONE, Outcome, Result

# The handler's log lines keep the logger name they always had (the controller's):
# operators filter on it, and the reliability verdict counts these messages.
log = logging.getLogger("watch.controller")
tracer = trace.get_tracer("sniffer.watch")
_propagator = TraceContextTextMapPropagator()


class HandlerMetrics(Protocol):
    """What the handler, the finalizer loop and their outcome maps report;
    `sniffer.telemetry` implements it (as `watch.controller.ControllerMetrics`)."""

    def outcome(self, result: str) -> None: ...
    def sent(self, state: str) -> None: ...
    def acknowledged(self, state: str, observed_at: float, changed_at: float | None) -> None: ...
    def dropped(self, state: str, reason: str) -> None: ...
    def finalizer(self, op: str) -> None: ...
    def orphan(self) -> None: ...
    def underivable(self) -> None: ...


class PodReader(Protocol):
    """The API server read that confirms a judged failure (`sniffer.kube.KubeClient`)."""

    async def get_pod(self, namespace: str, name: str, *, slim: bool = False) -> JSON: ...


class Attempts(Protocol):
    """How often a key was retried (`watch.workqueue.WorkQueue`), for the span."""

    def num_requeues(self, key: str) -> int: ...


class PlatformHandler:
    """Brings the platform in line with one cached pod. Constructing starts nothing."""

    def __init__(self, *, store: PodStore, ledger: RunLedger, platform: PlatformClient,
                 pods: PodReader, policy: StatePolicy, attempts: Attempts,
                 finalizer_loop: Callable[[PodView], None],
                 observed_at: Callable[[str], float | None],
                 is_leader: Callable[[], bool] = lambda: True,
                 job_held: Callable[[str | None], bool] = lambda uid: False,
                 controller_owned: Callable[[PodView], bool] = owned_by_job,
                 metrics: HandlerMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`finalizer_loop(pod)` enqueues the pod's key for its finalizer (never blocks);
        `observed_at(key)` is the wall time the key's oldest pending change was observed
        (None: unknown), for the freshness metric; `job_held(uid)` whether the Job path
        holds the Job of that uid (`watch.jobindex.JobIndex.holds`); `controller_owned(pod)`
        whether a controller's path reports the pod's run (`watch.jobpath.JobPath.owns`,
        `watch.apppath.AppPath.owns`); `clock` is wall time."""
        self._store = store
        self._ledger = ledger
        self._platform = platform
        self._pods = pods
        self._policy = policy
        self._attempts = attempts
        self._finalizer_loop = finalizer_loop
        self._observed_at = observed_at
        self._is_leader = is_leader
        self._job_held = job_held
        self._controller_owned = controller_owned
        self._metrics: HandlerMetrics = metrics or NULL_METRICS
        self._clock = clock

    async def handle(self, key: str) -> Outcome:
        """Bring the platform in line with the cached pod `key`."""
        pod = self._store.get(key)
        if pod is None:
            return DONE
        if isinstance(pod, SettledPod):
            # Acknowledged terminal, no finalizer of ours: nothing to send or release.
            if self._store.is_deleted(key):
                self._ledger.forget(pod.run_id)
                self._store.forget_tombstone(key, pod)
            return DONE
        if self._controller_owned(pod):
            return self._left_to_its_controller(pod)
        if pod.run_id is None:
            return self._not_reported(pod)
        acked = (self._ledger.get(pod.run_id) or self._ledger.from_seed(pod)
                 or await self._refresh(pod))
        if acked is None:
            self._metrics.orphan()
            log.warning("pod's run is unknown to the platform; not reporting it",
                        extra={"key": key, "run_id": pod.run_id})
            return self._not_reported(pod)
        if acked.pod_uid and acked.pod_uid != pod.uid:
            log.warning("run is bound to another pod; not reporting this one",
                        extra={"key": key, "run_id": pod.run_id, "pod_uid": pod.uid})
            return self._not_reported(pod)
        return await self._bring_in_line(pod, acked)

    async def _bring_in_line(self, pod: PodView, acked: Acked) -> Outcome:
        """The run is known and bound to `pod` (or to no pod): send what is ahead."""
        if (pod.deletion_timestamp is not None and not acked.terminal
                and not acked.cancel_requested and not pod.cancel_requested):
            # A deletion may follow a cancel on the platform we have not seen yet.
            acked = await self._refresh(pod) or acked
        derived = derive(pod, now=self._clock(), policy=self._policy,
                         cancel_requested=acked.cancel_requested)
        if isinstance(derived, Underivable):
            self._metrics.underivable()
            log.warning("cannot derive the pod's state; leaving it to the reconciler",
                        extra={"key": pod.key, "run_id": pod.run_id,
                               "reason": derived.reason})
            return self._forget_if_deleted(pod)
        if acked.terminal or derived.state.rank <= acked.state.rank:  # type: ignore[union-attr]
            return await self._nothing_to_send(pod, acked, derived)
        if not self._is_leader():
            return Outcome.retry("not the leader")
        if derived.judged and (behind := await self._cache_behind(pod)) is not None:
            return Outcome.retry(behind)
        return await self._send(pod, acked, derived)

    def _left_to_its_controller(self, pod: PodView) -> Outcome:
        """A Job's attempt or a watched app controller's replica: its controller's path
        reports the run (watch.jobhandler, watch.apphandler). A Job path holding the Job
        forgets its attempts' tombstones itself (the last exit code is the run's); an app
        path reads live replicas only, so a replica's tombstone goes at once."""
        self._finalize(pod)
        if self._store.is_deleted(pod.key) and (
                not owned_by_job(pod) or not self._job_held(pod.owner_uid)):
            self._store.forget_tombstone(pod.key, pod)
        return DONE

    def _not_reported(self, pod: PodView) -> Outcome:
        """Untracked, orphaned or foreign: the finalizer loop may release a leftover
        finalizer; a tombstone is done with."""
        self._finalize(pod)
        return self._forget_if_deleted(pod)

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
        assert pod.run_id is not None
        assert acked.state is not None
        update = StateUpdate.derived(pod.run_id, derived, pod)
        links = _links(pod.traceparent)
        with tracer.start_as_current_span(
                "sniffer.state_change", kind=SpanKind.INTERNAL, links=links,
                attributes={"sniffer.key": pod.key, "sniffer.run_id": pod.run_id,
                            "sniffer.workload.kind": "Pod",
                            "sniffer.state.from": acked.state.value,
                            "sniffer.state.to": derived.state.value,
                            "sniffer.attempt": self._attempts.num_requeues(pod.key) + 1,
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
            observed = self._observed_at(pod.key)
            self._metrics.acknowledged(derived.state.value,
                                       self._clock() if observed is None else observed,
                                       pod.changed_at)
        elif result.outcome is PlatformOutcome.CONFLICT:
            log.info("platform already has a newer or terminal state",
                     extra={"key": pod.key, "run_id": pod.run_id, "ours": derived.state.value,
                            "theirs": result.run.state})
        return await self._nothing_to_send(pod, new, derived)

    def _orphaned(self, pod: PodView) -> Outcome:
        self._metrics.orphan()
        return self._not_reported(pod)

    async def _nothing_to_send(self, pod: PodView, acked: Acked, derived: Derived) -> Outcome:
        """Nothing (more) to send: have the finalizer put where it belongs, plan a
        recheck."""
        if acked.terminal:
            self._finalize(pod)  # the release: the platform has the outcome now
            if self._store.is_deleted(pod.key):
                self._ledger.forget(pod.run_id or "")
                return self._forget_if_deleted(pod)
            # Read back: the cache compacts a pod that is settled now when it is read,
            # so a finished pod with no event to come is not held in full until then.
            self._store.get(pod.key)
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
            self._finalizer_loop(pod)

    def _forget_if_deleted(self, pod: PodView) -> Outcome:
        if self._store.is_deleted(pod.key):
            self._store.forget_tombstone(pod.key, pod)
            self._ledger.forget_unknown(pod.run_id or "")
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
        self._ledger.record(run_id, acked)

    def _unknown(self, run_id: str) -> None:
        self._ledger.record_unknown(run_id)


def _links(traceparent: str | None) -> list[Link]:
    if not traceparent:
        return []
    ctx = trace.get_current_span(_propagator.extract({"traceparent": traceparent}))
    span_context = ctx.get_span_context()
    return [Link(span_context)] if span_context.is_valid else []
