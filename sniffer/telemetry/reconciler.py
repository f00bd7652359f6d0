"""The reconciler's metrics: one pass per process, recorded from the pass's report.

Contract:
* `ReconcileTelemetry.record_pass(report)` records one `reconcile.report.PassReport` (read
  by attribute, so this core module does not import reconcile): pods and runs listed,
  mismatches and repairs by kind, failed repairs by kind and error class (a run that could
  not be read counts as kind ``lookup``), the pass duration by result (ok, failed,
  interrupted: the report's exit code 0, 1, 3) and, for an ok pass, the time it ended.
* The gauges (`sniffer.reconcile.pods`, `.runs`, `.last_success`) report nothing until a
  pass sets them, so a pass that failed to list never reports a misleading zero.
* `platform` implements `sniffer.platform.PlatformMetrics` for the reconciler's client.
* Everything is exported by the final flush at exit (`Telemetry.shutdown`).
"""

from __future__ import annotations

import re
from typing import Any

from opentelemetry.metrics import Meter

from sniffer.telemetry.instruments import Registry
from sniffer.telemetry.pipeline import PlatformTelemetry

RESULTS = {0: "ok", 1: "failed", 3: "interrupted"}
_ERROR_CLASS = re.compile(r"([A-Za-z_][A-Za-z0-9_]*): ")


def error_type(error: str | None) -> str:
    """The exception class that leads an error text ("PlatformUnavailable: ..."), else
    ``other``: a bounded attribute value from free text."""
    match = _ERROR_CLASS.match(error or "")
    return match.group(1) if match else "other"


class ReconcileTelemetry:
    def __init__(self, meter: Meter) -> None:
        registry = Registry(meter)
        self.registry = registry
        self.platform = PlatformTelemetry(registry)
        self._duration = registry.histogram("sniffer.reconcile.duration",
                                            keys=("sniffer.reconcile.result",))
        self._pods = registry.value("sniffer.reconcile.pods", initial=None)
        self._runs = registry.value("sniffer.reconcile.runs", initial=None)
        self._mismatches = registry.counts("sniffer.reconcile.mismatches",
                                           keys=("sniffer.mismatch.kind",))
        self._repairs = registry.counts("sniffer.reconcile.repairs",
                                        keys=("sniffer.mismatch.kind",))
        self._failures = registry.counts("sniffer.reconcile.repair_failures",
                                         keys=("sniffer.mismatch.kind", "error.type"))
        self._last_success = registry.value("sniffer.reconcile.last_success", initial=None)

    def record_pass(self, report: Any) -> None:
        """Record one pass from its `PassReport` (see the module docstring)."""
        result = RESULTS.get(report.exit_code, "failed")
        self._duration.record(report.duration_s, result)
        if report.error is None:  # the listings succeeded
            self._pods.set(report.pods_listed)
            self._runs.set(report.runs_listed)
        for kind, n in report.mismatches_by_kind.items():
            self._mismatches.inc(kind, n)  # zeros too: every kind has a series
        for kind, n in report.repaired_by_kind.items():
            self._repairs.inc(kind, n)
        for r in report.results:
            if r.outcome.value == "failed":
                self._failures.inc((r.mismatch.kind.value, error_type(r.error)))
        for error in report.lookup_errors.values():
            self._failures.inc(("lookup", error_type(error)))
        if result == "ok":
            self._last_success.set(report.started_at + report.duration_s)
