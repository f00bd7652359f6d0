"""The watcher's metrics: implementations of the reflector's, work queue's, controller's and
platform client's metric Protocols, plus the gauges read from the running watcher.

Contract:
* `WatchTelemetry` structurally implements `watch.reflector.ReflectorMetrics`
  (`reflector`), `watch.workqueue.QueueMetrics` (`queue` for the platform queue,
  `finalizer_queue` for the finalizer loop's, under ``sniffer.queue.*`` and
  ``sniffer.finalizer_queue.*``), `watch.controller.ControllerMetrics` (`controller`) and
  `sniffer.platform.PlatformMetrics` (`platform`); it imports none of them (layers point
  one way: watch → sniffer core).
* Every hot-path call is a dict update or a deque append (see `instruments`): well under a
  microsecond, no lock, no allocation after the first call with given attribute values.
* Gauges that need the watcher's state (cached pods, finalizers held, freshness, leader,
  unfinished work) are sampled *on the event loop* at collection time: `observe(watcher)`
  (the Watcher's observe hook) remembers the loop; the reader's thread asks the loop for a
  snapshot and waits at most `SAMPLE_TIMEOUT_S`, else reports the previous snapshot. So
  the watcher's single-threaded structures are never read from another thread.
* `change.latency` origin: the pod status's transition time has one-second resolution, so
  the change is placed at the middle of that second, but never after Sniffer observed it;
  without a status time the observation time is the origin.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.metrics import Meter, Observation

from sniffer.podview import OUTCOME_FINALIZER
from sniffer.telemetry.instruments import Counts, Histogram, Registry

log = logging.getLogger(__name__)

SAMPLE_TIMEOUT_S = 1.0
_SAMPLE_REUSE_S = 0.25
_STATUS_RESOLUTION_S = 1.0


class WatcherView(Protocol):
    """The parts of `watch.app.Watcher` the gauges read (any may still be None)."""

    store: Any
    queue: Any
    controller: Any
    elector: Any
    # `finalizer_queue` is read too when present (test doubles may lack it).


@dataclass(frozen=True, slots=True)
class Snapshot:
    cached_pods: int = 0
    finalizers_held: int = 0
    freshness_s: float = 0.0
    acked_runs: int = 0
    leader: bool = False
    unfinished_work_s: float = 0.0
    longest_running_s: float = 0.0
    finalizer_unfinished_work_s: float = 0.0
    finalizer_longest_running_s: float = 0.0


def error_class(reason: str) -> str:
    """A bounded error class for a controller's free-text drop reason."""
    text = reason.lower()
    for prefix, cls in (("platform unavailable", "platform_unavailable"),
                        ("platform rejected", "platform_rejected"),
                        ("kubernetes api", "kubernetes_api"),
                        ("not the leader", "not_leader")):
        if text.startswith(prefix):
            return cls
    return "other"


def latency_origin(observed_at: float, changed_at: float | None) -> tuple[float, str]:
    """When the change happened (unix s) and whether the pod status or the observation
    says so."""
    if changed_at is not None:
        estimate = changed_at + _STATUS_RESOLUTION_S / 2
        if estimate < observed_at:
            return estimate, "status"
    return observed_at, "observed"


class PlatformTelemetry:
    """`sniffer.platform.PlatformMetrics`: duration and outcome of each platform call."""

    def __init__(self, registry: Registry) -> None:
        self._duration: Histogram = registry.histogram(
            "sniffer.platform.request.duration",
            keys=("http.request.method", "url.template", "http.response.status_code",
                  "error.type"))
        self._updates: Counts = registry.counts("sniffer.platform.updates",
                                                keys=("sniffer.update.outcome",))

    def request(self, method: str, route: str, status: int | None, error: str | None,
                seconds: float) -> None:
        if error is None and status is not None and status >= 400:
            error = str(status)
        self._duration.record(seconds, (method, route, status, error))

    def update(self, outcome: str) -> None:
        self._updates.inc(outcome)


