"""`make demo`: Sniffer's main job on the built-in testbed, narrated.

What it shows, in order:
1. A real kube-apiserver and the reference platform start (built once, then cached).
2. `sniffer watch` runs (leader-elected, finalizer mode) while the simulator submits a
   few hundred jobs, notebooks and apps with mixed outcomes; a live line shows pods,
   platform states, the work queue and freshness.
3. The watcher is paused; the simulator keeps going. Then `sniffer reconcile` shows
   the mismatches (dry run) and repairs them, and the watcher comes back.
4. A closing summary: runs by platform state against pods by phase, mismatches with the
   simulator's expectations (must be 0), runs that went backwards (must be 0), and the
   end-to-end latency percentiles of the live phase.
Exit status 0 iff there are no mismatches. Everything lives under ``.testbed/demo`` and is
removed at the end (logs are kept there for a look). ``--node real`` runs the demo on the
real node instead (`testbed.realdemo`: real pods, the kubelet writes every status).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from config import Settings, load_settings
from sniffer.kube import KubeClient
from sniffer.logs import JsonFormatter
from testbed import apiserver as kube_testbed
from testbed import realnode
from testbed.build import ensure_binaries
from testbed.jaeger import Jaeger, cached_jaeger
from testbed.jaeger import start as start_jaeger
from testbed.platform.launcher import PlatformServer, launch
from testbed.simulator.config import SimConfig
from testbed.simulator.driver import Progress, simulate
from testbed.simulator.lifecycles import Expectation
from testbed.simulator.records import SimResult
from testbed.verdict import Mismatch, latencies, mismatches, percentile, regressions

NAMESPACE = "sniffer-demo"
_TTY = sys.stderr.isatty()


def say(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)


def live(text: str) -> None:
    if _TTY:
        print("\r\033[K" + text, end="", file=sys.stderr, flush=True)
    else:
        say(text)


def watch_env(server: kube_testbed.ApiServer, platform: PlatformServer) -> dict[str, str]:
    return {
        "SNIFFER_KUBE_KUBECONFIG": str(server.kubeconfig),
        "SNIFFER_KUBE_NAMESPACES": NAMESPACE,
        "SNIFFER_PLATFORM_URL": platform.url,
        "SNIFFER_PLATFORM_TOKEN_FILE": str(platform.token_file),
        "SNIFFER_LEADER_LEASE_NAMESPACE": NAMESPACE,
        "SNIFFER_LEADER_IDENTITY": "demo-watcher",
        "SNIFFER_HEALTH_PORT": "0",
        "SNIFFER_RECONCILE_GRACE_PERIOD_S": "5",
        "SNIFFER_TELEMETRY_LOG_LEVEL": "INFO",
    }


class LiveWatcher:
    """`sniffer watch` as a child process (as in production: its own interpreter), so the
    demo can pause (SIGTERM) and resume it; its /healthz feeds the live line."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._env = env
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0

    def start(self) -> None:
        self._port = _free_port()
        env = {**os.environ, **self._env, "SNIFFER_HEALTH_PORT": str(self._port),
               "SNIFFER_HEALTH_HOST": "127.0.0.1"}
        with open(self._log, "ab") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", "cli", "watch"],
                                          env=env, stdout=out, stderr=out)

    async def stop(self) -> None:
        if self._proc is not None:
            # A watcher still importing has no SIGTERM handler yet: let it come up first.
            for _ in range(200):
                if self.status() != "watcher starting" or self._proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            self._proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(self._proc.wait, 60)
            if code != 0:
                say(f"   (the watcher exited with {code}; see {self._log})")
            self._proc = None

    def status(self) -> str:
        if self._proc is None:
            return "watcher paused"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self._port}/healthz",
                                        timeout=1) as r:
                info = json.loads(r.read())
        except (OSError, ValueError):
            return "watcher starting"
        return (f"watcher: {'leader' if info.get('leader') else 'standby'}, "
                f"{info.get('cached_pods')} pods cached, queue {info.get('queue_depth')}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def progress_line(label: str, platform: PlatformServer,
                  watcher: LiveWatcher) -> Callable[[Progress], None]:
    shown = [0.0]

    def show(p: Progress) -> None:
        if not _TTY and time.monotonic() - shown[0] < 5 and p.finished < p.total:
            return
        shown[0] = time.monotonic()
        states = platform.stats().get("runs_by_state", {})
        platform_part = " ".join(f"{k[:4]} {v}" for k, v in states.items() if v)
        live(f"[{label}] {p.elapsed_s:5.1f}s  pods: created {p.created}/{p.total}, "
             f"finished {p.finished}  |  platform: {platform_part}  |  {watcher.status()}")
    return show


