"""docs/telemetry.md and docs/dashboards/sniffer.json stay in step with the code.

* The metric table in docs/telemetry.md lists exactly the instruments the code registers
  (name, instrument kind, unit, attribute keys), as recorded from the meter while the
  watcher's and the reconciler's metric sinks are built.
* The span table lists exactly the span names the code starts (found in the source) and
  the catalogue's `SPANS`.
* The dashboard is valid Grafana JSON whose panels cover what an operator needs, and whose
  queries name only metrics the Prometheus endpoint really exposes.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from sniffer.telemetry import ReconcileTelemetry, WatchTelemetry
from sniffer.telemetry.catalogue import METRICS, SPANS
from watch.workqueue import Priority

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "telemetry.md"
DASHBOARD = ROOT / "docs" / "dashboards" / "sniffer.json"
KIND_OF_CREATE = {
    "create_counter": "Counter", "create_observable_counter": "Counter",
    "create_gauge": "Gauge", "create_observable_gauge": "Gauge",
    "create_histogram": "Histogram", "create_up_down_counter": "UpDownCounter",
    "create_observable_up_down_counter": "UpDownCounter",
}


class RecordingMeter:
    """A meter that remembers every instrument created on it."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self.created: dict[str, tuple[str, str]] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._meter, name)
        if name not in KIND_OF_CREATE:
            return target

        def create(instrument: str, *args: Any, **kwargs: Any) -> Any:
            self.created[instrument] = (KIND_OF_CREATE[name], kwargs.get("unit", ""))
            return target(instrument, *args, **kwargs)

        return create


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _table(section: str) -> list[list[str]]:
    """Rows of the first markdown table in `section`, cells stripped, header skipped."""
    rows: list[list[str]] = []
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(cells)
    return [r for r in rows[2:]]  # header and separator


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _registered() -> dict[str, tuple[str, str]]:
    created: dict[str, tuple[str, str]] = {}
    for build in (lambda m: WatchTelemetry(m, leader_election=True), ReconcileTelemetry):
        meter = RecordingMeter(MeterProvider().get_meter("sniffer"))
        build(meter)  # type: ignore[arg-type]
        created.update(meter.created)
    return created


def test_the_metric_table_lists_every_instrument_the_code_registers() -> None:
    rows = _table(_section(DOC.read_text(), "Metrics"))
    documented = {_code(r[0])[0]: (r[1], _code(r[2])[0], tuple(_code(r[3]))) for r in rows}
    assert len(documented) == len(rows), "a metric is listed twice"
    registered = _registered()
    assert set(documented) == set(registered)
    for name, (kind, unit) in registered.items():
        assert documented[name][:2] == (kind, unit), name
    catalogue = {m.name: m for m in METRICS}
    for name, (_kind, _unit, attributes) in documented.items():
        assert attributes == catalogue[name].attributes, name


def _span_names_in_source() -> set[str]:
    names: set[str] = set()
    for package in ("sniffer", "watch", "reconcile"):
        for path in (ROOT / package).rglob("*.py"):
            if "telemetry" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                args = node.args
                first = args[0].value if args and isinstance(args[0], ast.Constant) else None
                if node.func.attr in ("start_as_current_span", "start_span") and first:
                    names.add(str(first))
                route = next((k.value for k in node.keywords if k.arg == "route"), None)
                if node.func.attr == "_request" and first and isinstance(route, ast.Constant):
                    names.add(f"{first!s} {route.value!s}")  # the client's span name
    return names


def test_the_span_table_lists_every_span_the_code_starts() -> None:
    rows = _table(_section(DOC.read_text(), "Traces"))
    documented = {_code(r[0])[0] for r in rows}
    assert documented == {s.name for s in SPANS}
    assert _span_names_in_source() == documented


# -- the dashboard ---------------------------------------------------------------------

