"""One fault scenario at load: servers, `sniffer watch` processes, faults, and the verdict.

Contract:
* `run_scenario(scenario, bed, workdir)` runs one `Scenario` on the API server of `bed`
  (or, if the scenario asks, on a `RestartableApiServer` of its own) with a fresh
  reference platform, in a fresh namespace, and returns a `Result`. It never raises for a
  failed check: every problem is a line in `Result.problems`, and `Result.ok` is True iff
  there is none. It does raise if the testbed itself cannot be had.
* The flow: start the watcher(s) as real processes (`python -m sniffer.cli watch`,
  finalizer mode on unless the scenario says otherwise) and wait until they are ready →
  run the simulator and the scenario's fault schedule side by side (or the scenario's own
  `drive`) → wait, bounded, until the platform is consistent → run `sniffer reconcile`
  where the scenario plans it (a watcher gap) or where the watcher dropped changes (its
  documented repair path) → the checks → SIGTERM the watchers → scan their logs.
* The checks, the same for every scenario:
  - every run is in the state its pod reached: `testbed.verdict.mismatches` against the
    simulator's expectations, adjusted only where the outcome is honestly unknowable
    (`gap_alternatives`): a pod created *and* deleted while no watcher could see it, that
    never carried the finalizer (an independent watch of the namespace says so), may be
    reported "pod lost" by the reconciler (cancelled if its run had a cancel request); a
    pod whose deletion was requested and completed while no watcher could see it is
    judged by state only (its final object no longer says whether the deletion ended
    it). A scenario that moves runs itself (409s) or sets state rules (stuck pods)
    states its own expectations;
  - no run went backwards (`testbed.verdict.regressions` over the platform's update log);
  - no pod keeps Sniffer's finalizer (a live, non-terminal pod of a run the simulator
    failed to finish may: it is still running);
  - no traceback or unhandled exception in any watcher log, and every watcher exits 0 on
    SIGTERM at the end (SIGKILLed lives aside);
  - the fault actually happened (the scenario's `evidence` check);
  - the time to consistency: the last fault's end → the platform's last update that made
    it consistent (from the update log), with the lag behind the last pod change too.
* All times in a `Result` are epoch seconds or durations in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from sniffer.kube import Gone, KubeClient, KubeError, MalformedEvent, NotFound
from sniffer.podview import OUTCOME_FINALIZER, RUN_ID_LABEL
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer, launch
from testbed.simulator.config import Distribution, SimConfig, parse_mix
from testbed.simulator.driver import simulate
from testbed.simulator.lifecycles import Expectation, State
from testbed.simulator.records import SimResult
from testbed.verdict import latencies, mismatches, percentile, regressions
from tests.reliability.servers import RestartableApiServer, ThreadedProxy, free_port

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
POLL_S = 1.0
READY_BOUND_S = 120.0
STOP_BOUND_S = 60.0


# -- what a scenario is ------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    """The simulator's load: `jobs` workloads created at `rate` per second."""

    jobs: int
    rate: float
    duration: str = "uniform:0.5,3"
    mix: str | None = None
    delete_finished: bool = False

    def config(self, namespace: str, prefix: str, seed: int) -> SimConfig:
        extra: dict[str, Any] = {}
        if self.mix:
            extra["mix"] = parse_mix(self.mix)
        return SimConfig(jobs=self.jobs, rate=self.rate, namespace=namespace, seed=seed,
                         run_prefix=prefix, duration=Distribution.parse(self.duration),
                         delete_finished=self.delete_finished, **extra)

    @property
    def planned_s(self) -> float:
        """Seconds the simulator takes to create every pod at `rate`."""
        return self.jobs / self.rate if self.rate > 0 else 0.0

    def describe(self) -> str:
        text = f"{self.jobs} jobs at {self.rate:g}/s"
        if self.delete_finished:
            text += ", deleted when finished"
        return text