async def pod_names(kube: KubeClient) -> set[str]:
    """Run ids of the tracked pods that still exist."""
    out: set[str] = set()
    token = None
    while True:
        page = await kube.list_pods(NAMESPACE, label_selector="sniffer.io/run-id", limit=500,
                                    continue_token=token)
        out.update(p["metadata"]["labels"]["sniffer.io/run-id"] for p in page.items)
        token = page.continue_token
        if token is None:
            return out


async def pods_by_phase(kube: KubeClient) -> Counter[str]:
    phases: Counter[str] = Counter()
    token = None
    while True:
        page = await kube.list_pods(NAMESPACE, label_selector="sniffer.io/run-id", limit=500,
                                    continue_token=token)
        for pod in page.items:
            deleting = pod["metadata"].get("deletionTimestamp")
            phases[("Terminating/" if deleting else "") + pod["status"].get("phase", "?")] += 1
        token = page.continue_token
        if token is None:
            return phases


def start_tracing(workdir: Path) -> Jaeger | None:
    """Jaeger v2 from the testbed cache, if built (`python -m testbed.jaeger build`)."""
    binary = cached_jaeger()
    if binary is None:
        say("   (no tracing backend: `python -m testbed.jaeger build` once adds Jaeger)")
        return None
    jaeger = start_jaeger(workdir / "jaeger", binary=binary)
    say(f"   Jaeger v2 receives the watcher's traces at {jaeger.otlp_endpoint}")
    return jaeger


def show_a_trace(jaeger: Jaeger, updates: list[dict[str, Any]]) -> None:
    """Look one run's state change up in Jaeger by the trace id the platform received."""
    for update in reversed(updates):
        parts = (update.get("traceparent") or "").split("-")
        if len(parts) != 4:
            continue
        trace_id = parts[1]
        deadline = time.monotonic() + 10
        found = jaeger.trace(trace_id)
        while found is None and time.monotonic() < deadline:
            time.sleep(0.5)
            found = jaeger.trace(trace_id)
        if found is None:
            continue
        names = [span["name"] for rs in found["result"]["resourceSpans"]
                 for ss in rs["scopeSpans"] for span in ss["spans"]]
        say(f"   trace of run {update['run_id']} ({update['from_state']} -> "
            f"{update['to_state']}): {trace_id}, spans {sorted(names)}")
        say(f"   look it up: curl {jaeger.query_url}/api/v3/traces/{trace_id}  "
            "(the trace_id of any JSON log line works too)")
        return
    say("   no trace found in Jaeger")


@dataclasses.dataclass
class Testbed:
    server: kube_testbed.ApiServer
    platform: PlatformServer
    kube: KubeClient
    node: realnode.RealNode | None


@contextlib.asynccontextmanager
async def testbed_up(workdir: Path, *, real_node: bool = False) -> AsyncIterator[Testbed]:
    """The demo's testbed: the API server, a real node if asked (its controller-manager
    keeps the default pod GC threshold, so finished pods stay), the reference platform
    and a client; stopped in the reverse order on leaving."""
    binaries = await asyncio.to_thread(ensure_binaries)
    async with contextlib.AsyncExitStack() as stack:
        server = await asyncio.to_thread(kube_testbed.start, workdir / "kube",
                                         kubectl=binaries.kubectl)
        stack.callback(server.stop)
        node = None
        if real_node:
            node = await asyncio.to_thread(realnode.start, workdir / "node", server)
            stack.push_async_callback(asyncio.to_thread, node.stop)
        platform = await asyncio.to_thread(launch, workdir / "platform")
        stack.callback(platform.stop)
        kube = await KubeClient.connect(kubeconfig=str(server.kubeconfig))
        stack.push_async_callback(kube.close)
        yield Testbed(server, platform, kube, node)


