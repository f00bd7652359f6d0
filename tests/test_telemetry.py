"""sniffer.telemetry: export decisions from OTEL_*, the resource, cheap instruments, the
watcher's gauges sampled on its loop, the latency origin, the bounded flush at exit."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from sniffer.podview import OUTCOME_FINALIZER
from sniffer.telemetry import ReconcileTelemetry, WatchTelemetry, plan, setup_telemetry
from sniffer.telemetry.instruments import DRAIN_AT, MAX_SERIES, OTHER, Registry
from sniffer.telemetry.logexport import OtlpLogHandler
from sniffer.telemetry.pipeline import error_class, latency_origin
from sniffer.telemetry.reconciler import error_type
from sniffer.telemetry.setup import Plan, Telemetry, build_resource, flush_budget_s
from watch.workqueue import Priority

# -- what is exported ------------------------------------------------------------------------


def test_nothing_is_exported_without_an_endpoint() -> None:
    decided = plan({})
    assert (decided.traces, decided.metrics, decided.logs) == ((), (), ())
    assert not decided.metrics_on


def test_an_endpoint_turns_on_otlp_traces_and_metrics_but_not_logs() -> None:
    decided = plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert (decided.traces, decided.metrics, decided.logs) == (("otlp",), ("otlp",), ())


def test_a_signal_endpoint_turns_on_only_that_signal() -> None:
    decided = plan({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"})
    assert (decided.traces, decided.metrics) == (("otlp",), ())


def test_exporter_variables_win_over_the_endpoint_rule() -> None:
    decided = plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                    "OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "console,otlp",
                    "OTEL_LOGS_EXPORTER": "otlp"})
    assert (decided.traces, decided.metrics, decided.logs) == (
        ("console", "otlp"), (), ("otlp",))


def test_unsupported_exporters_and_protocols_are_named_in_warnings() -> None:
    decided = plan({"OTEL_TRACES_EXPORTER": "zipkin,otlp",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert decided.traces == ("otlp",)
    assert any("zipkin" in w for w in decided.warnings)
    assert any("grpc" in w for w in decided.warnings)


def test_sdk_disabled_exports_nothing_even_with_prometheus() -> None:
    decided = plan({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"},
                   prometheus_port=9464)
    assert decided.disabled
    assert not decided.metrics_on


def test_prometheus_alone_turns_metrics_on() -> None:
    assert plan({}, prometheus_port=0).metrics_on


def test_flush_budget_adds_the_export_timeouts_of_exported_signals() -> None:
    decided = plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"})
    assert flush_budget_s(decided, {}) == 20.0
    assert flush_budget_s(decided, {"OTEL_BSP_EXPORT_TIMEOUT": "3000",
                                    "OTEL_METRIC_EXPORT_TIMEOUT": "2000"}) == 5.0
    assert flush_budget_s(plan({}), {}) == 2.0


# -- the resource ---------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "POD_NAME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_resource_defaults_name_the_program(clean_env: pytest.MonkeyPatch) -> None:
    attrs = build_resource("reconcile").attributes
    assert attrs["service.name"] == "sniffer-reconcile"
    assert attrs["service.namespace"] == "sniffer"
    assert attrs["service.version"]
    assert attrs["service.instance.id"]


def test_resource_attributes_from_the_downward_api_override_the_defaults(
        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES",
                     "k8s.pod.name=sniffer-0,k8s.namespace.name=ops,service.namespace=platform")
    clean_env.setenv("OTEL_SERVICE_NAME", "sniffer-watch-blue")
    clean_env.setenv("POD_NAME", "sniffer-0")
    attrs = build_resource("watch").attributes
    assert attrs["service.name"] == "sniffer-watch-blue"
    assert attrs["service.namespace"] == "platform"
    assert attrs["k8s.pod.name"] == "sniffer-0"
    assert attrs["k8s.namespace.name"] == "ops"
    assert attrs["service.instance.id"] == "sniffer-0"


# -- instruments ------------------------------------------------------------------------------

def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter(reader: InMemoryMetricReader) -> Any:
    return MeterProvider(metric_readers=[reader]).get_meter("test")


def test_counts_are_reported_per_attribute_value(meter: Any,
                                                 reader: InMemoryMetricReader) -> None:
    counts = Registry(meter).counts("sniffer.watch.events", keys=("sniffer.watch.event.type",))
    for kind in ("ADDED", "MODIFIED", "MODIFIED"):
        counts.inc(kind)
    points = {p.attributes["sniffer.watch.event.type"]: p.value
              for p in _points(reader)["sniffer.watch.events"]}
    assert points == {"ADDED": 1, "MODIFIED": 2}


def test_counts_cap_their_series_and_report_the_rest_as_other(
        meter: Any, reader: InMemoryMetricReader) -> None:
    counts = Registry(meter).counts("sniffer.watch.events", keys=("sniffer.watch.event.type",))
    for i in range(MAX_SERIES + 10):
        counts.inc(f"kind-{i}")
    points = _points(reader)["sniffer.watch.events"]
    assert len(points) == MAX_SERIES + 1
    other = [p for p in points if p.attributes["sniffer.watch.event.type"] == OTHER]
    assert other[0].value == 10


def test_attributes_outside_the_catalogue_are_refused(meter: Any) -> None:
    with pytest.raises(ValueError, match="not in the catalogue"):
        Registry(meter).counts("sniffer.watch.events", keys=("k8s.pod.name",))
    with pytest.raises(KeyError):
        Registry(meter).counts("sniffer.no.such.metric")
    with pytest.raises(ValueError, match="is a histogram"):
        Registry(meter).counts("sniffer.change.latency")


def test_histogram_samples_reach_the_sdk_at_collection(meter: Any,
                                                       reader: InMemoryMetricReader) -> None:
    registry = Registry(meter)
    registry.value("sniffer.queue.depth")  # an observable instrument carries the drain
    histogram = registry.histogram("sniffer.queue.duration")
    for value in (0.001, 0.2, 3.0):
        histogram.record(value)
    (point,) = _points(reader)["sniffer.queue.duration"]
    assert (point.count, round(point.sum, 3)) == (3, 3.201)
    assert list(point.explicit_bounds)[:3] == [0.005, 0.01, 0.025]


def test_a_full_histogram_buffer_is_handed_over_on_the_hot_path(meter: Any) -> None:
    records: list[float] = []
    registry = Registry(meter)
    histogram = registry.histogram("sniffer.queue.duration")
    histogram._record = lambda value, attrs: records.append(value)
    for _ in range(DRAIN_AT):
        histogram.record(0.1)
    assert len(records) == DRAIN_AT


def test_latency_origin_puts_the_change_mid_second_but_never_after_the_observation() -> None:
    assert latency_origin(observed_at=100.9, changed_at=100.0) == (100.5, "status")
    assert latency_origin(observed_at=100.2, changed_at=100.0) == (100.2, "observed")
    assert latency_origin(observed_at=100.2, changed_at=None) == (100.2, "observed")
    assert latency_origin(observed_at=100.2, changed_at=130.0) == (100.2, "observed")  # skew


def test_error_classes_are_bounded() -> None:
    assert error_class("platform unavailable: 503 busy") == "platform_unavailable"
    assert error_class("platform rejected the update: 400") == "platform_rejected"
    assert error_class("Kubernetes API: timeout") == "kubernetes_api"
    assert error_class("ValueError: boom") == "other"
    assert error_type("PlatformUnavailable: GET /api/v1/runs: 503") == "PlatformUnavailable"
    assert error_type("the platform no longer knows the run") == "other"
    assert error_type(None) == "other"


def test_platform_error_statuses_carry_error_type(meter: Any,
                                                  reader: InMemoryMetricReader) -> None:
    watch = WatchTelemetry(meter, leader_election=False)
    watch.platform.request("PATCH", "/api/v1/runs/{id}", 503, None, 0.5)
    watch.platform.request("PATCH", "/api/v1/runs/{id}", None, "timeout", 10.0)
    watch.platform.request("GET", "/api/v1/runs", 200, None, 0.01)
    attrs = [dict(p.attributes) for p in _points(reader)["sniffer.platform.request.duration"]]
    assert {"http.request.method": "PATCH", "url.template": "/api/v1/runs/{id}",
            "http.response.status_code": 503, "error.type": "503"} in attrs
    assert {"http.request.method": "PATCH", "url.template": "/api/v1/runs/{id}",
            "error.type": "timeout"} in attrs
    assert {"http.request.method": "GET", "url.template": "/api/v1/runs",
            "http.response.status_code": 200} in attrs


def test_the_pod_job_and_app_paths_report_one_series_set_told_apart_by_kind(
        meter: Any, reader: InMemoryMetricReader) -> None:
    watch = WatchTelemetry(meter, leader_election=False)
    watch.controller.acknowledged("running", time.time(), None)
    watch.job_controller.acknowledged("running", time.time(), None)
    watch.job_controller.acknowledged("succeeded", time.time(), None)
    watch.job_controller.dropped("job", "platform unavailable: 503")
    watch.reflector.event("ADDED")
    watch.job_reflector.relist("gone")
    watch.job_queue.add()
    watch.app_controllers["Deployment"].acknowledged("running", time.time(), None)
    watch.app_reflectors["StatefulSet"].relist("gone")
    watch.app_queues["Deployment"].add()
    points = _points(reader)

    def series(name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        return {frozenset(p.attributes.items()): p.value for p in points[name]}

    def kind(kind: str, **attributes: str) -> frozenset[tuple[str, Any]]:
        return frozenset({"sniffer.workload.kind": kind, **attributes}.items())

    state, cause, event = "sniffer.state", "sniffer.relist.cause", "sniffer.watch.event.type"
    assert series("sniffer.changes.acknowledged") == {
        kind("Pod", **{state: "running"}): 1, kind("Job", **{state: "running"}): 1,
        kind("Job", **{state: "succeeded"}): 1, kind("Deployment", **{state: "running"}): 1}
    assert series("sniffer.changes.dropped") == {
        kind("Job", **{"k8s.pod.phase": "job", "error.type": "platform_unavailable"}): 1}
    assert series("sniffer.watch.events") == {kind("Pod", **{event: "ADDED"}): 1}
    assert series("sniffer.watch.relists") == {kind("Job", **{cause: "gone"}): 1,
                                               kind("StatefulSet", **{cause: "gone"}): 1}
    assert {dict(k)["sniffer.queue.name"]: v for k, v in series("sniffer.queue.adds").items()
            } == {"pods": 0, "jobs": 1, "deployments": 1, "statefulsets": 0, "finalizers": 0}
    # What an operator alerts on exists per kind from the start, at 0.
    assert series("sniffer.runs.orphaned") == {kind("Pod"): 0, kind("Job"): 0,
                                               kind("Deployment"): 0, kind("StatefulSet"): 0}


# -- the watcher's gauges ---------------------------------------------------------------------

class FakeQueue:
    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.loop_thread: int | None = None

    def update_unfinished_work(self) -> None:
        self.loop_thread = threading.get_ident()
        self.sink.unfinished_work(4.0)
        self.sink.longest_running_processor(3.0)


def _pod(*finalizers: str) -> Any:
    return SimpleNamespace(finalizers=finalizers)


async def test_watcher_gauges_are_sampled_on_its_event_loop(
        meter: Any, reader: InMemoryMetricReader) -> None:
    watch = WatchTelemetry(meter, leader_election=True)
    queue = FakeQueue(watch.queue)
    watcher = SimpleNamespace(
        store=[_pod(OUTCOME_FINALIZER), _pod(), _pod(OUTCOME_FINALIZER, "other")],
        queue=queue,
        controller=SimpleNamespace(oldest_unhandled_age=lambda: 2.5, acked_runs=7),
        elector=SimpleNamespace(is_leader=True))
    watch.observe(watcher)
    # The reader's own thread collects, as the periodic reader does.
    points = await asyncio.to_thread(_points, reader)
    value = {name: ps[0].value for name, ps in points.items() if len(ps) == 1
             and hasattr(ps[0], "value")}
    assert value["sniffer.cache.pods"] == 3
    assert value["sniffer.finalizers.held"] == 2
    assert value["sniffer.freshness"] == 2.5
    assert value["sniffer.cache.runs"] == 7
    assert value["sniffer.leader.status"] == 1
    by_queue = {p.attributes["sniffer.queue.name"]: p.value
                for p in points["sniffer.queue.unfinished_work"]}
    # The double has no Job, app or finalizer queue: theirs stay at 0.
    assert by_queue == {"pods": 4.0, "jobs": 0.0, "deployments": 0.0, "statefulsets": 0.0,
                        "finalizers": 0.0}
    longest = {p.attributes["sniffer.queue.name"]: p.value
               for p in points["sniffer.queue.longest_running_processor"]}
    assert longest["pods"] == 3.0
    assert queue.loop_thread == threading.get_ident()  # sampled on the loop, not the reader


def test_each_queue_reports_under_its_own_name(
        meter: Any, reader: InMemoryMetricReader) -> None:
    """client-go labels each queue's metrics by its name; so do we (sniffer.queue.name),
    and a third queue (say, Jobs) gets its own series by asking for its name."""
    watch = WatchTelemetry(meter, leader_election=True)
    jobs = watch.queue_metrics("jobs")
    assert watch.queue_metrics("jobs") is jobs
    watch.queue.add()
    watch.queue.add()
    watch.finalizer_queue.add()
    jobs.depth(5)
    watch.queue.get(0.5, Priority.LIST)
    watch.queue.get(0.25, Priority.LIVE)
    points = _points(reader)
    adds = {p.attributes["sniffer.queue.name"]: p.value for p in points["sniffer.queue.adds"]}
    assert adds == {"pods": 2, "finalizers": 1, "jobs": 0, "deployments": 0,
                    "statefulsets": 0}
    depth = {p.attributes["sniffer.queue.name"]: p.value for p in points["sniffer.queue.depth"]}
    assert depth == {"pods": 0, "finalizers": 0, "jobs": 5, "deployments": 0,
                     "statefulsets": 0}
    waits = {(p.attributes["sniffer.queue.name"], p.attributes["sniffer.priority"]): p.sum
             for p in points["sniffer.queue.duration"]}
    assert waits == {("pods", "list"): 0.5, ("pods", "live"): 0.25}


def test_gauges_report_the_last_snapshot_once_the_loop_is_gone(
        meter: Any, reader: InMemoryMetricReader) -> None:
    watch = WatchTelemetry(meter, leader_election=True)

    async def attach() -> None:
        watch.observe(SimpleNamespace(store=[_pod()], queue=None, controller=None,
                                      elector=SimpleNamespace(is_leader=False)))
        await asyncio.to_thread(reader.collect)

    asyncio.run(attach())
    time.sleep(0.3)  # past the snapshot reuse window
    points = _points(reader)  # the loop is closed now: last values, no hang
    assert points["sniffer.cache.pods"][0].value == 1
    assert points["sniffer.leader.status"][0].value == 0


def test_reconcile_gauges_stay_silent_until_a_pass_sets_them(
        meter: Any, reader: InMemoryMetricReader) -> None:
    ReconcileTelemetry(meter)
    points = _points(reader)
    for name in ("sniffer.reconcile.pods", "sniffer.reconcile.runs",
                 "sniffer.reconcile.last_success"):
        assert name not in points


# -- setup and shutdown -----------------------------------------------------------------------

def test_prometheus_endpoint_serves_the_catalogue(clean_env: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"):
        clean_env.delenv(var, raising=False)
    telemetry = setup_telemetry("watch", prometheus_port=0, install_globals=False)
    try:
        assert telemetry.prometheus_port
        watch = WatchTelemetry(telemetry.meter, leader_election=False)
        watch.controller.acknowledged("succeeded", time.time() - 1, None)
        url = f"http://127.0.0.1:{telemetry.prometheus_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'sniffer_changes_acknowledged_total{' in text
        assert "sniffer_change_latency_seconds_bucket{" in text
    finally:
        assert telemetry.shutdown(5.0)


class HangingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(30)
        return SpanExportResult.SUCCESS


def test_shutdown_is_bounded_when_the_collector_hangs() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    exporter = HangingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    telemetry = Telemetry("watch", Plan(False, ("otlp",), (), (), None),
                          provider.resource, provider, None, None, None, None, None)
    provider.get_tracer("t").start_span("s").end()
    time.sleep(0.1)  # the batch's export now hangs inside the exporter
    started = time.monotonic()
    assert telemetry.shutdown(0.5) is False
    assert time.monotonic() - started < 2
    assert telemetry.shutdown(0.5) is True  # idempotent
    exporter.release.set()


# -- exported log records ---------------------------------------------------------------------

@pytest.fixture
def log_export() -> Iterator[tuple[logging.Logger, InMemoryLogRecordExporter]]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logging.getLogger("sniffer.test.logexport")
    handler = OtlpLogHandler(provider)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, exporter
    finally:
        logger.removeHandler(handler)


def test_exported_log_records_redact_credential_fields(
        log_export: tuple[logging.Logger, InMemoryLogRecordExporter]) -> None:
    logger, exporter = log_export
    logger.warning("refreshing %s", "credentials",
                   extra={"platform_token": "s3cr3t-t0ken", "run_id": "r1", "attempt": 2})
    (record,) = [r.log_record for r in exporter.get_finished_logs()]
    assert record.body == "refreshing credentials"
    assert record.severity_text == "WARN"
    attributes = dict(record.attributes or {})
    assert attributes["platform_token"] == "[redacted]"
    assert attributes["run_id"] == "r1"
    assert attributes["attempt"] == 2


def test_the_sdk_own_log_records_are_not_exported() -> None:
    handler = OtlpLogHandler(LoggerProvider())
    record = logging.LogRecord("opentelemetry.exporter", logging.ERROR, "", 0, "x", None, None)
    assert not handler.filter(record)
