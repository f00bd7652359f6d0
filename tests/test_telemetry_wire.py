"""The telemetry `sniffer watch` really sends: OTLP/HTTP protobuf, decoded by a local receiver.

The watcher runs as a subprocess against the testbed's kube-apiserver and the reference
platform; the test plays a kubelet (pods go Running, then Succeeded, with kubelet-shaped
statuses), SIGTERMs the watcher and asserts what arrived: metric names, units, attributes
and values, the span structure (state change → platform call, W3C traceparent on the
platform's side, a link to the pod's traceparent annotation), JSON logs with trace ids,
and that the platform token appears nowhere.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sniffer.podview import OUTCOME_FINALIZER, RUN_ID_LABEL, TRACEPARENT_ANNOTATION
from sniffer.telemetry.catalogue import BY_NAME, SPANS
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from testbed.simulator.lifecycles import Shape
from testbed.simulator.shapes import render
from tests.fixtures.jobs import active_status, attempt_manifest, complete_status, job_manifest
from tests.fixtures.kube import _purge_namespace
from tests.fixtures.kubehttp import STRATEGIC_PATCH, request_sync
from tests.fixtures.otlp import OtlpReceiver, SpanView

ROOT = Path(__file__).resolve().parent.parent
PODS = 3
JOB = "etl"
"""Beside the pod-backed runs, one Job-backed run (the Job path's series, kind Job)."""
JOB_CHANGES = (("queued", "queued"), ("queued", "running"), ("running", "succeeded"))
"""What the Job-backed run shows: its first attempt while queued, then its states."""
POD_KIND = {"sniffer.workload.kind": "Pod"}
JOB_KIND = {"sniffer.workload.kind": "Job"}


# -- helpers: the program, the pods ------------------------------------------------------

def sniffer_env(apiserver: ApiServer, platform: PlatformServer, namespace: str,
                otlp_endpoint: str, **extra: str) -> dict[str, str]:
    """A clean environment (nothing inherited from OTEL_* / SNIFFER_*) for the testbed."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "SNIFFER_")) and k != "KUBECONFIG"}
    env.update({
        "SNIFFER_KUBE_KUBECONFIG": str(apiserver.kubeconfig),
        "SNIFFER_KUBE_NAMESPACES": namespace,
        "SNIFFER_PLATFORM_URL": platform.url,
        "SNIFFER_PLATFORM_TOKEN_FILE": str(platform.token_file),
        "SNIFFER_LEADER_ENABLED": "false",
        "SNIFFER_HEALTH_PORT": "0",
        "SNIFFER_TELEMETRY_LOG_LEVEL": "DEBUG",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


class Program:
    """One `sniffer` subprocess; stdout and stderr go to files, readable while it runs."""

    def __init__(self, args: list[str], env: Mapping[str, str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = workdir / "stdout", workdir / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *args], cwd=ROOT, env=dict(env),
                stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far."""
        out = []
        for line in self.stderr.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def wait_for_log(self, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.log_lines():
                if predicate(record):
                    return record
            if self.proc.poll() is not None:
                raise AssertionError(f"sniffer exited ({self.proc.returncode}):\n{self.stderr}")
            time.sleep(0.1)
        raise AssertionError(f"no such log line within {timeout}s:\n{self.stderr[-4000:]}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code (a kill after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"sniffer ignored SIGTERM for {timeout}s") from None


def new_traceparent() -> tuple[str, str, str]:
    """(traceparent, trace id, span id) of a fresh sampled W3C context."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def make_tracked_pod(apiserver: ApiServer, namespace: str, name: str, run_id: str,
                     traceparent: str) -> None:
    manifest = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {RUN_ID_LABEL: run_id},
                     "annotations": {TRACEPARENT_ANNOTATION: traceparent}},
        # Bound at creation: the testbed has no scheduler.
        "spec": {"restartPolicy": "Never", "nodeName": "node-1",
                 "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "registry.example/batch:1.0",
                                 "command": ["sh", "-c", "train --epochs 1"]}]},
    }
    reply = request_sync(apiserver, "POST", f"/api/v1/namespaces/{namespace}/pods", manifest)
    assert reply.status == 201, reply


def set_status(apiserver: ApiServer, namespace: str, name: str, shape: Shape) -> None:
    """Write the kubelet's status `shape` for the pod as it is now."""
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    pod = request_sync(apiserver, "GET", path)
    assert pod.ok, pod
    reply = request_sync(apiserver, "PATCH", path + "/status",
                         {"status": render(shape, pod.body, time.time())},
                         content_type=STRATEGIC_PATCH)
    assert reply.ok, reply


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `check` until true: a hang guard, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def scraped_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` in a Prometheus text page whose labels
    include `labels` (in any order); None if there is none."""
    found = []
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append(float(match.group(3)))
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def create_namespace(apiserver: ApiServer, stem: str) -> str:
    name = f"t-{stem}-{secrets.token_hex(3)}"
    reply = request_sync(apiserver, "POST", "/api/v1/namespaces",
                         {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert reply.status == 201, reply
    return name


# -- the scenario, played once for the module ----------------------------------------------

@dataclass
class Pod:
    name: str
    run_id: str
    traceparent: str
    trace_id: str
    span_id: str


@dataclass
class WatchSession:
    namespace: str
    pods: list[Pod]
    job_run_id: str
    receiver: OtlpReceiver
    program: Program
    exit_code: int
    token: str
    updates: list[dict[str, Any]]
    scraped: str
    resource_env: dict[str, str] = field(default_factory=dict)


def _submitted_pods(apiserver: ApiServer, platform_server: PlatformServer,
                   namespace: str) -> list[Pod]:
    """PODS runs on the platform, each with its tracked pod carrying a traceparent."""
    salt = secrets.token_hex(3)
    pods = []
    for i in range(PODS):
        traceparent, trace_id, span_id = new_traceparent()
        pod = Pod(f"train-{i}", f"tel-watch-{salt}-{i}", traceparent, trace_id, span_id)
        platform_server.create_run(pod.run_id, pod_namespace=namespace, pod_name=pod.name)
        make_tracked_pod(apiserver, namespace, pod.name, pod.run_id, traceparent)
        pods.append(pod)
    return pods


def _submitted_job(apiserver: ApiServer, platform_server: PlatformServer,
                   namespace: str) -> tuple[str, dict[str, Any]]:
    """A Job-backed run on the platform and its Job (no attempt yet)."""
    run_id = f"tel-job-{secrets.token_hex(3)}"
    platform_server.create_run(run_id, pod_namespace=namespace, pod_name=JOB)
    reply = request_sync(apiserver, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs",
                         job_manifest(namespace, JOB, run_id))
    assert reply.status == 201, reply
    return run_id, reply.body


def set_job_status(apiserver: ApiServer, namespace: str, status: dict[str, Any]) -> None:
    """Write the Job's status as the Job controller would (no controller runs here)."""
    reply = request_sync(apiserver, "PATCH",
                         f"/apis/batch/v1/namespaces/{namespace}/jobs/{JOB}/status",
                         {"status": status}, content_type="application/merge-patch+json")
    assert reply.ok, reply


@pytest.fixture(scope="module")
def watched(apiserver: ApiServer, platform_server: PlatformServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[WatchSession]:
    if not platform_server.running:
        platform_server.restart()
    platform_server.clear_faults()
    namespace = create_namespace(apiserver, "telemetry-watch")
    receiver = OtlpReceiver().start()
    pods = _submitted_pods(apiserver, platform_server, namespace)
    job_run_id, job = _submitted_job(apiserver, platform_server, namespace)
    resource_env = {"k8s.pod.name": "sniffer-watch-7d9f-x2k4", "k8s.namespace.name": "sniffer",
                    "k8s.node.name": "node-7"}
    env = sniffer_env(apiserver, platform_server, namespace, receiver.endpoint,
                      OTEL_RESOURCE_ATTRIBUTES=",".join(f"{k}={v}"
                                                        for k, v in resource_env.items()),
                      OTEL_LOGS_EXPORTER="otlp", SNIFFER_TELEMETRY_PROMETHEUS_PORT="0")
    program = Program(["watch"], env, tmp_path_factory.mktemp("sniffer-watch"))
    try:
        configured = program.wait_for_log(lambda r: r.get("message") == "telemetry configured")
        program.wait_for_log(lambda r: r.get("message") == "seeded acknowledgements")

        def platform_states(state: str) -> Callable[[], bool]:
            return lambda: all((platform_server.get_run(run_id) or {}).get("state") == state
                               for run_id in [p.run_id for p in pods] + [job_run_id])

        reply = request_sync(apiserver, "POST", f"/api/v1/namespaces/{namespace}/pods",
                             attempt_manifest(job, f"{JOB}-a", job_run_id))
        assert reply.status == 201, reply
        # The platform learns of the attempt while the run is queued; waiting for it keeps
        # that change from coalescing with the next (the counts below are exact).
        wait_for(lambda: (platform_server.get_run(job_run_id) or {}).get("attempts") == 1,
                 "the platform to show the Job's first attempt")
        set_status(apiserver, namespace, f"{JOB}-a", Shape.RUNNING)
        set_job_status(apiserver, namespace, active_status(None))
        for pod in pods:
            set_status(apiserver, namespace, pod.name, Shape.RUNNING)
        wait_for(platform_states("running"), "the runs to be running")
        set_status(apiserver, namespace, f"{JOB}-a", Shape.SUCCEEDED)
        set_job_status(apiserver, namespace, complete_status())
        for pod in pods:
            set_status(apiserver, namespace, pod.name, Shape.SUCCEEDED)
        wait_for(platform_states("succeeded"), "the runs to be succeeded")

        def finalizers_released() -> bool:
            paths = [f"/api/v1/namespaces/{namespace}/pods/{p.name}" for p in pods]
            for path in [*paths, f"/apis/batch/v1/namespaces/{namespace}/jobs/{JOB}"]:
                body = request_sync(apiserver, "GET", path).body
                if OUTCOME_FINALIZER in (body["metadata"].get("finalizers") or []):
                    return False
            return True

        wait_for(finalizers_released, "the finalizers to be released")
        scrape_url = f"http://127.0.0.1:{configured['prometheus_port']}/metrics"
        scraped = ""

        def scraped_all() -> bool:
            nonlocal scraped
            scraped = urllib.request.urlopen(scrape_url, timeout=10).read().decode()
            acked = {kind: scraped_value(scraped, "sniffer_changes_acknowledged_total",
                                         sniffer_state="succeeded", sniffer_workload_kind=kind)
                     for kind in ("Pod", "Job")}
            held = scraped_value(scraped, "sniffer_finalizers_held")
            return acked == {"Pod": PODS, "Job": 1} and held == 0

        wait_for(scraped_all, "the scrape endpoint to show the acknowledgements")
        exit_code = program.terminate()
        ours = {p.run_id for p in pods}
        updates = [u for u in platform_server.updates() if u["run_id"] in ours]
        yield WatchSession(namespace, pods, job_run_id, receiver, program, exit_code,
                           platform_server.token, updates, scraped, resource_env)
    finally:
        if program.proc.poll() is None:
            program.proc.kill()
            program.proc.wait()
        receiver.stop()
        _purge_namespace(apiserver, namespace)


def _total(receiver: OtlpReceiver, name: str, **attributes: Any) -> float:
    """The latest value of a sum/gauge, summed over the series matching `attributes`."""
    return sum(p.value or 0 for p in receiver.latest(name)
               if all(p.attributes.get(k) == v for k, v in attributes.items()))


# -- metrics -------------------------------------------------------------------------------

def test_watcher_exits_cleanly_after_sigterm_and_the_receiver_accepted_everything(
        watched: WatchSession) -> None:
    assert watched.exit_code == 0, watched.program.stderr[-3000:]
    assert watched.receiver.errors == []
    assert watched.receiver.metrics()
    assert watched.receiver.spans()
    assert watched.receiver.logs()


def test_acknowledged_counter_equals_the_state_changes_made(watched: WatchSession) -> None:
    r = watched.receiver
    for state in ("running", "succeeded"):
        assert _total(r, "sniffer.changes.acknowledged", **POD_KIND,
                      **{"sniffer.state": state}) == PODS, state
    assert _total(r, "sniffer.changes.sent", **POD_KIND) == 2 * PODS  # no retries needed
    for state in ("queued", "running", "succeeded"):
        for sink in ("sniffer.changes.sent", "sniffer.changes.acknowledged"):
            assert _total(r, sink, **JOB_KIND, **{"sniffer.state": state}) == 1, (sink, state)
    assert _total(r, "sniffer.changes.dropped") == 0
    point = r.latest("sniffer.changes.acknowledged")[0]
    assert (point.type, point.monotonic, point.unit) == ("sum", True, "{change}")
    applied = _total(r, "sniffer.platform.updates", **{"sniffer.update.outcome": "applied"})
    assert applied == 2 * PODS + len(JOB_CHANGES)
    # The platform saw exactly these changes too.
    assert sorted((u["from_state"], u["to_state"]) for u in watched.updates) == sorted(
        [("queued", "running")] * PODS + [("running", "succeeded")] * PODS)


def test_end_to_end_latency_histogram_counts_each_change_in_seconds(
        watched: WatchSession) -> None:
    points = watched.receiver.latest("sniffer.change.latency")
    assert {p.type for p in points} == {"histogram"}
    assert {p.unit for p in points} == {"s"}
    by_kind = {kind: sum(p.count for p in points
                         if p.attributes["sniffer.workload.kind"] == kind)
               for kind in ("Pod", "Job")}
    assert by_kind == {"Pod": 2 * PODS, "Job": len(JOB_CHANGES)}
    by_state = {p.attributes["sniffer.state"] for p in points
                if p.attributes["sniffer.workload.kind"] == "Pod"}
    assert by_state == {"running", "succeeded"}
    for p in points:
        assert p.attributes["sniffer.latency.origin"] in ("status", "observed")
        assert p.bounds == BY_NAME["sniffer.change.latency"].buckets
        assert 0 <= p.sum < 60 * p.count


def test_pipeline_metrics_report_the_work_done(watched: WatchSession) -> None:
    r = watched.receiver
    assert _total(r, "sniffer.watch.events", **{"sniffer.watch.event.type": "MODIFIED"}) >= \
        2 * PODS
    assert _total(r, "sniffer.watch.relists", **{"sniffer.relist.cause": "initial"}) >= 1 or \
        _total(r, "sniffer.watch.relists") >= 1
    assert _total(r, "sniffer.queue.adds", **{"sniffer.queue.name": "pods"}) >= 2 * PODS
    assert _total(r, "sniffer.queue.adds", **{"sniffer.queue.name": "finalizers"}) >= PODS
    assert _total(r, "sniffer.queue.adds", **{"sniffer.queue.name": "jobs"}) >= 2
    assert _total(r, "sniffer.watch.relists", **JOB_KIND) >= 1
    assert _total(r, "sniffer.watch.events", **JOB_KIND,
                  **{"sniffer.watch.event.type": "MODIFIED"}) >= 2
    for kind, runs in ((POD_KIND, PODS), (JOB_KIND, 1)):
        assert _total(r, "sniffer.handler.outcomes", **kind,
                      **{"sniffer.outcome": "done"}) >= 2 * runs
        # Patches sent: a handler working from a cache that lags its own patch may send
        # one twice.
        for op in ("added", "removed"):
            assert _total(r, "sniffer.finalizer.operations", **kind,
                          **{"sniffer.finalizer.operation": op}) >= runs, (kind, op)
    assert _total(r, "sniffer.runs.orphaned") == 0
    assert _total(r, "sniffer.cache.pods") == PODS + 1  # the Job's attempt pod too
    assert _total(r, "sniffer.finalizers.held") == 0
    assert _total(r, "sniffer.queue.depth") == 0
    assert _total(r, "sniffer.freshness") == 0
    assert _total(r, "sniffer.leader.status") == 1
    work = r.latest("sniffer.queue.work_duration")
    assert sum(p.count for p in work) >= 2 * PODS
    patches = [p for p in r.latest("sniffer.platform.request.duration")
               if p.attributes.get("http.request.method") == "PATCH"]
    assert patches
    assert all(p.attributes["url.template"] == "/api/v1/runs/{id}" for p in patches)
    assert sum(p.count for p in patches
               if p.attributes.get("http.response.status_code") == 200) == \
        2 * PODS + len(JOB_CHANGES)


def test_every_exported_metric_is_in_the_catalogue_with_its_unit_and_attributes(
        watched: WatchSession) -> None:
    seen = set()
    for point in watched.receiver.metrics():
        metric = BY_NAME.get(point.name)
        assert metric is not None, f"{point.name} is exported but not in the catalogue"
        assert point.unit == metric.unit, point.name
        assert set(point.attributes) <= set(metric.attributes), (point.name, point.attributes)
        expected_type = {"counter": "sum", "gauge": "gauge", "histogram": "histogram"}
        assert point.type == expected_type[metric.kind], point.name
        seen.add(point.name)
    watch_metrics = {m.name for m in BY_NAME.values() if m.component in ("watch", "both")}
    # Every watch metric was reported (counters that stayed at zero report 0).
    missing = watch_metrics - seen - {"sniffer.watch.restarts", "sniffer.watch.malformed",
                                      "sniffer.changes.dropped"}
    assert not missing, missing


def test_resource_attributes_come_from_the_environment(watched: WatchSession) -> None:
    resources = [p.resource for p in watched.receiver.metrics()] + [
        s.resource for s in watched.receiver.spans()]
    for resource in resources:
        assert resource["service.name"] == "sniffer-watch"
        assert resource["service.namespace"] == "sniffer"
        for key, value in watched.resource_env.items():
            assert resource[key] == value


def test_prometheus_endpoint_serves_the_same_catalogue(watched: WatchSession) -> None:
    assert "# TYPE sniffer_change_latency_seconds histogram" in watched.scraped
    assert scraped_value(watched.scraped, "sniffer_changes_acknowledged_total",
                         sniffer_state="running", sniffer_workload_kind="Pod") == PODS


# -- traces --------------------------------------------------------------------------------

def _state_changes(watched: WatchSession, kind: str = "Pod") -> list[SpanView]:
    return [s for s in watched.receiver.spans() if s.name == "sniffer.state_change"
            and s.attributes["sniffer.workload.kind"] == kind]


def test_one_state_change_span_per_change_with_a_platform_child_span(
        watched: WatchSession) -> None:
    spans = watched.receiver.spans()
    changes = _state_changes(watched)
    assert len(changes) == 2 * PODS
    by_id = {s.span_id: s for s in spans}
    for change in changes:
        assert change.kind == "SPAN_KIND_INTERNAL"
        assert change.parent_span_id == ""
        assert change.attributes["k8s.namespace.name"] == watched.namespace
        assert {change.attributes["sniffer.state.from"], change.attributes["sniffer.state.to"]} \
            in ({"queued", "running"}, {"running", "succeeded"})
        assert change.attributes["sniffer.attempt"] == 1
        children = [s for s in spans if s.parent_span_id == change.span_id]
        assert [c.name for c in children] == ["PATCH /api/v1/runs/{id}"], children
        child = children[0]
        assert child.kind == "SPAN_KIND_CLIENT"
        assert child.trace_id == change.trace_id
        assert child.attributes["http.response.status_code"] == 200
        assert child.attributes["server.address"] == "127.0.0.1"
        assert by_id[child.span_id] is child


def test_a_job_backed_runs_changes_are_spans_of_kind_job(watched: WatchSession) -> None:
    spans = watched.receiver.spans()
    changes = _state_changes(watched, "Job")
    assert sorted((c.attributes["sniffer.state.from"], c.attributes["sniffer.state.to"])
                  for c in changes) == list(JOB_CHANGES)
    for change in changes:
        assert change.attributes["sniffer.run_id"] == watched.job_run_id
        assert change.attributes["k8s.job.name"] == JOB
        assert change.attributes["k8s.namespace.name"] == watched.namespace
        assert change.attributes["sniffer.job.attempts"] == 1
        children = [s.name for s in spans if s.parent_span_id == change.span_id]
        assert children == ["PATCH /api/v1/runs/{id}"], children


def test_state_change_span_links_to_the_pods_traceparent(watched: WatchSession) -> None:
    by_run = {p.run_id: p for p in watched.pods}
    for change in _state_changes(watched):
        pod = by_run[change.attributes["sniffer.run_id"]]
        assert change.links == [(pod.trace_id, pod.span_id)]


def test_platform_receives_w3c_traceparent_of_the_platform_call(watched: WatchSession) -> None:
    patches = {(s.trace_id, s.span_id) for s in watched.receiver.spans()
               if s.name == "PATCH /api/v1/runs/{id}"}
    assert len(watched.updates) == 2 * PODS
    for update in watched.updates:
        match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}",
                             update["traceparent"] or "")
        assert match, update
        assert (match.group(1), match.group(2)) in patches


# -- logs and secrets ----------------------------------------------------------------------

def test_json_log_lines_carry_the_trace_and_span_of_their_context(
        watched: WatchSession) -> None:
    lines = watched.program.log_lines()
    assert lines
    assert all({"time", "level", "logger", "message"} <= set(r) for r in lines)
    spans = {(s.trace_id, s.span_id): s for s in watched.receiver.spans()}
    in_span = [r for r in lines if "trace_id" in r]
    patch_lines = [r for r in in_span if r["message"].startswith("PATCH /api/v1/runs/{id} -> ")]
    assert len(patch_lines) == 2 * PODS + len(JOB_CHANGES)  # the Job-backed run's too
    for record in patch_lines:
        assert spans[(record["trace_id"], record["span_id"])].name == "PATCH /api/v1/runs/{id}"
    exported = [r for r in watched.receiver.logs() if r["trace_id"]]
    assert any(r["body"].startswith("PATCH /api/v1/runs/{id} -> ") for r in exported)


def test_the_platform_token_appears_in_no_exported_span_metric_or_log(
        watched: WatchSession) -> None:
    token = watched.token
    assert len(token) >= 16
    for body in watched.receiver.raw:
        assert token.encode() not in body
    for text in (watched.program.stderr, watched.program.stdout, watched.scraped):
        assert token not in text
    for headers in watched.receiver.headers:
        assert token not in json.dumps(headers)


# -- sniffer reconcile: one trace per pass, everything exported at exit ---------------------

@dataclass
class ReconcileSession:
    namespace: str
    receiver: OtlpReceiver
    program: Program
    exit_code: int
    report: dict[str, Any]
    token: str
    run_ids: dict[str, str]


def _advance(platform: PlatformServer, run_id: str, *states: str) -> None:
    current = "queued"
    for state in states:
        status, body = platform.patch_run(run_id, state=state, expected_state=current)
        assert status == 200, body
        current = state


@pytest.fixture(scope="module")
def reconciled(apiserver: ApiServer, platform_server: PlatformServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReconcileSession]:
    """One `sniffer reconcile` pass over three mismatches: two pods ahead of their runs
    (running, succeeded) and a running run whose pod is gone."""
    if not platform_server.running:
        platform_server.restart()
    platform_server.clear_faults()
    namespace = create_namespace(apiserver, "telemetry-reconcile")
    receiver = OtlpReceiver().start()
    salt = secrets.token_hex(3)
    run_ids = {name: f"tel-rec-{salt}-{name}" for name in ("ahead-running", "ahead-done",
                                                            "lost")}
    for name in ("ahead-running", "ahead-done"):
        platform_server.create_run(run_ids[name], pod_namespace=namespace, pod_name=name)
        make_tracked_pod(apiserver, namespace, name, run_ids[name], new_traceparent()[0])
    set_status(apiserver, namespace, "ahead-running", Shape.RUNNING)
    set_status(apiserver, namespace, "ahead-done", Shape.RUNNING)
    set_status(apiserver, namespace, "ahead-done", Shape.SUCCEEDED)
    platform_server.create_run(run_ids["lost"], pod_namespace=namespace, pod_name="lost")
    _advance(platform_server, run_ids["lost"], "running")
    env = sniffer_env(apiserver, platform_server, namespace, receiver.endpoint,
                      SNIFFER_RECONCILE_GRACE_PERIOD_S="0", OTEL_LOGS_EXPORTER="otlp")
    program = Program(["reconcile", "--output", "json"], env,
                      tmp_path_factory.mktemp("sniffer-reconcile"))
    try:
        exit_code = program.proc.wait(120)
        report = json.loads(program.stdout)
        yield ReconcileSession(namespace, receiver, program, exit_code, report,
                               platform_server.token, run_ids)
    finally:
        if program.proc.poll() is None:
            program.proc.kill()
            program.proc.wait()
        receiver.stop()
        _purge_namespace(apiserver, namespace)


def test_reconcile_pass_repairs_and_exits_zero(reconciled: ReconcileSession) -> None:
    assert reconciled.exit_code == 0, reconciled.program.stderr[-3000:]
    assert reconciled.report["repaired"] == {"pod_ahead": 2, "pod_lost": 1,
                                             "finalizer_left": 0, "job_ahead": 0,
                                             "job_lost": 0, "app_ahead": 0, "app_lost": 0}
    assert reconciled.receiver.errors == []


def test_reconcile_pass_is_one_trace_with_child_spans(reconciled: ReconcileSession) -> None:
    spans = reconciled.receiver.spans()
    passes = [s for s in spans if s.name == "sniffer.reconcile.pass"]
    assert len(passes) == 1
    root = passes[0]
    assert root.parent_span_id == ""
    assert root.attributes["sniffer.repaired"] == 3
    trace = [s for s in spans if s.trace_id == root.trace_id]
    children = sorted(s.name for s in trace if s.parent_span_id == root.span_id)
    assert children == ["sniffer.reconcile.diff", "sniffer.reconcile.list_jobs",
                        "sniffer.reconcile.list_pods", "sniffer.reconcile.list_runs",
                        ] + ["sniffer.reconcile.repair"] * 3
    for repair in (s for s in trace if s.name == "sniffer.reconcile.repair"):
        calls = [s.name for s in trace if s.parent_span_id == repair.span_id]
        assert "PATCH /api/v1/runs/{id}" in calls, calls
    list_runs = next(s for s in trace if s.name == "sniffer.reconcile.list_runs")
    assert [s.name for s in trace if s.parent_span_id == list_runs.span_id][:1] == [
        "GET /api/v1/runs"]
    # Every span of the process belongs to the pass.
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert {s.resource["service.name"] for s in spans} == {"sniffer-reconcile"}


def test_reconcile_metrics_count_mismatches_and_repairs_by_kind(
        reconciled: ReconcileSession) -> None:
    r = reconciled.receiver
    assert _total(r, "sniffer.reconcile.mismatches", **{"sniffer.mismatch.kind": "pod_ahead"}) \
        == 2
    assert _total(r, "sniffer.reconcile.mismatches", **{"sniffer.mismatch.kind": "pod_lost"}) \
        == 1
    assert _total(r, "sniffer.reconcile.repairs", **{"sniffer.mismatch.kind": "pod_ahead"}) == 2
    assert _total(r, "sniffer.reconcile.repairs", **{"sniffer.mismatch.kind": "pod_lost"}) == 1
    assert _total(r, "sniffer.reconcile.repair_failures") == 0
    assert _total(r, "sniffer.reconcile.pods") == 2
    assert _total(r, "sniffer.reconcile.runs") >= 3
    (duration,) = r.latest("sniffer.reconcile.duration")
    assert (duration.count, duration.unit) == (1, "s")
    assert duration.attributes == {"sniffer.reconcile.result": "ok"}
    (last,) = r.latest("sniffer.reconcile.last_success")
    assert last.unit == "s"
    assert last.value is not None
    assert abs(last.value - time.time()) < 300
    assert _total(r, "sniffer.platform.updates", **{"sniffer.update.outcome": "applied"}) == 3
    for point in r.metrics():
        metric = BY_NAME[point.name]
        assert metric.component in ("reconcile", "both")
        assert point.unit == metric.unit


def test_reconcile_exports_no_token(reconciled: ReconcileSession) -> None:
    for body in reconciled.receiver.raw:
        assert reconciled.token.encode() not in body
    for text in (reconciled.program.stderr, reconciled.program.stdout):
        assert reconciled.token not in text


def test_reconcile_stopped_by_sigterm_still_exports_its_pass(
        apiserver: ApiServer, platform_server: PlatformServer, namespace: str,
        tmp_path: Path) -> None:
    receiver = OtlpReceiver().start()
    platform_server.set_faults(latency_ms=30_000)  # the run listing hangs
    try:
        env = sniffer_env(apiserver, platform_server, namespace, receiver.endpoint)
        program = Program(["reconcile"], env, tmp_path)
        program.wait_for_log(lambda r: r.get("message") == "listing" and
                             r.get("phase") == "runs")
        assert program.terminate() == 3, program.stderr[-3000:]
    finally:
        platform_server.clear_faults()
        receiver.stop()
    (root,) = [s for s in receiver.spans() if s.name == "sniffer.reconcile.pass"]
    assert root.attributes["sniffer.interrupted"] is True
    (duration,) = receiver.latest("sniffer.reconcile.duration")
    assert duration.attributes == {"sniffer.reconcile.result": "interrupted"}
    assert receiver.latest("sniffer.reconcile.last_success") == []


def test_every_exported_span_and_its_attributes_are_documented(
        watched: WatchSession, reconciled: ReconcileSession) -> None:
    documented = {s.name: set(s.attributes) for s in SPANS}
    spans = watched.receiver.spans() + reconciled.receiver.spans()
    for span in spans:
        assert span.name in documented, span.name
        assert set(span.attributes) <= documented[span.name], (span.name, span.attributes)
    names = {s.name for s in spans}
    assert {"sniffer.state_change", "PATCH /api/v1/runs/{id}", "GET /api/v1/runs",
            "sniffer.reconcile.pass", "sniffer.reconcile.repair"} <= names


def test_sniffers_share_of_the_latency_is_exported_split_by_step(
        watched: WatchSession) -> None:
    """Watch delivery, queue wait (by queue and priority), the handler and the platform
    call each arrive as a histogram in seconds, one sample per step taken."""
    r = watched.receiver
    delivery = r.latest("sniffer.watch.delivery")
    assert {(p.type, p.unit) for p in delivery} == {("histogram", "s")}
    # Every ADDED/MODIFIED/DELETED event of the pods and Jobs was timed from its framed
    # bytes.
    for kind in ("Pod", "Job"):
        timed = _total(r, "sniffer.watch.events", **{"sniffer.workload.kind": kind,
                                                      "sniffer.watch.event.type": "MODIFIED"})
        assert sum(p.count for p in delivery
                   if p.attributes["sniffer.workload.kind"] == kind) >= timed >= \
            (2 * PODS if kind == "Pod" else 2), kind
    assert all(p.bounds == BY_NAME["sniffer.watch.delivery"].buckets for p in delivery)
    waits = r.latest("sniffer.queue.duration")
    assert {p.unit for p in waits} == {"s"}
    by = {(p.attributes["sniffer.queue.name"], p.attributes["sniffer.priority"]): p.count
          for p in waits}
    # Pods created after the watcher started are seen on the watch: live changes.
    assert by.get(("pods", "live"), 0) >= 2 * PODS
    assert set(by) <= {(q, pr) for q in ("pods", "jobs", "finalizers")
                       for pr in ("live", "list")}
    work = {p.attributes["sniffer.queue.name"]: p.count
            for p in r.latest("sniffer.queue.work_duration")}
    assert work["pods"] >= 2 * PODS
    assert work["finalizers"] >= PODS
    platform = sum(p.count for p in r.latest("sniffer.platform.request.duration"))
    assert platform >= 2 * PODS