def judged(platform: PlatformServer, expected: dict[str, Expectation],
           ) -> tuple[dict[str, Any], list[Mismatch], list[Mapping[str, Any]]]:
    """The platform's runs now, those that differ from what was expected, and every
    update that moved a run backwards."""
    runs = {r["id"]: r for r in platform.list_runs()}
    return runs, mismatches(expected, runs), regressions(platform.updates())


async def run_demo(jobs: int, paused_jobs: int, rate: float, workdir: Path) -> int:
    say("== Sniffer demo ==")
    say("1. Starting the testbed: a real kube-apiserver (built from Go modules once, then "
        "cached) and the reference platform")
    async with testbed_up(workdir) as bed:
        return await _scenario(bed.server, bed.platform, bed.kube, jobs, paused_jobs, rate,
                               workdir)


async def _scenario(server: kube_testbed.ApiServer, platform: PlatformServer,
                    kube: KubeClient, jobs: int, paused_jobs: int, rate: float,
                    workdir: Path) -> int:
    say(f"   API server {server.url}, platform {platform.url}; logs in {workdir}")
    env = watch_env(server, platform)
    s = load_settings(env=env)
    jaeger = await asyncio.to_thread(start_tracing, workdir)
    if jaeger is not None:
        env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
                    "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none",
                    "OTEL_SDK_DISABLED": "false"})
    try:
        return await _scenario_traced(platform, kube, jobs, paused_jobs, rate, workdir,
                                      env, s, jaeger)
    finally:
        if jaeger is not None:
            jaeger.stop()


