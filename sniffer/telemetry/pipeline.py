"""The watcher's metrics: implementations of the reflector's, work queue's, controller's and
platform client's metric Protocols, plus the gauges read from the running watcher.

Contract:
* `WatchTelemetry` structurally implements `watch.reflector.ReflectorMetrics`
  (`reflector`, `job_reflector`, `app_reflectors[kind]`: one series set, told apart by
  ``sniffer.workload.kind``), `watch.workqueue.QueueMetrics` (`queue_metrics(name)`:
  `queue` ``pods``, `job_queue` ``jobs``, `app_queues[kind]` ``deployments`` and
  ``statefulsets``, `finalizer_queue` ``finalizers``: one ``sniffer.queue.*`` set, told
  apart by ``sniffer.queue.name`` as client-go labels each queue by its name),
  `watch.controller.ControllerMetrics` (`controller`, `job_controller`,
  `app_controllers[kind]`: told apart by ``sniffer.workload.kind``) and
  `sniffer.platform.PlatformMetrics` (`platform`); it imports none of them (layers point
  one way: watch → sniffer core).
* Every hot-path call is a dict update or a deque append (see `instruments`): well under a
  microsecond, no lock, no allocation after the first call with given attribute values.
* Gauges that need the watcher's state (cached pods, finalizers held, freshness, leader,
  unfinished work of each queue in `QUEUE_ATTRIBUTES`) are sampled *on the event loop* at
  collection time: `observe(watcher)` (the Watcher's observe hook) remembers the loop; the
  reader's thread asks the loop for a snapshot and waits at most `SAMPLE_TIMEOUT_S`, else
  reports the previous one, so the watcher's structures are never read from another thread.
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

from sniffer.appview import APP_CONTROLLERS
from sniffer.podview import OUTCOME_FINALIZER
from sniffer.telemetry.instruments import Counts, Histogram, Registry

log = logging.getLogger(__name__)

SAMPLE_TIMEOUT_S = 1.0
QUEUE_ATTRIBUTES = {"queue": "pods", "job_queue": "jobs", "deployment_queue": "deployments",
                    "statefulset_queue": "statefulsets", "finalizer_queue": "finalizers"}
"""The watcher's attributes holding a work queue, and each queue's metric name: the
sampler reports their unfinished work. A new queue is added here (and to the Watcher)."""
_SAMPLE_REUSE_S = 0.25
_STATUS_RESOLUTION_S = 1.0


class WatcherView(Protocol):
    """The parts of `watch.app.Watcher` the gauges read (any may still be None)."""

    store: Any
    queue: Any
    controller: Any
    elector: Any
    # The queues of `QUEUE_ATTRIBUTES` are read when present (test doubles may lack them).


@dataclass(frozen=True, slots=True)
class Snapshot:
    cached_pods: int = 0
    finalizers_held: int = 0
    freshness_s: float = 0.0
    acked_runs: int = 0
    leader: bool = False


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


class _ReflectorInstruments:
    """The reflector's instruments, shared by every watched kind's sink."""

    def __init__(self, registry: Registry) -> None:
        kind = "sniffer.workload.kind"
        self.events = registry.counts("sniffer.watch.events",
                                      keys=(kind, "sniffer.watch.event.type"))
        self.relists = registry.counts("sniffer.watch.relists",
                                       keys=(kind, "sniffer.relist.cause"))
        self.restarts = registry.counts("sniffer.watch.restarts",
                                        keys=(kind, "sniffer.watch.restart.cause"))
        self.malformed = registry.counts("sniffer.watch.malformed",
                                         keys=(kind, "sniffer.malformed.where"))
        self.delivery = registry.histogram("sniffer.watch.delivery", keys=(kind,))


class _Reflector:
    """`watch.reflector.ReflectorMetrics` of the reflector of one kind (``Pod``, ``Job``)."""

    def __init__(self, instruments: _ReflectorInstruments, kind: str) -> None:
        self._i = instruments
        self._kind = kind

    def event(self, kind: str) -> None:
        self._i.events.inc((self._kind, kind))

    def relist(self, cause: str) -> None:
        self._i.relists.inc((self._kind, cause))

    def watch_restart(self, cause: str) -> None:
        self._i.restarts.inc((self._kind, cause))

    def malformed(self, where: str) -> None:
        self._i.malformed.inc((self._kind, where))

    def delivered(self, seconds: float) -> None:
        self._i.delivery.record(seconds, self._kind)


class _QueueInstruments:
    """The ``sniffer.queue.*`` instruments, shared by every queue's sink."""

    def __init__(self, registry: Registry) -> None:
        self.sinks: dict[str, _Queue] = {}
        keys = ("sniffer.queue.name",)
        self.adds = registry.counts("sniffer.queue.adds", keys=keys)
        self.retries = registry.counts("sniffer.queue.retries", keys=keys)
        self.queued = registry.histogram("sniffer.queue.duration",
                                         keys=("sniffer.queue.name", "sniffer.priority"))
        self.work = registry.histogram("sniffer.queue.work_duration", keys=keys)
        registry.gauge("sniffer.queue.depth", lambda: [
            Observation(q.current_depth, q.attributes) for q in list(self.sinks.values())])


