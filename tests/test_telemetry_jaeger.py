"""A trace Sniffer exports can be read back from a real tracing backend (Jaeger v2).

Jaeger is built from the Go module proxy like the API server, but its build is large
(~15 minutes cold on 2 cores), so this test carries the ``jaeger`` marker: `make test`
deselects it and `make test-jaeger` runs it, building Jaeger first when its cache is
cold. It never skips: without a Jaeger it can build, it fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.apiserver import ApiServer
from testbed.gocache import BuildError
from testbed.jaeger import Jaeger, cached_jaeger, ensure_jaeger, start
from testbed.platform.launcher import PlatformServer
from tests.test_telemetry_wire import Program, sniffer_env

pytestmark = pytest.mark.jaeger


@pytest.fixture
def jaeger(tmp_path: Path) -> Iterator[Jaeger]:
    binary = cached_jaeger()
    if binary is None:
        try:
            binary = ensure_jaeger()
        except BuildError as e:
            pytest.fail(f"cannot build Jaeger: {e}", pytrace=False)
    server = start(tmp_path / "jaeger", binary=binary)
    try:
        yield server
    finally:
        server.stop()


def _spans(otlp_json: dict) -> list[dict]:
    return [span for rs in otlp_json["result"]["resourceSpans"]
            for ss in rs["scopeSpans"] for span in ss["spans"]]


def test_a_reconcile_pass_trace_can_be_looked_up_in_jaeger_by_its_id(
        jaeger: Jaeger, apiserver: ApiServer, platform_server: PlatformServer,
        namespace: str, tmp_path: Path) -> None:
    env = sniffer_env(apiserver, platform_server, namespace, jaeger.otlp_endpoint,
                      OTEL_METRICS_EXPORTER="none")  # Jaeger receives traces only
    program = Program(["reconcile"], env, tmp_path / "reconcile")
    assert program.proc.wait(120) == 0, program.stderr[-3000:]
    # The pass logs its end inside its span: the JSON line carries the trace id.
    finished = next(r for r in program.log_lines() if r["message"] == "reconcile pass finished")
    trace_id = finished["trace_id"]

    deadline = time.monotonic() + 30
    found = jaeger.trace(trace_id)
    while found is None and time.monotonic() < deadline:
        time.sleep(0.2)
        found = jaeger.trace(trace_id)
    assert found is not None, f"trace {trace_id} not in Jaeger:\n{jaeger.log_tail()}"
    spans = _spans(found)
    names = {s["name"] for s in spans}
    assert {"sniffer.reconcile.pass", "sniffer.reconcile.list_pods",
            "sniffer.reconcile.list_runs", "sniffer.reconcile.diff"} <= names
    assert {s["traceId"] for s in spans} == {trace_id}
    services = {attr["value"]["stringValue"]
                for rs in found["result"]["resourceSpans"]
                for attr in rs["resource"]["attributes"] if attr["key"] == "service.name"}
    assert services == {"sniffer-reconcile"}
