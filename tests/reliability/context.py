"""`Ctx`: everything a scenario's steps may touch, and what they record.

Steps use `at(fraction)` to time themselves against the simulation, `fault(name)` to
record a fault's window, `gap_begins`/`gap_ends` for windows no watcher could see, and
`start_simulation`, `add_watcher`, `leader`, `reconcile` to act. Their records (windows,
gaps, reconcile summaries, expectation overrides) feed the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from sniffer.kube import KubeClient
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from testbed.simulator.driver import simulate
from testbed.simulator.lifecycles import Expectation
from testbed.simulator.records import SimResult
from tests.reliability.model import Load, Scenario, Window
from tests.reliability.processes import READY_BOUND_S, WatcherProcess, spawn
from tests.reliability.servers import RestartableApiServer, ThreadedProxy

log = logging.getLogger(__name__)
TERMINAL_WRITES = ("set succeeded", "set failed", "set cancelled")


class Ctx:
    """Everything a scenario's steps may touch, and what they record."""

    def __init__(self, scenario: Scenario, kube_server: ApiServer, platform: PlatformServer,
                 kube: KubeClient, namespace: str, workdir: Path,
                 restartable: RestartableApiServer | None) -> None:
        self.scenario = scenario
        self.kube_server = kube_server
        self.platform = platform
        self.kube = kube
        self.namespace = namespace
        self.workdir = workdir
        self.restartable = restartable
        self.proxy: ThreadedProxy | None = None
        self.watchers: dict[str, WatcherProcess] = {}
        self.sims: list[SimResult] = []
        self.sim_started = time.time()
        self.planned_s = scenario.load.planned_s
        self.windows: list[Window] = []
        self.gaps: list[Window] = []
        self.overrides: dict[str, Expectation] = {}
        self.allowed_reasons: dict[str, frozenset[str]] = {}
        self.alternatives: dict[str, list[Expectation]] = {}
        """run id → other outcomes a correct Sniffer may show, each as honest as the
        simulator's expectation (set by a scenario's `expect`, e.g. failed by the pending
        rule for a pod the API server still held Pending past its threshold)."""
        self.notes: list[str] = []
        self.reconciles: list[dict[str, Any]] = []
        self.reconciler_wrote: dict[str, float] = {}
        """run id → start of the reconcile pass that wrote its terminal state."""
        self.rng = random.Random(scenario.seed)
        self.extras: dict[str, Any] = {}
        """Scenario-specific state shared between its steps (e.g. the meddler)."""
        self._phase = 0

    # -- time ---------------------------------------------------------------------------

    async def at(self, fraction: float) -> None:
        """Sleep until `fraction` of the planned creation time has passed."""
        delay = self.sim_started + fraction * self.planned_s - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def fault(self, name: str) -> AsyncIterator[Window]:
        """Record the fault's window (from entering to leaving the block)."""
        window = Window(name, time.time())
        self.windows.append(window)
        log.info("fault %s begins", name)
        try:
            yield window
        finally:
            window.end = time.time()
            log.info("fault %s ends after %.1fs", name, window.end - window.start)

    def gap_begins(self, name: str) -> Window:
        """No watcher can add finalizers or see deletions from now (see `gap_ends`)."""
        window = Window(name, time.time())
        self.gaps.append(window)
        return window

    @staticmethod
    def gap_ends(window: Window) -> None:
        window.end = time.time()

    # -- the simulator --------------------------------------------------------------------

    def start_simulation(self, load: Load | None = None, *,
                         label: str = "") -> asyncio.Task[SimResult]:
        """Start the simulator (a task); `at` now counts from this moment and this load."""
        load = load or self.scenario.load
        self._phase += 1
        prefix = f"{self.scenario.name[:18]}-{self._phase}{label}".strip("-")[:30]
        config = load.config(self.namespace, prefix, self.scenario.seed * 100 + self._phase)
        self.sim_started = time.time()
        self.planned_s = load.planned_s
        records = self.workdir / f"records-{self._phase}.jsonl"

        async def play() -> SimResult:
            result = await simulate(self.kube, self.platform.url, self.platform.token_file,
                                    config, records_path=records)
            self.sims.append(result)
            return result

        return asyncio.create_task(play(), name=f"simulation-{self._phase}")

    # -- watchers -----------------------------------------------------------------------

    def kubeconfig(self) -> Path:
        if self.proxy is None:
            return self.kube_server.kubeconfig
        path = self.workdir / "kubeconfig-proxied"
        if not path.exists():
            config = yaml.safe_load(Path(self.kube_server.kubeconfig).read_text())
            for cluster in config["clusters"]:
                cluster["cluster"]["server"] = f"https://127.0.0.1:{self.proxy.port}"
            path.write_text(yaml.safe_dump(config))
            path.chmod(0o600)
        return path

    def sniffer_env(self, identity: str = "reconcile") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OTEL_", "SNIFFER_")) and k != "KUBECONFIG"}
        env.update({
            "SNIFFER_KUBE_KUBECONFIG": str(self.kubeconfig()),
            "SNIFFER_KUBE_NAMESPACES": self.namespace,
            "SNIFFER_PLATFORM_URL": self.platform.url,
            "SNIFFER_PLATFORM_TOKEN_FILE": str(self.platform.token_file),
            "SNIFFER_LEADER_ENABLED": "true" if self.scenario.leader_election else "false",
            "SNIFFER_LEADER_LEASE_NAMESPACE": self.namespace,
            "SNIFFER_LEADER_IDENTITY": identity,
            "SNIFFER_HEALTH_HOST": "127.0.0.1",
            "SNIFFER_TELEMETRY_LOG_LEVEL": "INFO",
            "SNIFFER_TELEMETRY_LOG_FORMAT": "json",
            "SNIFFER_RECONCILE_GRACE_PERIOD_S": "5",
            "OTEL_SDK_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.scenario.env)
        return env

    def add_watcher(self, name: str) -> WatcherProcess:
        watcher = WatcherProcess(name, self.sniffer_env(name), self.workdir / f"{name}.log")
        self.watchers[name] = watcher
        return watcher

    async def leader(self, *, other_than: WatcherProcess | None = None) -> WatcherProcess:
        """The watcher that leads now (bounded wait), optionally one but `other_than`."""
        deadline = time.monotonic() + READY_BOUND_S
        while True:
            for watcher in self.watchers.values():
                if watcher is other_than:
                    continue
                info = await asyncio.to_thread(watcher.health)
                if info and info.get("leader"):
                    return watcher
            if time.monotonic() > deadline:
                raise RuntimeError("no watcher became the leader")
            await asyncio.sleep(0.2)

    # -- the reconciler --------------------------------------------------------------------

    async def reconcile(self, *, kill_after_updates: int | None = None,
                        env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """One `sniffer reconcile --output json` pass. With `kill_after_updates`, SIGKILL
        it once the platform applied that many updates since it started."""
        n = len(self.reconciles) + 1
        out_path = self.workdir / f"reconcile-{n}.json"
        err_path = self.workdir / f"reconcile-{n}.log"
        full_env = {**self.sniffer_env(), **(env or {})}
        since = (await asyncio.to_thread(self.platform.stats))["last_update_seq"]
        started = time.time()
        proc = spawn(["reconcile", "--output", "json"], full_env, out_path, err_path)
        killed = False
        try:
            deadline = time.monotonic() + 600
            while proc.poll() is None:
                if kill_after_updates is not None:
                    seq = (await asyncio.to_thread(self.platform.stats))["last_update_seq"]
                    if seq - since >= kill_after_updates:
                        proc.send_signal(signal.SIGKILL)
                        killed = True
                        await asyncio.to_thread(proc.wait, 30)
                        break
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError("sniffer reconcile did not finish in 600 s")
                await asyncio.sleep(0.05 if kill_after_updates is not None else 0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        applied = (await asyncio.to_thread(self.platform.stats))["last_update_seq"] - since
        text = out_path.read_text()
        report: dict[str, Any] = {}
        if text.strip():
            with contextlib.suppress(ValueError):
                report = json.loads(text)
        for item in report.get("items") or ():
            if item.get("kind") == "pod_ahead" and item.get("outcome") == "repaired" and \
                    str(item.get("action", "")).startswith(TERMINAL_WRITES):
                self.reconciler_wrote.setdefault(str(item["run_id"]), started)
        summary = {
            "pass": n, "exit_code": proc.returncode, "killed": killed,
            "started_at": started, "duration_s": round(time.time() - started, 2),
            "platform_updates_during_pass": applied,
            "mismatches": report.get("mismatches"), "repaired": report.get("repaired"),
            "outcomes": report.get("outcomes"), "failed": report.get("failed"),
            "stdout": str(out_path), "stderr": str(err_path)}
        self.reconciles.append(summary)
        return summary
