"""Telemetry: OpenTelemetry setup, the metric catalogue and the metric sinks.

* `setup` — providers and exporters from the ``OTEL_*`` variables, a Prometheus endpoint,
  a bounded flush at exit (`setup_telemetry`, `Telemetry.shutdown`).
* `catalogue` — every metric (name, kind, unit, attributes, meaning) and span name;
  docs/telemetry.md mirrors it and a test keeps the two in step.
* `instruments` — hot-path-cheap counters, histograms and gauges over the metrics API.
* `pipeline` — the watcher's sinks (`WatchTelemetry`) and the platform client's.
* `reconciler` — the reconciler's sinks (`ReconcileTelemetry`).
* `logexport` — optional OTLP export of log records.

Contract: nothing here imports `watch` or `reconcile` (they depend on this core, not the
other way round); the sinks implement the Protocols those packages define, structurally.
"""

from sniffer.telemetry.catalogue import METRICS, SPANS
from sniffer.telemetry.pipeline import PlatformTelemetry, WatchTelemetry
from sniffer.telemetry.reconciler import ReconcileTelemetry
from sniffer.telemetry.setup import Plan, Telemetry, plan, setup_telemetry

__all__ = [
    "METRICS",
    "SPANS",
    "Plan",
    "PlatformTelemetry",
    "ReconcileTelemetry",
    "Telemetry",
    "WatchTelemetry",
    "plan",
    "setup_telemetry",
]