Step = Callable[["Ctx"], Coroutine[Any, Any, None]]
Evidence = Callable[["Ctx"], list[str]]


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: str
    """What goes wrong, for the results table."""
    load: Load
    inject: Step | None = None
    """The fault schedule, run beside the simulator (use `Ctx.at` and `Ctx.fault`)."""
    drive: Step | None = None
    """Replaces "simulate beside `inject`" for scenarios with phases (it calls
    `Ctx.simulate` itself)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra settings of every watcher (SNIFFER_* variables)."""
    replicas: int = 1
    leader_election: bool = True
    proxy: bool = False
    """Put a `ThreadedProxy` between the watchers and the API server."""
    own_apiserver: tuple[str, ...] | None = None
    """Run on a `RestartableApiServer` of its own with these extra kube-apiserver flags."""
    reconcile_after: bool = False
    """The scenario has a watcher gap: run `sniffer reconcile` once the watcher settled."""
    expect: Step | None = None
    """Adjust `Ctx.overrides` / `Ctx.allowed_reasons` after the simulation."""
    evidence: Evidence | None = None
    """Problems if the faults did not visibly happen (so a scenario cannot pass vacuously)."""
    settle_bound_s: float = 240.0
    seed: int = 1


@dataclass
class Window:
    name: str
    start: float
    end: float | None = None


@dataclass
class Result:
    scenario: str
    faults: str
    load: str
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    jobs_created: int = 0
    runs_checked: int = 0
    sim_errors: int = 0
    lost: int = 0
    """Runs whose platform state differs from what their pod reached, after settling."""
    lost_examples: list[str] = field(default_factory=list)
    reported_as_pod_lost: int = 0
    """Runs accepted as "pod lost": created and deleted unseen during a watcher gap."""
    reason_unknowable: int = 0
    """Runs judged by state only: their pod was deleted and gone within a watcher gap."""
    regressed: int = 0
    finalizers_left: int = 0
    tracebacks: int = 0
    watcher_exit_codes: dict[str, list[int]] = field(default_factory=dict)
    faults_applied: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    last_fault_end: float | None = None
    last_pod_change: float | None = None
    consistent_at: float | None = None
    time_to_consistency_s: float | None = None
    """Last fault end → the platform's last update among this scenario's runs."""
    lag_after_last_change_s: float | None = None
    """max(last fault end, last pod change) → consistent."""
    settled_by_watcher: bool = False
    reconcile_passes: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    platform_requests: dict[str, int] = field(default_factory=dict)
    platform_faults: dict[str, int] = field(default_factory=dict)
    log_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: float = 0.0
    duration_s: float = 0.0
    workdir: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- the servers one run uses --------------------------------------------------------------

@dataclass
class Bed:
    """The shared API server of a series of scenarios (a scenario may bring its own)."""

    kube: ApiServer


class WatcherProcess:
    """One `sniffer watch` process (restartable: each life appends to the same log)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self.killed = 0

    def start(self) -> None:
        assert self._proc is None or self._proc.poll() is not None
        self.port = free_port()
        env = {**self.env, "SNIFFER_HEALTH_PORT": str(self.port)}
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", "sniffer.cli", "watch"],
                                          env=env, stdout=out, stderr=out, cwd=REPO)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, ValueError):
            return None

    def health(self) -> dict[str, Any] | None:
        """The /healthz body (leader, cached pods, queue depth, tasks), None if unreachable."""
        return self._get("/healthz") if self.running else None

    def ready(self) -> bool:
        return self.running and (self._get("/readyz") or {}).get("status") == "ready"

    async def wait_ready(self, bound_s: float = READY_BOUND_S) -> None:
        deadline = time.monotonic() + bound_s
        while not await asyncio.to_thread(self.ready):
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"watcher {self.name} exited with {self._proc.returncode}; "
                                   f"see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"watcher {self.name} not ready in {bound_s:g}s; "
                                   f"see {self.log_path}")
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL (a crash); the life's exit code is not judged."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(30)
            self.killed += 1
        self._proc = None

    async def stop(self) -> int | None:
        """SIGTERM and wait (bounded); returns the exit code (None if it was not running)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 30)
                self.exit_codes.append(-9)
                self._proc = None
                return -9
        code = proc.returncode
        self.exit_codes.append(code)
        self._proc = None
        return code

    def reap(self) -> None:
        """Record the exit code of a life that ended on its own."""
        if self._proc is not None and self._proc.poll() is not None:
            self.exit_codes.append(self._proc.returncode)
            self._proc = None


