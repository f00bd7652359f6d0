"""The app handler: from one cached Deployment or StatefulSet (and its replicas) to the platform.

Contract (the Job handler's, `watch.jobhandler`, for a run backed by an app controller):
* `handle(key)` derives the run's state from the controller cached for `key` and its
  replica pods (`sniffer.apps.derive_app`), and sends an update only when it is ahead of
  what the platform last acknowledged (`watch.ledger.RunLedger`, shared with the pod and
  Job paths), with that state as the write's precondition (412: handle again; 409:
  recorded). The run is bound to the controller's uid (the update names the controller
  as the run's "pod"): replicas come and go, the controller stays. A replica's deletion
  (a drain, an eviction) or failure is never terminal: only the controller's deletion or
  scale to zero, its giving up, or a crash loop past the limit end the run.
* A failure the rules judged from a cached replica (`Derived.judged`: a crash loop past
  the limit) is sent only after a quorum read of the live replicas shows the cached
  resourceVersions are still the latest (as the pod handler confirms its judged
  failures): a terminal state cannot be undone. If the cache is behind (or a replica is
  gone) the key retries; the watch event on its way brings the newer view.
* A derivation that asks for a recheck (`recheck_after`, a crash loop not yet past its
  time limit) requeues the key after that delay.
* It answers with one `watch.workers.Outcome`; whatever it learns from the platform is
  recorded in the ledger before it returns.
* A controller with no run id, whose run the platform does not know, or whose run is
  bound to another uid is not reported (a leftover finalizer of ours is released); but
  a run bound to one of the controller's own replicas (`AppIndex.adopts`: bound while
  the kind was not watched) is adopted: reported from the controller like any other,
  its updates naming no pod, so the platform keeps the binding it cannot change.
* Outcome never lost: a tracked controller whose run is open carries Sniffer's finalizer
  `sniffer.io/outcome` (on the controller, not its pods: a replica pod's end is not the
  run's, and a finalizer on it would only hold a drain up), so a controller deleted by a
  user or by the platform's cancel stays, Terminating, until the platform acknowledged
  a terminal state; then the finalizer is released. The handler patches it itself (a
  controller changes a handful of times in its life); a failed patch retries the key.
* A deletion: once through with a deleted controller it forgets the tombstone, the run's
  terminal ledger entry and the controller's replicas (`watch.appindex.AppIndex.forget`).
* Writes (platform updates and finalizer patches) happen only while `is_leader()` is true.
* Spans and metrics carry the workload kind (`sniffer.workload.kind` = "Deployment" or
  "StatefulSet").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from sniffer.apps import derive_app
from sniffer.appview import AppView
from sniffer.kubedecode import NotFound
from sniffer.nullmetrics import NULL_METRICS
from sniffer.platform import PlatformClient
from sniffer.platform_model import Outcome as PlatformOutcome
from sniffer.platform_model import StateUpdate
from sniffer.podview import OUTCOME_FINALIZER, PodView
from sniffer.states import Derived, StatePolicy
from watch.appindex import AppIndex
from watch.handler import HandlerMetrics, PodReader, _links
from watch.ledger import Acked, RunLedger
from watch.store import ObjectStore
from watch.workers import DONE, Outcome, Result

log = logging.getLogger("watch.controller")
tracer = trace.get_tracer("sniffer.watch")


class AppFinalizers(Protocol):
    """The finalizer patches (`watch.appsource.KubeAppFinalizers`)."""

    def add(self, app: AppView) -> Awaitable[bool]: ...
    def release(self, app: AppView) -> Awaitable[bool]: ...


class AppHandler:
    """Brings the platform in line with one cached controller. Constructing starts nothing."""

    def __init__(self, *, store: ObjectStore[AppView], index: AppIndex, ledger: RunLedger,
                 platform: PlatformClient, finalizers: AppFinalizers, enabled: bool,
                 policy: StatePolicy, is_leader: Callable[[], bool] = lambda: True,
                 metrics: HandlerMetrics | None = None,
                 clock: Callable[[], float] = time.time,
                 pods: PodReader | None = None) -> None:
        """`enabled`: finalizer mode (`finalizers.enabled`); off, no finalizer is added
        (a leftover one is still released). `pods` confirms a judged failure (None:
        nothing to confirm against, tests only)."""
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
        self._pods = pods

    async def handle(self, key: str) -> Outcome:
        app = self._store.get(key)
        if app is None:
            return DONE
        if app.run_id is None:
            return await self._not_reported(app)
        acked = (self._ledger.get(app.run_id) or self._ledger.from_seed(app)
                 or await self._refresh(app))
        if acked is None:
            self._metrics.orphan()
            log.warning("controller's run is unknown to the platform; not reporting it",
                        extra={"key": key, "run_id": app.run_id, "kind": app.controller})
            return await self._not_reported(app)
        if (acked.pod_uid and acked.pod_uid != app.uid
                and not self._index.adopts(app, acked.pod_uid)):
            log.warning("run is bound to another uid; not reporting this controller",
                        extra={"key": key, "run_id": app.run_id, "uid": app.uid,
                               "kind": app.controller})
            return await self._not_reported(app)
        if ((app.deletion_timestamp is not None or app.final_state_unknown
             or app.replicas == 0) and not acked.terminal and not acked.cancel_requested):
            # A deletion or scale-down may follow a cancel on the platform not seen yet.
            acked = await self._refresh(app) or acked
        replicas = self._index.replicas(app)
        derived = derive_app(app, replicas, now=self._clock(), policy=self._policy,
                             cancel_requested=acked.cancel_requested)
        assert acked.state is not None
        if acked.terminal or derived.state.rank <= acked.state.rank:
            return await self._nothing_to_send(app, acked, derived)
        if not self._is_leader():
            return Outcome.retry("not the leader")
        if derived.judged and not await self._confirmed(replicas):
            return Outcome.retry("judged failure: the cache is behind the API server")
        return await self._send(app, acked, derived)

    async def _confirmed(self, replicas: list[PodView]) -> bool:
        """Whether every live cached replica is the API server's latest version."""
        if self._pods is None:
            return True
        for pod in replicas:
            if pod.deletion_timestamp is not None or self._index.deleted(pod.key):
                continue
            try:
                obj = await self._pods.get_pod(pod.namespace, pod.name, slim=True)
            except NotFound:
                return False
            meta = obj.get("metadata")
            if not isinstance(meta, dict) or meta.get("resourceVersion") != pod.resource_version:
                return False
        return True

    async def _send(self, app: AppView, acked: Acked, derived: Derived) -> Outcome:
        assert app.run_id is not None
        assert acked.state is not None
        adopted = bool(acked.pod_uid) and acked.pod_uid != app.uid
        update = StateUpdate.derived(app.run_id, derived, None if adopted else app)
        with tracer.start_as_current_span(
                "sniffer.state_change", kind=SpanKind.INTERNAL, links=_links(app.traceparent),
                attributes={"sniffer.key": app.key, "sniffer.run_id": app.run_id,
                            "sniffer.workload.kind": app.controller,
                            "sniffer.state.from": acked.state.value,
                            "sniffer.state.to": derived.state.value,
                            "k8s.namespace.name": app.namespace,
                            f"k8s.{app.controller.lower()}.name": app.name,
                            f"k8s.{app.controller.lower()}.uid": app.uid}):
            self._metrics.sent(derived.state.value)
            result = await self._platform.update_state(update,
                                                       expected_state=acked.state.value)
        if result.outcome is PlatformOutcome.NOT_FOUND or result.run is None:
            self._ledger.record_unknown(app.run_id)
            self._metrics.orphan()
            return await self._not_reported(app)
        self._ledger.record(app.run_id, new := Acked.of(result.run))
        if result.outcome is PlatformOutcome.PRECONDITION_FAILED:
            return Outcome(Result.REQUEUE)
        if result.outcome in (PlatformOutcome.APPLIED, PlatformOutcome.UNCHANGED):
            self._metrics.acknowledged(derived.state.value, self._clock(), None)
        return await self._nothing_to_send(app, new, derived)

    async def _nothing_to_send(self, app: AppView, acked: Acked, derived: Derived) -> Outcome:
        """Put the finalizer where it belongs; forget a handled deletion; recheck."""
        held = OUTCOME_FINALIZER in app.finalizers
        deleted = self._store.is_deleted(app.key)
        if acked.terminal:
            if held and not deleted:
                return await self._patch(app, release=True)
            return self._forget_if_deleted(app, terminal=True)
        if deleted:
            return self._forget_if_deleted(app)
        if (self._enabled and not held and app.deletion_timestamp is None
                and not derived.state.is_terminal):
            outcome = await self._patch(app, release=False)
            if outcome is not DONE:
                return outcome
        if derived.recheck_after is not None:
            return Outcome(Result.REQUEUE_AFTER, delay=derived.recheck_after)
        return DONE

    async def _not_reported(self, app: AppView) -> Outcome:
        if OUTCOME_FINALIZER in app.finalizers and not self._store.is_deleted(app.key):
            return await self._patch(app, release=True)
        return self._forget_if_deleted(app)

    async def _patch(self, app: AppView, *, release: bool) -> Outcome:
        if not self._is_leader():
            return Outcome.retry("not the leader")
        patch = self._finalizers.release if release else self._finalizers.add
        if await patch(app):
            self._metrics.finalizer("removed" if release else "added")
        return DONE

    def _forget_if_deleted(self, app: AppView, *, terminal: bool = False) -> Outcome:
        if self._store.is_deleted(app.key):
            self._store.forget_tombstone(app.key, app)
            self._index.forget(app)
            if app.run_id is not None:
                if terminal:
                    self._ledger.forget(app.run_id)
                else:
                    self._ledger.forget_unknown(app.run_id)
        return DONE

    async def _refresh(self, app: AppView) -> Acked | None:
        assert app.run_id is not None
        run = await self._platform.get_run(app.run_id)
        if run is None:
            self._ledger.record_unknown(app.run_id)
            return None
        self._ledger.record(app.run_id, acked := Acked.of(run))
        return acked