class _Queue:
    """`watch.workqueue.QueueMetrics` for the queue called `name`."""

    def __init__(self, instruments: _QueueInstruments, name: str) -> None:
        self.name = name
        self.attributes = {"sniffer.queue.name": name}
        self._i = instruments
        self._priority_keys: dict[Any, tuple[str, str]] = {}  # built once per priority
        self.current_depth = 0
        # A queue's counters exist from its start, at 0 (as client-go's do).
        instruments.adds.inc(name, 0)
        instruments.retries.inc(name, 0)
        # Reported by the queue when the sampler asks it (update_unfinished_work); the
        # gauges read them through the snapshot (see WatchTelemetry).
        self.unfinished_s = 0.0
        self.longest_s = 0.0

    def add(self) -> None:
        self._i.adds.inc(self.name)

    def depth(self, depth: int) -> None:
        self.current_depth = depth

    def get(self, queued_s: float, priority: Any) -> None:
        key = self._priority_keys.get(priority)
        if key is None:  # `watch.workqueue.Priority` (not imported: layers point one way)
            label = str(getattr(priority, "name", priority)).lower()
            key = self._priority_keys[priority] = (self.name, label)
        self._i.queued.record(queued_s, key)

    def done(self, work_s: float) -> None:
        self._i.work.record(work_s, self.name)

    def retry(self) -> None:
        self._i.retries.inc(self.name)

    def unfinished_work(self, seconds: float) -> None:
        self.unfinished_s = seconds

    def longest_running_processor(self, seconds: float) -> None:
        self.longest_s = seconds


class _ControllerInstruments:
    """The handler's instruments, shared by every workload kind's sink."""

    def __init__(self, registry: Registry) -> None:
        kind = "sniffer.workload.kind"
        self.outcomes = registry.counts("sniffer.handler.outcomes",
                                        keys=(kind, "sniffer.outcome"))
        self.sent = registry.counts("sniffer.changes.sent", keys=(kind, "sniffer.state"))
        self.acked = registry.counts("sniffer.changes.acknowledged",
                                     keys=(kind, "sniffer.state"))
        self.dropped = registry.counts("sniffer.changes.dropped",
                                       keys=(kind, "k8s.pod.phase", "error.type"))
        self.latency = registry.histogram(
            "sniffer.change.latency", keys=(kind, "sniffer.state", "sniffer.latency.origin"))
        self.finalizer = registry.counts("sniffer.finalizer.operations",
                                         keys=(kind, "sniffer.finalizer.operation"))
        self.orphans = registry.counts("sniffer.runs.orphaned", keys=(kind,))
        self.underivable = registry.counts("sniffer.pods.underivable")