class PodObserver:
    """An independent list+watch of the scenario's namespace: which pods (by run id) ever
    carried Sniffer's finalizer. Survives API server restarts (relists)."""

    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self._kube = kube
        self._namespace = namespace
        self.finalized: set[str] = set()
        self.events = 0
        self.transitions: list[dict[str, Any]] = []
        """Each time a pod gains or loses the finalizer, or goes: when, its phase, whether
        it was being deleted, and who (managedFields) last wrote its finalizers."""
        self._held: dict[str, bool] = {}

    def _see(self, obj: Mapping[str, Any], event: str = "LIST") -> None:
        meta = obj.get("metadata") or {}
        run_id = (meta.get("labels") or {}).get(RUN_ID_LABEL)
        if not run_id:
            return
        held = OUTCOME_FINALIZER in (meta.get("finalizers") or ())
        if held:
            self.finalized.add(str(run_id))
        if event == "DELETED" or self._held.get(str(run_id)) != held:
            self._held[str(run_id)] = held
            managers = [m.get("manager") for m in meta.get("managedFields") or ()
                        if "f:finalizers" in json.dumps(m.get("fieldsV1") or {})]
            self.transitions.append({
                "t": time.time(), "run_id": run_id, "event": event, "finalizer": held,
                "rv": meta.get("resourceVersion"),
                "phase": (obj.get("status") or {}).get("phase"),
                "deleting": bool(meta.get("deletionTimestamp")), "managers": managers})

    async def run(self) -> None:
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    token = None
                    while True:
                        page = await self._kube.list_pods(self._namespace, label_selector="",
                                                          limit=500, continue_token=token)
                        for obj in page.items:
                            self._see(obj)
                        token = page.continue_token
                        if token is None:
                            break
                    rv = page.resource_version
                async for event in self._kube.watch_pods(
                        self._namespace, label_selector="", resource_version=rv,
                        timeout_seconds=300, read_timeout=90):
                    if isinstance(event, MalformedEvent):
                        continue
                    self.events += 1
                    new_rv = (event.object.get("metadata") or {}).get("resourceVersion")
                    rv = str(new_rv) if new_rv else rv
                    if event.type != "BOOKMARK":
                        self._see(event.object, event.type)
            except Gone:
                rv = None
            except KubeError:
                await asyncio.sleep(0.5)


# -- the scenario context -------------------------------------------------------------------

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
        proc = _spawn(["reconcile", "--output", "json"], full_env, out_path, err_path)
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


def _spawn(args: list[str], env: Mapping[str, str], stdout: Path,
           stderr: Path) -> subprocess.Popen[bytes]:
    """`python -m sniffer.cli <args>` with its output in files."""
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "sniffer.cli", *args], env=dict(env),
                                stdout=out, stderr=err, cwd=REPO)


# -- the checks ----------------------------------------------------------------------------

