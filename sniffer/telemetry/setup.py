"""OpenTelemetry SDK setup from the standard ``OTEL_*`` variables, and a bounded flush at exit.

Contract:
* `setup_telemetry(component, *, prometheus_port=None, install_globals=True,
  extra_readers=())` builds the tracer, meter and (optionally) logger providers once per
  process and, unless `install_globals` is False (tests), installs them as the global
  providers, so
  ``trace.get_tracer`` in any module (controller, platform client, reconciler) uses them.
  Caller duty: call `Telemetry.shutdown()` before the process exits (``cli.main`` does,
  in a ``finally``, after SIGTERM too).
* What is exported is decided by `plan()` from the environment:

  - ``OTEL_SDK_DISABLED=true``: nothing at all (no providers, no-op metric sinks).
  - Traces and metrics go over OTLP/HTTP protobuf when ``OTEL_{TRACES,METRICS}_EXPORTER``
    says ``otlp``, or, when that variable is unset, when an OTLP endpoint is configured
    (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the signal's ``OTEL_EXPORTER_OTLP_*_ENDPOINT``).
    Without an endpoint nothing is sent (the spec's default of localhost:4318 would only
    produce export errors in a cluster without a node-local collector). ``console`` prints
    to stderr; ``none`` turns the signal off.
  - Logs always go to stderr as JSON (`sniffer.logs`); they are *also* exported over OTLP
    only when ``OTEL_LOGS_EXPORTER=otlp`` (default none: log agents usually collect stderr,
    and exporting both would double the volume).
  - ``OTEL_EXPORTER_OTLP[_*]_PROTOCOL`` other than ``http/protobuf`` is logged and ignored:
    only OTLP/HTTP protobuf is built in.
  - Everything else is read by the SDK itself: ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES`` (the manifests fill k8s.pod.name, k8s.namespace.name,
    k8s.node.name, ... from the Downward API), ``OTEL_TRACES_SAMPLER[_ARG]``,
    ``OTEL_METRIC_EXPORT_INTERVAL``/``_TIMEOUT``, ``OTEL_BSP_*``, ``OTEL_BLRP_*``,
    ``OTEL_EXPORTER_OTLP_*`` (headers, timeout, compression, certificates).
* The resource: ``service.name`` defaults to ``sniffer-<component>`` (``OTEL_SERVICE_NAME``
  or a ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` wins), ``service.namespace`` to
  ``sniffer``, plus ``service.version`` and a fresh ``service.instance.id``; the
  environment overrides any of them.
* A tracer provider is installed even when no trace exporter is on: spans then still give
  log lines their trace ids and the platform its ``traceparent``.
* A Prometheus scrape endpoint (``/metrics``, text format, via
  opentelemetry-exporter-prometheus and prometheus_client) is served on
  ``telemetry.prometheus_port`` when set (0 picks a free port: see `prometheus_port`).
* `shutdown()` flushes spans, metrics and logs, then shuts the providers down, within
  `flush_budget_s` in total (the configured export timeouts) even if a collector hangs;
  it is idempotent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from config import ConfigError

log = logging.getLogger(__name__)

SIGNALS = ("traces", "metrics", "logs")
SUPPORTED_EXPORTERS = ("otlp", "console", "none")
METER_NAME = "sniffer"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


@dataclass(frozen=True, slots=True)
class Plan:
    """What this process exports. Each signal's exporters: a subset of otlp, console."""

    disabled: bool
    traces: tuple[str, ...]
    metrics: tuple[str, ...]
    logs: tuple[str, ...]
    prometheus_port: int | None
    warnings: tuple[str, ...] = ()

    @property
    def metrics_on(self) -> bool:
        return not self.disabled and (bool(self.metrics) or self.prometheus_port is not None)