class _Controller:
    """`watch.handler.HandlerMetrics` of one workload kind's path (``Pod`` or ``Job``):
    every series carries ``sniffer.workload.kind``, as the state-change spans do."""

    def __init__(self, instruments: _ControllerInstruments, kind: str,
                 clock: Any = time.time) -> None:
        self._i = instruments
        self._kind = kind
        self._clock = clock
        # The counters an operator alerts on exist from the start, at 0.
        instruments.orphans.inc(kind, 0)
        instruments.finalizer.inc((kind, "added"), 0)
        instruments.finalizer.inc((kind, "removed"), 0)

    def outcome(self, result: str) -> None:
        self._i.outcomes.inc((self._kind, result))

    def sent(self, state: str) -> None:
        self._i.sent.inc((self._kind, state))

    def acknowledged(self, state: str, observed_at: float, changed_at: float | None) -> None:
        self._i.acked.inc((self._kind, state))
        origin, source = latency_origin(observed_at, changed_at)
        self._i.latency.record(max(0.0, self._clock() - origin), (self._kind, state, source))

    def dropped(self, state: str, reason: str) -> None:
        self._i.dropped.inc((self._kind, state, error_class(reason)))

    def finalizer(self, op: str) -> None:
        self._i.finalizer.inc((self._kind, op))

    def orphan(self) -> None:
        self._i.orphans.inc(self._kind)

    def underivable(self) -> None:
        self._i.underivable.inc()


class WatchTelemetry:
    """All of the watcher's metric sinks; see the module docstring."""

    def __init__(self, meter: Meter, *, leader_election: bool = True) -> None:
        registry = Registry(meter)
        self.registry = registry
        reflecting = _ReflectorInstruments(registry)
        self.reflector = _Reflector(reflecting, "Pod")
        self.job_reflector = _Reflector(reflecting, "Job")
        self.app_reflectors = {kind: _Reflector(reflecting, kind) for kind in APP_CONTROLLERS}
        self._queues = _QueueInstruments(registry)
        self.queue = self.queue_metrics(QUEUE_ATTRIBUTES["queue"])
        self.job_queue = self.queue_metrics(QUEUE_ATTRIBUTES["job_queue"])
        self.app_queues = {k: self.queue_metrics(f"{k.lower()}s") for k in APP_CONTROLLERS}
        self.finalizer_queue = self.queue_metrics(QUEUE_ATTRIBUTES["finalizer_queue"])
        handler = _ControllerInstruments(registry)
        self.controller = _Controller(handler, "Pod")
        self.job_controller = _Controller(handler, "Job")
        self.app_controllers = {kind: _Controller(handler, kind) for kind in APP_CONTROLLERS}
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
                ("sniffer.leader.status", lambda s: int(s.leader))):
            registry.gauge(name, self._observer(read))
        for name, field in (("sniffer.queue.unfinished_work", "unfinished_s"),
                            ("sniffer.queue.longest_running_processor", "longest_s")):
            registry.gauge(name, self._queue_observer(field))

    def queue_metrics(self, name: str) -> _Queue:
        """The `QueueMetrics` of the queue called `name` (one sink per name)."""
        sink = self._queues.sinks.get(name)
        if sink is None:
            sink = self._queues.sinks[name] = _Queue(self._queues, name)
        return sink

    def _observer(self, read: Any) -> Any:
        def observe() -> Iterable[Observation]:
            return (Observation(read(self.snapshot())),)
        return observe

    def _queue_observer(self, field: str) -> Any:
        def observe() -> Iterable[Observation]:
            self.snapshot()  # has each queue report its unfinished work to its sink
            return [Observation(getattr(sink, field), sink.attributes)
                    for sink in list(self._queues.sinks.values())]
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
        store, controller, elector = w.store, w.controller, w.elector
        pods = held = 0
        if store is not None:
            pods = len(store)
            held = sum(1 for pod in store if OUTCOME_FINALIZER in pod.finalizers)
        for attribute in QUEUE_ATTRIBUTES:
            queue = getattr(w, attribute, None)
            if queue is not None:
                queue.update_unfinished_work()  # reports to its sink, synchronously
        freshness, acked = 0.0, 0
        if controller is not None:
            freshness = controller.oldest_unhandled_age()
            acked = controller.acked_runs
        # Without leader election every replica writes, so it counts as the leader.
        leader = bool(elector.is_leader) if elector is not None else True
        return Snapshot(pods, held, freshness, acked, leader)

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