async def list_pods(kube: KubeClient, namespace: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = []
    token = None
    while True:
        page = await kube.list_pods(namespace, label_selector="", limit=500,
                                    continue_token=token)
        pods.extend(page.items)
        token = page.continue_token
        if token is None:
            return pods


def _live(pod: Mapping[str, Any]) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return (not meta.get("deletionTimestamp")
            and status.get("phase") not in ("Succeeded", "Failed"))


def finalizers_left(pods: Iterable[Mapping[str, Any]], unfinished: set[str]) -> list[str]:
    """Pods holding Sniffer's finalizer that should not: all but live pods of runs the
    simulator could not finish (`unfinished`)."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if OUTCOME_FINALIZER not in (meta.get("finalizers") or ()):
            continue
        run_id = (meta.get("labels") or {}).get(RUN_ID_LABEL)
        if run_id in unfinished and _live(pod):
            continue
        out.append(f"{meta.get('name')} (phase {(pod.get('status') or {}).get('phase')}, "
                   f"{'terminating' if meta.get('deletionTimestamp') else 'not deleted'})")
    return out


@dataclass
class Judgement:
    wrong: list[str]
    pod_lost: int
    """Runs accepted as "pod lost": created and deleted unseen during a watcher gap."""
    reason_unknowable: int = 0
    """Runs in the right state whose reason was accepted unchecked: their pod's deletion
    was requested and completed within a watcher gap (see `gap_alternatives`)."""
    awaiting_reconcile: int = 0
    """Runs of pods deleted unseen that are still open: only the reconciler can tell."""


def judge(expected: Mapping[str, Expectation],
          alternatives: Mapping[str, Sequence[Expectation]],
          allowed_reasons: Mapping[str, frozenset[str]],
          runs: Mapping[str, Mapping[str, Any]], *, before_reconcile: bool = False,
          ) -> Judgement:
    """Mismatches after the honest adjustments (see the module docstring). With
    `before_reconcile`, open runs of pods deleted unseen are counted apart, not wrong."""
    wrong: list[str] = []
    pod_lost = unknowable = awaiting = 0
    for m in mismatches(expected, runs):
        alts = alternatives.get(m.run_id, ())
        fits = [alt for alt in alts if not mismatches({m.run_id: alt}, runs)]
        if fits:
            if any(alt.reason in LOST_REASONS for alt in fits):
                pod_lost += 1
            else:
                unknowable += 1
            continue
        if (any(alt.reason in LOST_REASONS for alt in alts) and before_reconcile
                and (runs.get(m.run_id) or {}).get("state") in ("queued", "running")):
            awaiting += 1
            continue
        wrong.append(f"{m.run_id}: expected {m.expected}, platform has {m.actual}")
    for run_id, reasons in allowed_reasons.items():
        run = runs.get(run_id)
        if run is not None and run.get("reason") not in reasons:
            wrong.append(f"{run_id}: reason {run.get('reason')!r} not in {sorted(reasons)}")
    return Judgement(wrong, pod_lost, unknowable, awaiting)


LOST_REASONS = frozenset({"PodLost", "Cancelled"})
TERMINAL_WRITES = ("set succeeded", "set failed", "set cancelled")
DELETION_SHAPES = frozenset({"terminating", "evicting", "deleted", "deleted-when-finished"})
GONE_SHAPES = frozenset({"deleted", "deleted-when-finished"})


def gap_alternatives(ctx: Ctx, finalized: set[str], present: set[str],
                     runs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Expectation]]:
    """What else the platform may honestly show for runs whose pod's end fell in a watcher
    gap (no watcher could see it):

    * the pod never carried the finalizer and was deleted in the gap, so it is gone
      unseen: `sniffer reconcile` reports it "pod lost" (cancelled if cancel was asked);
    * the pod's deletion was requested *and* completed in the gap: the first view anyone
      gets is the final object, whose deletionTimestamp the kubelet's grace-0 DELETE has
      moved past the containers' end, so it cannot tell "stopped by the deletion" from
      "ended, then deleted": the state is judged, the reason and exit code are not. The
      same holds for a terminal state `sniffer reconcile` wrote from a snapshot taken
      after the pod's deletion had completed: a snapshot has no history.
    """
    out: dict[str, list[Expectation]] = {}
    gaps = [(g.start, g.end if g.end is not None else time.time()) for g in ctx.gaps]
    if not gaps and not ctx.reconciler_wrote:
        return out
    for sim in ctx.sims:
        requested: dict[str, float] = {}
        gone: dict[str, float] = {}
        for c in sim.changes:
            if c.shape in DELETION_SHAPES:
                requested.setdefault(c.run_id, c.accepted_at)
            if c.shape in GONE_SHAPES:
                gone[c.run_id] = max(gone.get(c.run_id, 0.0), c.accepted_at)
        for run_id, at in gone.items():
            expectation = sim.expected.get(run_id)
            if expectation is None:
                continue
            alts: list[Expectation] = []
            for start, end in gaps:
                if start <= at <= end and run_id not in finalized and run_id not in present:
                    alts.append(_lost(runs.get(run_id)))
                if start <= requested.get(run_id, at) and at <= end:
                    alts.append(Expectation(expectation.state, None, None))
            snapshot = ctx.reconciler_wrote.get(run_id)
            if snapshot is not None and at <= snapshot:
                alts.append(Expectation(expectation.state, None, None))
            if alts:
                out[run_id] = alts
    return out


def scan_logs(paths: Iterable[Path]) -> tuple[int, Counter[str], list[str]]:
    """(tracebacks, counts of notable messages, first offending lines) over watcher logs."""
    tracebacks = 0
    counts: Counter[str] = Counter()
    bad: list[str] = []
    notable = {
        "watch stream stalled, reopening": "stalled",
        "resourceVersion expired, relisting": "expired",
        "list/watch failed, retrying": "watch_errors",
        "dropping change after retries; the reconciler will repair it": "dropped",
        "platform already has a newer or terminal state": "conflicts",
        "retrying": "retries",
        "listed pods": "lists",
        "skipping malformed pod": "malformed_pods",
        "skipping malformed watch line": "malformed_lines",
        "handler failed": "handler_failed",
        "pod's run is unknown to the platform; not reporting it": "orphans",
        "cannot derive the pod's state; leaving it to the reconciler": "underivable",
        "exiting after losing the lease; a restart rejoins as a standby": "lease_lost",
    }
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            record: dict[str, Any] | None = None
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
            if record is None:
                if "Traceback" in line or "Task exception was never retrieved" in line \
                        or "Unclosed" in line:
                    tracebacks += 1
                    if len(bad) < 5:
                        bad.append(f"{path.name}: {line[:300]}")
                continue
            message = str(record.get("message", ""))
            if message in notable:
                counts[notable[message]] += 1
            if record.get("level") in ("error", "critical"):
                counts["error_lines"] += 1
            if "exception" in record:
                tracebacks += 1
                if len(bad) < 5:
                    bad.append(f"{path.name}: {message[:200]}: "
                               f"{str(record['exception']).splitlines()[-1][:200]}")
    return tracebacks, counts, bad


# -- running one scenario -------------------------------------------------------------------

async def run_scenario(scenario: Scenario, bed: Bed | None, workdir: Path) -> Result:
    workdir = workdir / scenario.name
    workdir.mkdir(parents=True, exist_ok=True)
    result = Result(scenario.name, scenario.faults, scenario.load.describe(),
                    started_at=time.time(), workdir=str(workdir))
    restartable: RestartableApiServer | None = None
    if scenario.own_apiserver is not None or bed is None:
        restartable = RestartableApiServer(workdir / "kube",
                                           extra_args=scenario.own_apiserver or ())
        kube_server = await asyncio.to_thread(restartable.start)
    else:
        kube_server = bed.kube
    platform = await asyncio.to_thread(launch, workdir / "platform")
    kube = await KubeClient.connect(kubeconfig=str(kube_server.kubeconfig), pool_size=96)
    namespace = f"rel-{scenario.name[:40]}-{secrets.token_hex(3)}"
    ctx = Ctx(scenario, kube_server, platform, kube, namespace, workdir, restartable)
    observer_task: asyncio.Task[None] | None = None
    try:
        await kube.request_json("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        if scenario.proxy:
            ctx.proxy = ThreadedProxy(int(kube_server.url.rsplit(":", 1)[1]))
        observer = PodObserver(kube, namespace)
        observer_task = asyncio.create_task(observer.run(), name="pod-observer")
        for i in range(scenario.replicas):
            ctx.add_watcher(f"watcher-{i}").start()
        for watcher in ctx.watchers.values():
            await watcher.wait_ready()
        if scenario.leader_election:
            await ctx.leader()
        if scenario.drive is not None:
            await scenario.drive(ctx)
        else:
            await _simulate_with_faults(ctx)
        await _verdict(ctx, result, observer)
    except Exception as exc:
        log.exception("scenario %s failed to run", scenario.name)
        result.problems.append(f"the scenario could not run: {type(exc).__name__}: {exc}")
    finally:
        for watcher in ctx.watchers.values():
            watcher.reap()
            code = await watcher.stop()
            if code is not None and code != 0:
                result.problems.append(f"{watcher.name} exited with {code} on SIGTERM")
        result.watcher_exit_codes = {w.name: w.exit_codes for w in ctx.watchers.values()}
        tracebacks, counts, bad = scan_logs(w.log_path for w in ctx.watchers.values())
        result.tracebacks = tracebacks
        result.log_counts = dict(counts)
        result.dropped = counts.get("dropped", 0)
        if tracebacks:
            result.problems.append(f"{tracebacks} traceback(s) in the watcher logs: {bad}")
        if observer_task is not None:
            observer_task.cancel()
            await asyncio.gather(observer_task, return_exceptions=True)
            _dump_jsonl(workdir / "finalizer-transitions.jsonl", observer.transitions)
        if ctx.proxy is not None:
            ctx.proxy.close()
        with contextlib.suppress(Exception):
            await _purge(kube, namespace)
        await kube.close()
        platform.stop()
        if restartable is not None:
            await asyncio.to_thread(restartable.stop)
        result.faults_applied = [_window_json(w) for w in ctx.windows]
        result.gaps = [_window_json(w) for w in ctx.gaps]
        result.notes.extend(ctx.notes)
        result.reconcile_passes = ctx.reconciles
        result.duration_s = round(time.time() - result.started_at, 1)
        result.ok = not result.problems
        (workdir / "result.json").write_text(json.dumps(result.to_json(), indent=2))
    return result


def _dump_jsonl(path: Path, items: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w") as out:
        for item in items:
            out.write(json.dumps(item) + "\n")


def _window_json(w: Window) -> dict[str, Any]:
    return {"name": w.name, "start": w.start, "end": w.end,
            "seconds": round(w.end - w.start, 2) if w.end is not None else None}


async def _simulate_with_faults(ctx: Ctx) -> None:
    simulation = ctx.start_simulation()
    faults = (asyncio.create_task(ctx.scenario.inject(ctx), name="faults")
              if ctx.scenario.inject is not None else None)
    try:
        await simulation
    finally:
        if faults is not None:
            if not faults.done():
                await asyncio.wait_for(asyncio.shield(faults), ctx.scenario.settle_bound_s)
            faults.result()


async def _runs(platform: PlatformServer) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in await asyncio.to_thread(platform.list_runs)}


async def _verdict(ctx: Ctx, result: Result, observer: PodObserver) -> None:
    scenario = ctx.scenario
    expected: dict[str, Expectation] = {}
    unfinished: set[str] = set()
    for sim in ctx.sims:
        expected.update(sim.expected)
        unfinished.update(e.run_id for e in sim.errors)
        result.jobs_created += sim.created
        result.sim_errors += len(sim.errors)
    unfinished -= set(expected)
    if result.sim_errors:
        result.notes.append(f"{result.sim_errors} simulator errors (those runs are not "
                            f"judged): {[e.error for e in ctx.sims[-1].errors[:3]]}")
    if scenario.expect is not None:
        await scenario.expect(ctx)
    expected.update({k: v for k, v in ctx.overrides.items() if k in expected})
    result.runs_checked = len(expected)

    async def look(before_reconcile: bool) -> tuple[Judgement, list[str]]:
        runs = await _runs(ctx.platform)
        pods = await list_pods(ctx.kube, ctx.namespace)
        present = {str((p["metadata"].get("labels") or {}).get(RUN_ID_LABEL)) for p in pods}
        alternatives = gap_alternatives(ctx, observer.finalized, present, runs)
        verdict = judge(expected, alternatives, ctx.allowed_reasons, runs,
                        before_reconcile=before_reconcile)
        return verdict, finalizers_left(pods, unfinished)

    async def settle(bound_s: float, before_reconcile: bool = False,
                     ) -> tuple[Judgement, list[str]]:
        deadline = time.monotonic() + bound_s
        while True:
            verdict, left = await look(before_reconcile)
            if (not verdict.wrong and not left) or time.monotonic() > deadline:
                return verdict, left
            await asyncio.sleep(POLL_S)

    verdict, left = await settle(scenario.settle_bound_s,
                                 before_reconcile=scenario.reconcile_after)
    result.settled_by_watcher = not verdict.wrong and not left and \
        not verdict.awaiting_reconcile
    _, counts, _ = scan_logs(w.log_path for w in ctx.watchers.values())
    if scenario.reconcile_after or (not result.settled_by_watcher and counts.get("dropped")):
        if not scenario.reconcile_after:
            ctx.notes.append(f"the watcher dropped {counts['dropped']} change(s) after "
                             "retries; `sniffer reconcile` repairs them, as designed")
        await asyncio.sleep(5.5)  # runs must outlive the reconciler's 5 s grace period
        await ctx.reconcile()
        verdict, left = await settle(60.0)
    result.lost = len(verdict.wrong)
    result.lost_examples = verdict.wrong[:10]
    result.reported_as_pod_lost = verdict.pod_lost
    result.reason_unknowable = verdict.reason_unknowable
    result.finalizers_left = len(left)
    if verdict.wrong:
        result.problems.append(f"{len(verdict.wrong)} run(s) not in the state their pod "
                               f"reached, e.g. {verdict.wrong[:5]}")
    if left:
        result.problems.append(f"{len(left)} pod(s) keep Sniffer's finalizer, e.g. {left[:5]}")
    updates = await asyncio.to_thread(ctx.platform.updates)
    backwards = regressions(updates)
    result.regressed = len(backwards)
    if backwards:
        result.problems.append(f"{len(backwards)} update(s) moved a run backwards: "
                               f"{backwards[:3]}")
    _timing(ctx, result, expected, updates)
    stats = await asyncio.to_thread(ctx.platform.stats)
    result.platform_requests = dict(stats.get("requests_by_status", {}))
    result.platform_faults = dict(stats.get("faults_injected", {}))
    if scenario.evidence is not None:
        result.problems.extend(scenario.evidence(ctx))
    for summary in ctx.reconciles:
        if summary["exit_code"] not in (0,) and not summary["killed"]:
            result.problems.append(f"sniffer reconcile pass {summary['pass']} exited with "
                                   f"{summary['exit_code']}")


def _lost(run: Mapping[str, Any] | None) -> Expectation:
    if run is not None and run.get("cancel_requested"):
        return Expectation(State.CANCELLED, "Cancelled", None)
    return Expectation(State.FAILED, "PodLost", None)


def _timing(ctx: Ctx, result: Result, expected: Mapping[str, Expectation],
            updates: list[dict[str, Any]]) -> None:
    last_update: dict[str, float] = {}
    for u in updates:
        if u["run_id"] in expected:
            last_update[u["run_id"]] = float(u["received_at"])
    if last_update:
        result.consistent_at = max(last_update.values())
    ends = [w.end for w in ctx.windows + ctx.gaps if w.end is not None]
    result.last_fault_end = max(ends) if ends else None
    decided = [o.decided_at for sim in ctx.sims for o in sim.outcomes]
    result.last_pod_change = max(decided) if decided else None
    if result.consistent_at is not None:
        if result.last_fault_end is not None:
            result.time_to_consistency_s = round(
                max(0.0, result.consistent_at - result.last_fault_end), 2)
        anchors = [x for x in (result.last_fault_end, result.last_pod_change) if x is not None]
        if anchors:
            anchor = max(anchors)
            result.lag_after_last_change_s = round(max(0.0, result.consistent_at - anchor), 2)
    e2e = latencies([c for sim in ctx.sims for c in sim.changes], updates)
    if e2e:
        result.latency_ms = {"p50": round(percentile(e2e, 50) * 1000, 1),
                             "p99": round(percentile(e2e, 99) * 1000, 1),
                             "max": round(max(e2e) * 1000, 1), "updates": len(e2e)}


async def _purge(kube: KubeClient, namespace: str) -> None:
    """Remove the scenario's pods for good (after the checks), then its namespace."""
    for pod in await list_pods(kube, namespace):
        meta = pod["metadata"]
        if meta.get("finalizers"):
            with contextlib.suppress(NotFound):
                await kube.patch_pod(namespace, meta["name"], {"metadata": {"finalizers": None}},
                                     content_type="application/merge-patch+json")
    await kube.request_json("DELETE", f"/api/v1/namespaces/{namespace}/pods",
                            query={"gracePeriodSeconds": 0})
    await kube.request_json("DELETE", f"/api/v1/namespaces/{namespace}")


def with_load(scenario: Scenario, **changes: Any) -> Scenario:
    """The scenario with its load changed (``jobs=``, ``rate=``...)."""
    return replace(scenario, load=replace(scenario.load, **changes))
