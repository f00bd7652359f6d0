"""The metric and span catalogue: every instrument Sniffer registers, in one table.

Contract:
* `METRICS` is the single source of each instrument's name, kind, unit, attribute keys and
  meaning; the code creates instruments only through `instrument()` below, with a name
  from this table, so what is exported is what is listed. docs/telemetry.md repeats the
  table for readers, and tests/test_telemetry_docs.py keeps the two in step.
* `SPANS` lists every span name Sniffer's code starts (the platform client's spans are
  named ``"{method} {route}"``, as HTTP semantic conventions ask).
* Names follow OpenTelemetry conventions: dotted, lower case, the unit in ``unit`` and never
  in the name; units are UCUM (``s`` for durations, ``{thing}`` annotations for counts).
  Attribute keys reuse semantic-convention keys where one exists (``http.*``,
  ``url.template``, ``error.type``, ``k8s.*``) and are namespaced ``sniffer.*`` otherwise.
* Kinds are data-model kinds: ``counter`` (a monotonic sum), ``gauge`` and ``histogram``.
  Whether the code observes a value (observable instrument) or records it is an
  implementation choice, not part of the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]
Component = Literal["watch", "reconcile", "both"]

# Seconds: from a few milliseconds (one platform call) to many minutes (an outage).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0)
# In-process steps (decode, store, enqueue): tens of microseconds, up to event-loop stalls.
DELIVERY_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0)
# A reconcile pass lists everything: seconds to minutes.
PASS_BUCKETS_S: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: Kind
    unit: str
    attributes: tuple[str, ...]
    meaning: str
    component: Component
    buckets: tuple[float, ...] | None = None
    """Explicit bucket boundaries (histograms only)."""


def _m(name: str, kind: Kind, unit: str, attributes: tuple[str, ...], meaning: str,
       component: Component, buckets: tuple[float, ...] | None = None) -> Metric:
    if (kind == "histogram") != (buckets is not None):
        raise ValueError(f"{name}: histograms, and only they, have buckets")
    return Metric(name, kind, unit, attributes, meaning, component, buckets)


METRICS: tuple[Metric, ...] = (
    # -- reflector ------------------------------------------------------------------------
    _m("sniffer.watch.events", "counter", "{event}",
       ("sniffer.workload.kind", "sniffer.watch.event.type"),
       "Watch events received, by watched kind and type (ADDED, MODIFIED, DELETED, "
       "BOOKMARK, ERROR).", "watch"),
    _m("sniffer.watch.relists", "counter", "{relist}",
       ("sniffer.workload.kind", "sniffer.relist.cause"),
       "Full LISTs, by watched kind and cause (initial, gone = 410, expired continue token, ...).",
       "watch"),
    _m("sniffer.watch.restarts", "counter", "{restart}",
       ("sniffer.workload.kind", "sniffer.watch.restart.cause"),
       "Watch streams reopened without a relist, by watched kind and cause (timeout, "
       "stalled, error, ...).",
       "watch"),
    _m("sniffer.watch.malformed", "counter", "{object}",
       ("sniffer.workload.kind", "sniffer.malformed.where"),
       "Malformed watch lines, events or objects that were skipped, by watched kind.", "watch"),
    _m("sniffer.watch.delivery", "histogram", "s", ("sniffer.workload.kind",),
       "Watch delivery: from the moment a watch event's bytes were framed off the stream "
       "to its object being in the cache and its key queued (decode, store, enqueue), by "
       "watched kind.", "watch",
       DELIVERY_BUCKETS_S),
    # -- work queues (client-go's workqueue metric set, one series per queue) ---------------
    _m("sniffer.queue.depth", "gauge", "{key}", ("sniffer.queue.name",),
       "Keys waiting in a work queue (not those in flight or delayed), by queue (pods, "
       "jobs, finalizers).", "watch"),
    _m("sniffer.queue.adds", "counter", "{key}", ("sniffer.queue.name",),
       "Keys added to a work queue (an add that coalesced with a waiting key is not "
       "counted).", "watch"),
    _m("sniffer.queue.retries", "counter", "{key}", ("sniffer.queue.name",),
       "Rate-limited or delayed re-adds (retries after a transient failure, rechecks).",
       "watch"),
    _m("sniffer.queue.duration", "histogram", "s", ("sniffer.queue.name", "sniffer.priority"),
       "Queue wait: from a key's add to a worker taking it, by queue and by the highest "
       "priority it was added with (live: a watch event or retry; list: an initial list "
       "or relist).", "watch", LATENCY_BUCKETS_S),
    _m("sniffer.queue.work_duration", "histogram", "s", ("sniffer.queue.name",),
       "Time a worker spent on one key (the handler, with its platform call or patch).",
       "watch", LATENCY_BUCKETS_S),
    _m("sniffer.queue.unfinished_work", "gauge", "s", ("sniffer.queue.name",),
       "Sum of how long the keys in flight have been processed so far (stuck workers "
       "make it grow).", "watch"),
    _m("sniffer.queue.longest_running_processor", "gauge", "s", ("sniffer.queue.name",),
       "How long the longest-running key in flight has been processed.", "watch"),
    # -- controller -----------------------------------------------------------------------
    _m("sniffer.handler.outcomes", "counter", "{outcome}",
       ("sniffer.workload.kind", "sniffer.outcome"),
       "Handler results, one per processed key: done, requeue, requeue_after, retry, drop; "
       "by workload kind (Pod: the pod path, Job: the Job path).",
       "watch"),
    _m("sniffer.changes.sent", "counter", "{change}",
       ("sniffer.workload.kind", "sniffer.state"),
       "State changes sent to the platform (attempts, so retries count again), by workload "
       "kind and the state sent.", "watch"),
    _m("sniffer.changes.acknowledged", "counter", "{change}",
       ("sniffer.workload.kind", "sniffer.state"),
       "State changes the platform acknowledged (applied, or already had), by workload kind "
       "and state.",
       "watch"),
    _m("sniffer.changes.dropped", "counter", "{change}",
       ("sniffer.workload.kind", "k8s.pod.phase", "error.type"),
       "Changes given up after the retry limit (the reconciler repairs them), by workload "
       "kind, the pod's phase (\"job\" for a Job) and the class of the last error.", "watch"),
    _m("sniffer.change.latency", "histogram", "s",
       ("sniffer.workload.kind", "sniffer.state", "sniffer.latency.origin"),
       "End to end: from the change (the pod status's transition time, else the time Sniffer "
       "observed it: sniffer.latency.origin = status or observed) to the platform's "
       "acknowledgement.", "watch", LATENCY_BUCKETS_S),
    _m("sniffer.freshness", "gauge", "s", (),
       "Age of the oldest change observed but not yet handled (0 when caught up): the "
       "freshness SLO signal.", "watch"),
    _m("sniffer.cache.pods", "gauge", "{pod}", (), "Tracked pods in the watcher's cache.",
       "watch"),
    _m("sniffer.cache.runs", "gauge", "{run}", (),
       "Runs whose acknowledged state the watcher remembers.", "watch"),
    _m("sniffer.finalizers.held", "gauge", "{pod}", (),
       "Cached pods that carry Sniffer's finalizer (sniffer.io/outcome).", "watch"),
    _m("sniffer.finalizer.operations", "counter", "{operation}",
       ("sniffer.workload.kind", "sniffer.finalizer.operation"),
       "Finalizer patches sent: added to or removed from a pod or a Job, by workload kind "
       "(idempotent patches; one may repeat while the cache lags).", "watch"),
    _m("sniffer.leader.status", "gauge", "1", (),
       "1 while this replica holds the lease (or leader election is off), else 0.", "watch"),
    _m("sniffer.runs.orphaned", "counter", "{object}", ("sniffer.workload.kind",),
       "Tracked pods or Jobs whose run the platform does not know (not reported), by "
       "workload kind.", "watch"),
    _m("sniffer.pods.underivable", "counter", "{pod}", (),
       "Pods whose state could not be derived (left to the reconciler).", "watch"),
    # -- platform client (both programs) ---------------------------------------------------
    _m("sniffer.platform.request.duration", "histogram", "s",
       ("http.request.method", "url.template", "http.response.status_code", "error.type"),
       "Platform API calls: duration and outcome (status code; error.type for timeouts, "
       "connection errors and error statuses).", "both", LATENCY_BUCKETS_S),
    _m("sniffer.platform.updates", "counter", "{update}", ("sniffer.update.outcome",),
       "Conditional state updates by result: applied, unchanged, conflict, "
       "precondition_failed, not_found.", "both"),
    # -- reconciler -----------------------------------------------------------------------
    _m("sniffer.reconcile.duration", "histogram", "s", ("sniffer.reconcile.result",),
       "Duration of one reconcile pass, by result (ok, failed, interrupted).", "reconcile",
       PASS_BUCKETS_S),
    _m("sniffer.reconcile.pods", "gauge", "{pod}", (),
       "Tracked pods listed by the last pass.", "reconcile"),
    _m("sniffer.reconcile.runs", "gauge", "{run}", (),
       "Non-terminal runs listed by the last pass.", "reconcile"),
    _m("sniffer.reconcile.mismatches", "counter", "{mismatch}", ("sniffer.mismatch.kind",),
       "Mismatches found between pods and runs, by kind.", "reconcile"),
    _m("sniffer.reconcile.repairs", "counter", "{repair}", ("sniffer.mismatch.kind",),
       "Mismatches repaired, by kind.", "reconcile"),
    _m("sniffer.reconcile.repair_failures", "counter", "{repair}",
       ("sniffer.mismatch.kind", "error.type"),
       "Repairs that failed, by kind (lookup: a run that could not be read) and error "
       "class.", "reconcile"),
    _m("sniffer.reconcile.last_success", "gauge", "s", (),
       "Unix time at which the last successful pass ended.", "reconcile"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
if len(BY_NAME) != len(METRICS):  # pragma: no cover - a typo in the table above
    raise AssertionError("duplicate metric name in the catalogue")


@dataclass(frozen=True, slots=True)
class Span:
    name: str
    kind: str
    parent: str
    attributes: tuple[str, ...]
    meaning: str


SPANS: tuple[Span, ...] = (
    Span("sniffer.state_change", "INTERNAL",
         "root; linked to the pod's (or Job's) sniffer.io/traceparent",
         ("sniffer.key", "sniffer.run_id", "sniffer.workload.kind", "sniffer.state.from",
          "sniffer.state.to", "sniffer.attempt", "k8s.namespace.name", "k8s.pod.name",
          "k8s.pod.uid", "sniffer.job.attempts", "k8s.job.name", "k8s.job.uid"),
         "One state change sent by the watcher, around its platform call."),
    Span("PATCH /api/v1/runs/{id}", "CLIENT", "sniffer.state_change or sniffer.reconcile.repair",
         ("http.request.method", "url.template", "server.address", "server.port",
          "http.response.status_code", "error.type"),
         "The conditional state update; W3C traceparent goes to the platform."),
    Span("GET /api/v1/runs/{id}", "CLIENT", "root, or a reconcile span",
         ("http.request.method", "url.template", "server.address", "server.port",
          "http.response.status_code", "error.type"),
         "Read one run (watcher: a run not seen before; reconciler: re-read before a repair)."),
    Span("GET /api/v1/runs", "CLIENT", "root (watcher seed) or sniffer.reconcile.list_runs",
         ("http.request.method", "url.template", "server.address", "server.port",
          "http.response.status_code", "error.type"),
         "One page of the run listing."),
    Span("POST /api/v1/runs", "CLIENT", "root",
         ("http.request.method", "url.template", "server.address", "server.port",
          "http.response.status_code", "error.type"),
         "Create a run (tests and tools only)."),
    Span("sniffer.reconcile.pass", "INTERNAL", "root: one trace per pass",
         ("sniffer.dry_run", "sniffer.only", "sniffer.pods_listed", "sniffer.runs_listed",
          "sniffer.runs_looked_up", "sniffer.mismatches", "sniffer.repaired", "sniffer.failed",
          "sniffer.skipped", "sniffer.interrupted", "sniffer.exit_code"),
         "One reconcile pass; status ERROR when it failed."),
    Span("sniffer.reconcile.list_pods", "INTERNAL", "sniffer.reconcile.pass",
         ("sniffer.pods",), "List every tracked pod."),
    Span("sniffer.reconcile.list_jobs", "INTERNAL", "sniffer.reconcile.pass",
         ("sniffer.jobs",),
         "List every tracked batch/v1 Job (when `kube.kinds` includes jobs)."),
    Span("sniffer.reconcile.list_runs", "INTERNAL", "sniffer.reconcile.pass",
         ("sniffer.runs_listed", "sniffer.runs_looked_up"),
         "List every non-terminal run, then read the runs whose state matters one by one."),
    Span("sniffer.reconcile.diff", "INTERNAL", "sniffer.reconcile.pass",
         ("sniffer.mismatches",), "Compare the two listings (pure)."),
    Span("sniffer.reconcile.repair", "INTERNAL", "sniffer.reconcile.pass",
         ("sniffer.run_id", "sniffer.mismatch", "k8s.namespace.name", "k8s.pod.name",
          "sniffer.repair.outcome"),
         "Re-read and repair one mismatch (status ERROR when it failed)."),
)