def plan(environ: Mapping[str, str], prometheus_port: int | None = None) -> Plan:
    """Decide the exporters from the environment (see the module docstring)."""
    if _truthy(environ.get("OTEL_SDK_DISABLED")):
        return Plan(True, (), (), (), None)
    warnings: list[str] = []
    chosen: dict[str, tuple[str, ...]] = {}
    base_endpoint = bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())
    for signal in SIGNALS:
        raw = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
        if raw:
            names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
        elif signal == "logs":
            names = ()
        else:
            endpoint = base_endpoint or bool(
                environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip())
            names = ("otlp",) if endpoint else ()
        unknown = [n for n in names if n not in SUPPORTED_EXPORTERS]
        if unknown:
            warnings.append(f"OTEL_{signal.upper()}_EXPORTER: {unknown} not supported "
                            f"(use {', '.join(SUPPORTED_EXPORTERS)}); ignored")
        chosen[signal] = () if "none" in names else tuple(
            n for n in names if n in SUPPORTED_EXPORTERS)
        protocol = (environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
                    or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
        if "otlp" in chosen[signal] and protocol != "http/protobuf":
            warnings.append(f"OTLP protocol {protocol!r} for {signal} is not supported; "
                            "using http/protobuf")
    return Plan(False, chosen["traces"], chosen["metrics"], chosen["logs"], prometheus_port,
                tuple(warnings))


def _version() -> str:
    try:
        return metadata.version("sniffer")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "0+unknown"


def build_resource(component: str) -> Resource:
    """Sniffer's defaults, overridden by OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    (read from the process environment, as the SDK does)."""
    environ = os.environ
    from_env = OTELResourceDetector().detect().attributes
    defaults: dict[str, Any] = {
        "service.name": f"sniffer-{component}",
        "service.namespace": "sniffer",
        "service.version": _version(),
        "service.instance.id": environ.get("POD_NAME") or str(uuid.uuid4()),
    }
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        defaults.pop("service.name")
    # Resource.create lets the attributes passed override the environment: pass only keys
    # the environment does not set.
    return Resource.create({k: v for k, v in defaults.items() if k not in from_env})


class Telemetry:
    """This process's providers. Build with `setup_telemetry`."""

    def __init__(self, component: str, plan: Plan, resource: Resource,
                 tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None,
                 logger_provider: Any | None, log_handler: logging.Handler | None,
                 prometheus_server: Any | None, prometheus_port: int | None) -> None:
        self.component = component
        self.plan = plan
        self.resource = resource
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.logger_provider = logger_provider
        self._log_handler = log_handler
        self._prometheus_server = prometheus_server
        self.prometheus_port = prometheus_port
        """The port the scrape endpoint listens on (None if off)."""
        self._closed = False
        self._lock = threading.Lock()

    @property
    def meter(self) -> Meter:
        provider = self.meter_provider or metrics.NoOpMeterProvider()
        return provider.get_meter(METER_NAME, _version())

    @property
    def metrics_on(self) -> bool:
        """True iff some reader collects metrics (else sinks would only cost)."""
        return self.meter_provider is not None

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Flush everything, then shut down, within `timeout_s` (default `flush_budget_s`).
        True iff it all finished in time. Idempotent; safe from any thread."""
        if timeout_s is None:
            timeout_s = flush_budget_s(self.plan, os.environ)
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        deadline = time.monotonic() + timeout_s

        def remaining_ms() -> int:
            return max(1, int((deadline - time.monotonic()) * 1000))

        steps: list[tuple[str, Callable[[], object]]] = []
        if self._log_handler is not None:
            handler = self._log_handler
            steps.append(("detaching the OTLP log handler",
                          lambda: logging.getLogger().removeHandler(handler)))
        if self.tracer_provider is not None:
            tp = self.tracer_provider
            steps += [("flushing spans", lambda: tp.force_flush(remaining_ms())),
                      ("shutting down tracing", tp.shutdown)]
        if self.meter_provider is not None:
            mp = self.meter_provider
            # MeterProvider.shutdown collects and exports a last time.
            steps.append(("flushing and shutting down metrics",
                          lambda: mp.shutdown(timeout_millis=remaining_ms())))
        if self.logger_provider is not None:
            lp = self.logger_provider
            steps += [("flushing logs", lambda: lp.force_flush(remaining_ms())),
                      ("shutting down logs", lp.shutdown)]
        if self._prometheus_server is not None:
            server = self._prometheus_server
            steps.append(("stopping the Prometheus endpoint", server.shutdown))
        return _bounded(steps, deadline)


def flush_budget_s(decided: Plan, environ: Mapping[str, str]) -> float:
    """How long the flush at exit may take: the export timeouts of the signals that are
    exported (``OTEL_BSP_EXPORT_TIMEOUT``, ``OTEL_METRIC_EXPORT_TIMEOUT``,
    ``OTEL_BLRP_EXPORT_TIMEOUT``, in ms; 10 s each when unset), 2 s at least and 60 s at
    most. Keep the pods' terminationGracePeriodSeconds above drain + this."""
    total = 0.0
    for on, var in ((decided.traces, "OTEL_BSP_EXPORT_TIMEOUT"),
                    (decided.metrics, "OTEL_METRIC_EXPORT_TIMEOUT"),
                    (decided.logs, "OTEL_BLRP_EXPORT_TIMEOUT")):
        if on:
            try:
                total += float(environ.get(var, "10000")) / 1000
            except ValueError:
                total += 10.0
    return min(60.0, max(2.0, total))


def _bounded(steps: list[tuple[str, Callable[[], object]]], deadline: float) -> bool:
    """Run `steps` in order on a daemon thread; give up at `deadline` (monotonic)."""
    done = threading.Event()

    def run() -> None:
        for what, step in steps:
            try:
                step()
            except Exception:
                log.warning("telemetry shutdown step failed", extra={"step": what},
                            exc_info=True)
        done.set()

    thread = threading.Thread(target=run, name="telemetry-shutdown", daemon=True)
    thread.start()
    finished = done.wait(max(0.0, deadline - time.monotonic()))
    if not finished:
        log.warning("telemetry shutdown did not finish in time; unsent data is lost")
    return finished


def setup_telemetry(component: str, *, prometheus_port: int | None = None,
                    install_globals: bool = True,
                    extra_readers: tuple[MetricReader, ...] = ()) -> Telemetry:
    """Build the providers for `component` ("watch" or "reconcile") from the process
    environment; see the module docstring. `extra_readers` (tests) are added to the meter
    provider; `install_globals=False` (tests) leaves the global providers alone."""
    decided = plan(os.environ, prometheus_port)
    for warning in decided.warnings:
        log.warning(warning)
    resource = build_resource(component)
    if decided.disabled:
        log.info("telemetry disabled (OTEL_SDK_DISABLED=true)")
        return Telemetry(component, decided, resource, None, None, None, None, None, None)

    tracer_provider = _tracer_provider(resource, decided.traces)
    readers: list[MetricReader] = list(extra_readers) + _exporting_readers(decided.metrics)
    prometheus_server, bound_port = None, None
    if prometheus_port is not None:
        reader, prometheus_server, bound_port = _prometheus(prometheus_port)
        readers.append(reader)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers) if readers else None

    logger_provider, log_handler = None, None
    if decided.logs:
        from sniffer.telemetry.logexport import install_log_export
        logger_provider, log_handler = install_log_export(resource, decided.logs)

    # Without a span exporter the SDK would still build every span for nothing; the API's
    # default no-op tracer keeps W3C propagation and costs next to nothing.
    if install_globals and decided.traces:
        trace.set_tracer_provider(tracer_provider)
    if install_globals and meter_provider is not None:
        metrics.set_meter_provider(meter_provider)
    log.info("telemetry configured", extra={
        "service_name": resource.attributes.get("service.name"),
        "traces": list(decided.traces), "metrics": list(decided.metrics),
        "logs": list(decided.logs), "prometheus_port": bound_port})
    return Telemetry(component, decided, resource, tracer_provider, meter_provider,
                     logger_provider, log_handler, prometheus_server, bound_port)


def _tracer_provider(resource: Resource, exporters: tuple[str, ...]) -> TracerProvider:
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in exporters:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def _exporting_readers(exporters: tuple[str, ...]) -> list[MetricReader]:
    readers: list[MetricReader] = []
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if "console" in exporters:
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    return readers


def _prometheus(port: int) -> tuple[MetricReader, Any, int]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    try:
        server, _thread = start_http_server(port, addr="0.0.0.0", registry=registry)
    except OSError as exc:
        raise ConfigError([f"telemetry.prometheus_port: cannot listen on port {port} "
                           f"({exc.strerror or exc})"]) from None
    return reader, server, int(server.server_address[1])
