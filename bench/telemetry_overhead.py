"""What telemetry costs per processed state change: ``python -m bench.telemetry_overhead``.

Prints microseconds per change for

* ``hot path``: the metric calls one processed change makes on the event loop (a watch
  event, queue add/get/done with depth updates, sent, the platform call's duration and
  outcome, acknowledged with its latency, the handler outcome), with `WatchTelemetry` on a
  real SDK MeterProvider, minus the same calls on the no-op sink
  (`sniffer.nullmetrics.NULL_METRICS`, the watcher's default);
* ``collection``: the work deferred to the metric reader's thread, per change (buffered
  histogram samples handed to the SDK, observable callbacks), measured by one collect
  after N changes;
* ``direct SDK``: the same calls made straight on SDK instruments with pre-bound attribute
  dicts, for comparison;
* ``spans``: the state-change span and its platform client span (SDK tracer provider,
  batch processor with a discarding exporter).

This is a measurement, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind

from sniffer.nullmetrics import NULL_METRICS
from sniffer.telemetry.catalogue import BY_NAME
from sniffer.telemetry.pipeline import WatchTelemetry
from watch.workqueue import Priority

ROUTE = "/api/v1/runs/{id}"


def _one_change(t: WatchTelemetry | None) -> Callable[[float], None]:
    # Without telemetry each component reports to the shared no-op sink, as it does in the
    # watcher when metrics are off.
    noop: Any = NULL_METRICS
    reflector = t.reflector if t else noop
    queue = t.queue if t else noop
    controller = t.controller if t else noop
    platform = t.platform if t else noop

    def change(now: float) -> None:
        reflector.event("MODIFIED")
        reflector.delivered(0.00005)
        queue.add()
        queue.depth(1)
        queue.get(0.0004, Priority.LIVE)
        queue.depth(0)
        controller.sent("running")
        platform.request("PATCH", ROUTE, 200, None, 0.003)
        platform.update("applied")
        controller.acknowledged("running", now - 0.01, now - 0.6)
        queue.done(0.004)
        controller.outcome("done")

    return change


def _per_call_us(fn: Callable[[float], None], n: int) -> float:
    """CPU time of this thread per call: other processes' load does not count."""
    now = time.time()
    started = time.thread_time()
    for _ in range(n):
        fn(now)
    return (time.thread_time() - started) / n * 1e6


def measure(n: int = 20_000) -> dict[str, float]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = WatchTelemetry(provider.get_meter("sniffer"), leader_election=False)
    base, hot, deferred = [], [], []
    for _ in range(5):  # n changes stay below DRAIN_AT: one collection per round
        base.append(_per_call_us(_one_change(None), n))
        hot.append(_per_call_us(_one_change(telemetry), n))
        started = time.thread_time()
        reader.collect()
        deferred.append((time.thread_time() - started) / n * 1e6)
    baseline, with_metrics, collection = min(base), min(hot), min(deferred)

    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("direct")
    counter = meter.create_counter("c")
    hist = meter.create_histogram(
        "h", unit="s",
        explicit_bucket_boundaries_advisory=list(BY_NAME["sniffer.change.latency"].buckets
                                                 or ()))
    ev, st = {"sniffer.watch.event.type": "MODIFIED"}, {"sniffer.state": "running"}
    req: dict[str, str | int] = {"http.request.method": "PATCH", "url.template": ROUTE,
                                 "http.response.status_code": 200}
    lat = {"sniffer.state": "running", "sniffer.latency.origin": "status"}

    def direct(now: float) -> None:
        counter.add(1, ev)
        counter.add(1)
        hist.record(0.0004)
        counter.add(1, st)
        hist.record(0.003, req)
        counter.add(1, {"sniffer.update.outcome": "applied"})
        counter.add(1, st)
        hist.record(0.6, lat)
        hist.record(0.004)
        counter.add(1, {"sniffer.outcome": "done"})

    direct_us = min(_per_call_us(direct, n // 10) for _ in range(3))

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
    tracer = tracer_provider.get_tracer("overhead")
    link = Link(tracer.start_span("submitted").get_span_context())

    def spans(now: float) -> None:
        with tracer.start_as_current_span(
                "sniffer.state_change", links=[link],
                attributes={"sniffer.key": "ns/pod", "sniffer.run_id": "run-1",
                            "sniffer.state.from": "queued", "sniffer.state.to": "running",
                            "sniffer.attempt": 1, "k8s.namespace.name": "ns",
                            "k8s.pod.name": "pod", "k8s.pod.uid": "uid"}), \
                tracer.start_as_current_span(
                    "PATCH /api/v1/runs/{id}", kind=SpanKind.CLIENT,
                    attributes={"http.request.method": "PATCH", "url.template": ROUTE,
                                "server.address": "platform", "server.port": 443}) as s:
            s.set_attribute("http.response.status_code", 200)

    span_us = min(_per_call_us(spans, n // 10) for _ in range(3))
    tracer_provider.shutdown()
    return {"hot path": with_metrics - baseline, "collection": collection,
            "direct SDK": direct_us, "spans": span_us}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry_overhead")
    parser.add_argument("-n", type=int, default=20_000,
                        help="changes per measurement (keep it below DRAIN_AT)")
    args = parser.parse_args(argv)
    for name, us in measure(args.n).items():
        print(f"{name:>12}: {us:7.2f} µs per change")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