def _exercise(watch: WatchTelemetry, reconcile: ReconcileTelemetry) -> None:
    """One call of every sink method, so every instrument has a data point."""
    watch.reflector.event("ADDED")
    watch.reflector.relist("initial")
    watch.reflector.watch_restart("timeout")
    watch.reflector.malformed("pod")
    watch.reflector.delivered(0.001)
    for queue in (watch.queue, watch.finalizer_queue):
        queue.add()
        queue.depth(1)
        queue.get(0.1, Priority.LIVE)
        queue.done(0.1)
        queue.retry()
        queue.unfinished_work(0.1)
        queue.longest_running_processor(0.1)
    c = watch.controller
    c.outcome("done")
    c.sent("running")
    c.acknowledged("running", 100.0, 99.0)
    c.dropped("Running", "platform unavailable: 503")
    c.finalizer("added")
    c.orphan()
    c.underivable()
    for platform in (watch.platform, reconcile.platform):
        platform.request("PATCH", "/api/v1/runs/{id}", 200, None, 0.01)
        platform.update("applied")
    failed = SimpleNamespace(outcome=SimpleNamespace(value="failed"), error="Timeout: x",
                             mismatch=SimpleNamespace(kind=SimpleNamespace(value="pod_ahead")))
    reconcile.record_pass(SimpleNamespace(
        exit_code=1, duration_s=2.0, error=None, pods_listed=3, runs_listed=4,
        mismatches_by_kind={"pod_ahead": 1}, repaired_by_kind={"pod_ahead": 0},
        results=[failed], lookup_errors={}, started_at=1.0))
    reconcile.record_pass(SimpleNamespace(
        exit_code=0, duration_s=2.0, error=None, pods_listed=3, runs_listed=4,
        mismatches_by_kind={}, repaired_by_kind={}, results=[], lookup_errors={},
        started_at=1.0))


@pytest.fixture(scope="module")
def exposition() -> list[str]:
    """The Prometheus endpoint's sample lines once every sink method was called."""
    lines: list[str] = []
    registries = [CollectorRegistry(), CollectorRegistry()]
    meters = [MeterProvider(metric_readers=[PrometheusMetricReader(registry=r)])
              .get_meter("sniffer") for r in registries]
    _exercise(WatchTelemetry(meters[0], leader_election=False), ReconcileTelemetry(meters[1]))
    for registry in registries:
        lines += [line for line in generate_latest(registry).decode().splitlines()
                  if line.startswith("sniffer_")]
    return lines


@pytest.fixture(scope="module")
def prometheus_names(exposition: list[str]) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in exposition}


@pytest.fixture(scope="module")
def prometheus_labels(exposition: list[str]) -> set[str]:
    return {label for line in exposition
            for label in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', line)}


def test_every_catalogue_metric_is_exposed_to_prometheus(prometheus_names: set[str]) -> None:
    for metric in METRICS:
        stem = metric.name.replace(".", "_")
        assert any(n.startswith(stem) for n in prometheus_names), metric.name


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_is_grafana_json_with_the_operator_panels() -> None:
    dashboard = _dashboard()
    assert dashboard["title"]
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 30
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in panels)
    for needed in ("throughput", "latency", "retries", "drops", "queue depth", "freshness",
                   "reconcile", "repairs"):
        assert needed in titles, needed
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables


def test_dashboard_queries_name_only_metrics_that_exist(
        prometheus_names: set[str], prometheus_labels: set[str]) -> None:
    used = set()
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            grouping = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            labels = {label.strip() for group in grouping for label in group.split(",")}
            assert labels <= prometheus_labels | {"le", "instance", "job"}, (
                panel["title"], labels - prometheus_labels)
            bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)|\{[^}]*\}", "", expr)
            names = set(re.findall(r"\bsniffer_[a-z0-9_]+\b", bare))
            assert names, (panel["title"], expr)
            unknown = names - prometheus_names
            assert not unknown, (panel["title"], unknown)
            used |= names
    # The latency percentiles come from the histogram's buckets.
    assert "sniffer_change_latency_seconds_bucket" in used
