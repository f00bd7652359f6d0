"""The reconciler's metrics: one pass per process, so everything is reported at exit.

Contract:
* `ReconcileTelemetry` records what a pass found and did; `reconcile.app` calls it (or hands
  it the pass's report through `record_report`). It holds no reference to reconcile's types:
  the report is read by attribute names (duck typing), documented on `record_report`.
* The gauges (`sniffer.reconcile.pods`, `.runs`, `.last_success`) report nothing until a
  pass sets them, so a failed pass never reports a misleading zero or an epoch timestamp.
* `platform` implements `sniffer.platform.PlatformMetrics` for the reconciler's client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.metrics import Meter

from sniffer.telemetry.instruments import Registry
from sniffer.telemetry.pipeline import PlatformTelemetry


class ReconcileTelemetry:
    def __init__(self, meter: Meter, *, clock: Callable[[], float] = time.time) -> None:
        registry = Registry(meter)
        self.registry = registry
        self._clock = clock
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

    def listed(self, *, pods: int | None = None, runs: int | None = None) -> None:
        if pods is not None:
            self._pods.set(pods)
        if runs is not None:
            self._runs.set(runs)

    def mismatch(self, kind: str, n: int = 1) -> None:
        self._mismatches.inc(kind, n)

    def repaired(self, kind: str, n: int = 1) -> None:
        self._repairs.inc(kind, n)

    def repair_failed(self, kind: str, error_type: str, n: int = 1) -> None:
        self._failures.inc((kind, error_type), n)

    def pass_ended(self, result: str, seconds: float) -> None:
        """One pass ended: ``result`` is ok, failed or interrupted."""
        self._duration.record(seconds, result)
        if result == "ok":
            self._last_success.set(self._clock())

    def record_report(self, report: Any, *, result: str, seconds: float) -> None:
        """Record a pass's report object: ``pods_listed``/``runs_listed`` (ints),
        ``found``/``repaired`` (kind → count mappings) and ``failed`` (kind → count, or
        (kind, error type) → count). Missing attributes are skipped."""
        self.listed(pods=getattr(report, "pods_listed", None),
                    runs=getattr(report, "runs_listed", None))
        for kind, n in _counts(getattr(report, "found", None)):
            self.mismatch(str(kind), n)
        for kind, n in _counts(getattr(report, "repaired", None)):
            self.repaired(str(kind), n)
        for key, n in _counts(getattr(report, "failed", None)):
            kind, error = key if isinstance(key, tuple) else (key, "other")
            self.repair_failed(str(kind), str(error), n)
        self.pass_ended(result, seconds)


def _counts(value: Any) -> list[tuple[Any, int]]:
    if isinstance(value, Mapping):
        return [(k, int(n)) for k, n in value.items() if n]
    return []