async def _scenario_traced(platform: PlatformServer, kube: KubeClient, jobs: int,
                           paused_jobs: int, rate: float, workdir: Path,
                           env: dict[str, str], s: Settings, jaeger: Jaeger | None) -> int:
    watcher = LiveWatcher(env, workdir / "watch.log")
    sim = SimConfig(jobs=jobs, rate=rate, namespace=NAMESPACE, seed=7, run_prefix="live",
                    progress_interval_s=0.5)
    say(f"\n2. sniffer watch is running; the simulator submits {jobs} workloads "
        f"at {rate:g}/s with mixed outcomes")
    watcher.start()
    live_result = await simulate(kube, platform.url, platform.token_file, sim,
                                 progress=progress_line("live", platform, watcher),
                                 records_path=workdir / "live-records.jsonl")
    await _settle(platform, live_result, watcher)
    say("")
    live_updates = platform.updates()
    e2e = latencies(live_result.changes, live_updates)

    say(f"\n3. Pausing the watcher; {paused_jobs} more workloads run while nobody watches")
    await watcher.stop()
    paused = SimConfig(jobs=paused_jobs, rate=rate, namespace=NAMESPACE, seed=8,
                       run_prefix="paused", progress_interval_s=0.5)
    paused_result = await simulate(kube, platform.url, platform.token_file, paused,
                                   progress=progress_line("paused", platform, watcher),
                                   records_path=workdir / "paused-records.jsonl")
    say("")
    await asyncio.sleep(s.reconcile.grace_period_s)  # runs must outlive the grace period
    say("\n   sniffer reconcile --dry-run (what is wrong; nothing is written):")
    from reconcile.app import run_reconcile
    await run_reconcile(s, asyncio.Event(), dry_run=True, only=(), output="table")
    say("\n   sniffer reconcile (repairs):")
    code = await run_reconcile(s, asyncio.Event(), dry_run=False, only=(), output="table")
    say(f"   reconcile exit code {code}")
    say("\n   Resuming the watcher (it releases the finalizers the repairs made moot)")
    watcher.start()
    # A pod created and deleted while nobody watched never got Sniffer's finalizer: its
    # outcome went with it, and "pod lost" is the honest report (cancels are still known
    # from the platform's own cancel flag).
    present = await pod_names(kube)
    lost = {run_id: Expectation(e.state, "PodLost", None)
            for run_id, e in paused_result.expected.items()
            if e.state == "failed" and run_id not in present}
    expected = {**live_result.expected, **paused_result.expected, **lost}
    await _settle_all(platform, expected, watcher)
    await watcher.stop()

    say("\n4. Summary")
    runs, wrong, backwards = judged(platform, expected)
    by_state = Counter(r["state"] for r in runs.values())
    phases = await pods_by_phase(kube)
    say(f"   runs by platform state : {dict(sorted(by_state.items()))}")
    say(f"   pods by phase          : {dict(sorted(phases.items()))}  "
        f"(deleted pods are gone: {len(expected) - sum(phases.values())})")
    say(f"   workloads              : {len(expected)} "
        f"({live_result.finished} live, {paused_result.finished} while paused)")
    say(f"   mismatches             : {len(wrong)}")
    for m in wrong[:10]:
        say(f"     {m.run_id}: expected {m.expected}, platform has {m.actual}")
    say(f"   runs that went backwards: {len(backwards)}")
    if jaeger is not None:
        await asyncio.to_thread(show_a_trace, jaeger, live_updates)
    if e2e:
        say(f"   end-to-end latency (live phase, {len(e2e)} updates): "
            f"p50 {percentile(e2e, 50) * 1000:.0f} ms, p99 {percentile(e2e, 99) * 1000:.0f} ms,"
            f" max {max(e2e) * 1000:.0f} ms")
    ok = not wrong and not backwards
    say("\nDemo " + ("passed: the platform matches every pod." if ok else "FAILED."))
    return 0 if ok else 1


async def _settle(platform: PlatformServer, result: SimResult, watcher: LiveWatcher) -> None:
    await _settle_all(platform, result.expected, watcher)


async def _settle_all(platform: PlatformServer, expected: dict[str, Any],
                      watcher: LiveWatcher, bound_s: float = 60.0) -> None:
    """Wait (bounded) until the platform shows every expected final state."""
    deadline = time.monotonic() + bound_s
    last_shown = 0.0
    while True:
        runs = {r["id"]: r for r in platform.list_runs()}
        wrong = mismatches(expected, runs)
        if not wrong:
            return
        if time.monotonic() > deadline:
            say(f"\n   still different after {bound_s:g}s: {len(wrong)} runs")
            return
        if _TTY or time.monotonic() - last_shown > 5:
            last_shown = time.monotonic()
            live(f"[settle] {len(wrong)} runs not final yet (e.g. {wrong[0].run_id}: "
                 f"{wrong[0].actual}) | {watcher.status()}")
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.demo", description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--paused-jobs", type=int, default=60)
    parser.add_argument("--rate", type=float, default=25.0)
    parser.add_argument("--dir", type=Path, default=Path(".testbed/demo"))
    parser.add_argument("--keep", action="store_true", help="keep the state folder")
    parser.add_argument("--node", choices=["simulated", "real"], default="simulated",
                        help="who runs the pods: the simulator (default, fast) or the real "
                        "node (needs root; one per machine)")
    args = parser.parse_args(argv)
    args.dir = args.dir.resolve()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    handler = logging.FileHandler(args.dir / "sniffer.log")
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    try:
        if args.node == "real":
            from testbed.realdemo import run_real_demo
            return asyncio.run(run_real_demo(args.dir))
        return asyncio.run(run_demo(args.jobs, args.paused_jobs, args.rate, args.dir))
    finally:
        if not args.keep:
            with contextlib.suppress(OSError):
                for child in args.dir.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