class _Reflector:
    def __init__(self, registry: Registry) -> None:
        self._events = registry.counts("sniffer.watch.events", keys=("sniffer.watch.event.type",))
        self._relists = registry.counts("sniffer.watch.relists", keys=("sniffer.relist.cause",))
        self._restarts = registry.counts("sniffer.watch.restarts",
                                         keys=("sniffer.watch.restart.cause",))
        self._malformed = registry.counts("sniffer.watch.malformed",
                                          keys=("sniffer.malformed.where",))

    def event(self, kind: str) -> None:
        self._events.inc(kind)

    def relist(self, cause: str) -> None:
        self._relists.inc(cause)

    def watch_restart(self, cause: str) -> None:
        self._restarts.inc(cause)

    def malformed(self, where: str) -> None:
        self._malformed.inc(where)


class _Queue:
    def __init__(self, registry: Registry, prefix: str = "sniffer.queue") -> None:
        self._depth = registry.value(f"{prefix}.depth")
        self._adds = registry.counts(f"{prefix}.adds")
        self._retries = registry.counts(f"{prefix}.retries")
        self._queued = registry.histogram(f"{prefix}.duration")
        self._work = registry.histogram(f"{prefix}.work_duration")
        # Reported by the queue when the sampler asks it (update_unfinished_work); the
        # gauges read them through the snapshot (see WatchTelemetry).
        self.unfinished_s = 0.0
        self.longest_s = 0.0

    def add(self) -> None:
        self._adds.inc()

    def depth(self, depth: int) -> None:
        self._depth.current = depth

    def get(self, queued_s: float) -> None:
        self._queued.record(queued_s)

    def done(self, work_s: float) -> None:
        self._work.record(work_s)

    def retry(self) -> None:
        self._retries.inc()

    def unfinished_work(self, seconds: float) -> None:
        self.unfinished_s = seconds

    def longest_running_processor(self, seconds: float) -> None:
        self.longest_s = seconds


class _Controller:
    def __init__(self, registry: Registry, clock: Any = time.time) -> None:
        self._clock = clock
        self._outcomes = registry.counts("sniffer.handler.outcomes", keys=("sniffer.outcome",))
        self._sent = registry.counts("sniffer.changes.sent", keys=("sniffer.state",))
        self._acked = registry.counts("sniffer.changes.acknowledged", keys=("sniffer.state",))
        self._dropped = registry.counts("sniffer.changes.dropped",
                                        keys=("k8s.pod.phase", "error.type"))
        self._latency = registry.histogram("sniffer.change.latency",
                                           keys=("sniffer.state", "sniffer.latency.origin"))
        self._finalizer = registry.counts("sniffer.finalizer.operations",
                                          keys=("sniffer.finalizer.operation",))
        self._orphans = registry.counts("sniffer.runs.orphaned")
        self._underivable = registry.counts("sniffer.pods.underivable")

    def outcome(self, result: str) -> None:
        self._outcomes.inc(result)

    def sent(self, state: str) -> None:
        self._sent.inc(state)

    def acknowledged(self, state: str, observed_at: float, changed_at: float | None) -> None:
        self._acked.inc(state)
        origin, source = latency_origin(observed_at, changed_at)
        self._latency.record(max(0.0, self._clock() - origin), (state, source))

    def dropped(self, state: str, reason: str) -> None:
        self._dropped.inc((state, error_class(reason)))

    def finalizer(self, op: str) -> None:
        self._finalizer.inc(op)

    def orphan(self) -> None:
        self._orphans.inc()

    def underivable(self) -> None:
        self._underivable.inc()


class WatchTelemetry:
    """All of the watcher's metric sinks; see the module docstring."""

    def __init__(self, meter: Meter, *, leader_election: bool = True) -> None:
        registry = Registry(meter)
        self.registry = registry
        self.reflector = _Reflector(registry)
        self.queue = _Queue(registry)
        self.finalizer_queue = _Queue(registry, "sniffer.finalizer_queue")
        self.controller = _Controller(registry)
        self.platform = PlatformTelemetry(registry)
        self._leader_election = leader_election
        self._watcher: WatcherView | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._last = Snapshot(leader=not leader_election)
        self._last_at = 0.0
        self._lock = threading.Lock()
        for name, read in (
                ("sniffer.freshness", lambda s: s.freshness_s),
                ("sniffer.cache.pods", lambda s: s.cached_pods),
                ("sniffer.cache.runs", lambda s: s.acked_runs),
                ("sniffer.finalizers.held", lambda s: s.finalizers_held),
                ("sniffer.leader.status", lambda s: int(s.leader)),
                ("sniffer.queue.unfinished_work", lambda s: s.unfinished_work_s),
                ("sniffer.queue.longest_running_processor", lambda s: s.longest_running_s),
                ("sniffer.finalizer_queue.unfinished_work",
                 lambda s: s.finalizer_unfinished_work_s),
                ("sniffer.finalizer_queue.longest_running_processor",
                 lambda s: s.finalizer_longest_running_s)):
            registry.gauge(name, self._observer(read))

    def _observer(self, read: Any) -> Any:
        def observe() -> Iterable[Observation]:
            return (Observation(read(self.snapshot())),)
        return observe

    # -- wiring (called on the event loop) --------------------------------------------------

    def observe(self, watcher: WatcherView) -> None:
        """The Watcher's `observe` hook: remember it and its event loop."""
        self._watcher = watcher
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    # -- sampling ---------------------------------------------------------------------------

    def _sample_now(self) -> Snapshot:
        """Read the watcher's state. Caller duty: run on the watcher's event loop."""
        w = self._watcher
        if w is None:
            return self._last
        store, queue, controller, elector = w.store, w.queue, w.controller, w.elector
        pods = held = 0
        if store is not None:
            pods = len(store)
            held = sum(1 for pod in store if OUTCOME_FINALIZER in pod.finalizers)
        if queue is not None:
            queue.update_unfinished_work()  # reports to self.queue, synchronously
        finalizer_queue = getattr(w, "finalizer_queue", None)
        if finalizer_queue is not None:
            finalizer_queue.update_unfinished_work()  # to self.finalizer_queue
        freshness, acked = 0.0, 0
        if controller is not None:
            freshness = controller.oldest_unhandled_age()
            acked = controller.acked_runs
        # Without leader election every replica writes, so it counts as the leader.
        leader = bool(elector.is_leader) if elector is not None else True
        return Snapshot(pods, held, freshness, acked, leader, self.queue.unfinished_s,
                        self.queue.longest_s, self.finalizer_queue.unfinished_s,
                        self.finalizer_queue.longest_s)

    def final_sample(self) -> None:
        """Take a last snapshot now, on the event loop, for the export at exit (after the
        loop is gone the gauges report the last snapshot). Caller duty: call it on the
        watcher's loop once `Watcher.run` returned."""
        # No lock: a reader thread holding it may be waiting for this very loop.
        snap = self._sample_now()
        self._last, self._last_at = snap, time.monotonic()

    def snapshot(self) -> Snapshot:
        """A recent snapshot, taken on the event loop (any thread may call)."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_at < _SAMPLE_REUSE_S:
                return self._last
            loop = self._loop
            if loop is None:
                return self._last
            try:
                if threading.get_ident() == self._loop_thread:
                    snap = self._sample_now()
                elif loop.is_running():
                    future: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

                    def take() -> None:
                        try:
                            future.set_result(self._sample_now())
                        except Exception as exc:  # noqa: BLE001 - raised in the caller
                            future.set_exception(exc)

                    loop.call_soon_threadsafe(take)
                    snap = future.result(timeout=SAMPLE_TIMEOUT_S)
                else:
                    return self._last
            except concurrent.futures.TimeoutError:
                return self._last  # the loop is busy: keep the last values
            except Exception:
                log.debug("sampling the watcher failed", exc_info=True)
                return self._last  # e.g. the loop closed meanwhile
            self._last, self._last_at = snap, now
            return snap
