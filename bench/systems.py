"""The systems under test, how to start one against the testbed, and its process figures.

Contract:

* `SYSTEMS` names every system the harness knows; `System.start(target)` starts it as a
  child process watching one namespace and writing to the platform, with its output in
  a fresh ``<logdir>/<namespace>-<label>[-n].log``, and returns a `Running` handle at once
  (the start is timed from there).
* `Running.ready_at` is the wall-clock time the system said its cache was synced (a line
  containing its `ready_marker`), or None while it has not, or if it has no such notion.
* `Running.cpu_s()` is the process's user+system CPU seconds so far, `rss()` its resident
  set now, `peak_rss()` its high-water mark (VmHWM) so far; all in bytes/seconds, from
  /proc via psutil. A system is one process (no children to add up).
* `Running.stop()` sends SIGTERM, waits, then SIGKILLs; it returns the process's last
  figures and is idempotent. Only processes this module started are signalled.
* `sniffer-defaults` is the shipped configuration (config/default.yaml: finalizers on,
  128 workers, leader election on, health server on): only where it runs is set (the
  testbed's kubeconfig, the trial's namespace, the platform's URL and token file, the
  Lease in the trial's namespace so a trial never waits out an earlier trial's lease,
  and a health port free at start). The other sniffer systems pin 64 workers (as the
  peers), leader election off and the health server off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.gobuild import ensure_clientgo_peer

_REPO = Path(__file__).resolve().parents[1]
_PEERS = Path(__file__).resolve().parent / "peers"


@dataclass(frozen=True)
class Target:
    """Where a system runs against: one namespace of the testbed and its platform."""

    kubeconfig: Path
    namespace: str
    platform_url: str
    platform_token_file: Path
    logdir: Path


@dataclass(frozen=True)
class System:
    label: str
    """Short name used in results (e.g. ``sniffer``, ``client-go``)."""
    description: str
    argv: Callable[[Target], list[str]]
    env: Callable[[Target], dict[str, str]]
    ready_marker: str | None
    """A substring of the output line that says the initial list is cached."""

    def start(self, target: Target, *, extra_env: dict[str, str] | None = None) -> Running:
        log_path = target.logdir / f"{target.namespace}-{self.label}.log"
        n = 1
        while log_path.exists():
            n += 1
            log_path = target.logdir / f"{target.namespace}-{self.label}-{n}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - owned by the Running handle
        env = {**os.environ, "PYTHONPATH": str(_REPO), "PYTHONUNBUFFERED": "1",
               **self.env(target), **(extra_env or {})}
        started = time.time()
        proc = subprocess.Popen(self.argv(target), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=str(_REPO))
        return Running(self, proc, log, log_path, started)


@dataclass
class Running:
    system: System
    proc: subprocess.Popen[bytes]
    _log: object
    log_path: Path
    started_at: float
    ready_at: float | None = None
    final: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)
        self._stop_watching = threading.Event()
        self._watcher = threading.Thread(target=self._watch_log, daemon=True)
        self._watcher.start()

    def _watch_log(self) -> None:
        marker = self.system.ready_marker
        if marker is None:
            return
        offset = 0
        while not self._stop_watching.is_set():
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                chunk = b""
            if chunk:
                last_newline = chunk.rfind(b"\n")
                if last_newline >= 0:
                    if marker.encode() in chunk[: last_newline + 1]:
                        self.ready_at = time.time()
                        return
                    offset += last_newline + 1
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        if not self.alive:
            return self.final.get("cpu_s", 0.0)
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return self.ps.memory_info().rss if self.alive else int(self.final.get("rss", 0))

    def peak_rss(self) -> int:
        if not self.alive:
            return int(self.final.get("peak_rss", 0))
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self, timeout: float = 15.0) -> dict[str, float]:
        if self.alive:
            with contextlib.suppress(psutil.Error, OSError):
                self.final = {"cpu_s": self.cpu_s(), "rss": self.rss(),
                              "peak_rss": self.peak_rss()}
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stop_watching.set()
        log = self._log
        if hasattr(log, "close"):
            log.close()
        return self.final

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _sniffer_env(target: Target, *, finalizers: bool, workers: int) -> dict[str, str]:
    return {
        "SNIFFER_KUBE_KUBECONFIG": str(target.kubeconfig),
        "SNIFFER_KUBE_NAMESPACES": target.namespace,
        "SNIFFER_PLATFORM_URL": target.platform_url,
        "SNIFFER_PLATFORM_TOKEN_FILE": str(target.platform_token_file),
        "SNIFFER_LEADER_ENABLED": "false",
        "SNIFFER_HEALTH_PORT": "0",
        "SNIFFER_FINALIZERS_ENABLED": "true" if finalizers else "false",
        "SNIFFER_WORKERS_COUNT": str(workers),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))  # the health server binds 0.0.0.0 (its default)
        return int(s.getsockname()[1])


def _defaults_env(target: Target) -> dict[str, str]:
    """Where the shipped configuration runs, nothing about how."""
    return {
        "SNIFFER_KUBE_KUBECONFIG": str(target.kubeconfig),
        "SNIFFER_KUBE_NAMESPACES": target.namespace,
        "SNIFFER_PLATFORM_URL": target.platform_url,
        "SNIFFER_PLATFORM_TOKEN_FILE": str(target.platform_token_file),
        "SNIFFER_LEADER_LEASE_NAMESPACE": target.namespace,
        "SNIFFER_HEALTH_PORT": str(_free_port()),
    }


def _peer_env(target: Target) -> dict[str, str]:
    return {
        "PEER_KUBECONFIG": str(target.kubeconfig),
        "KUBECONFIG": str(target.kubeconfig),
        "PEER_NAMESPACE": target.namespace,
        "PEER_PLATFORM_URL": target.platform_url,
        "PEER_PLATFORM_TOKEN_FILE": str(target.platform_token_file),
        "PEER_WORKERS": "64",
    }


def _sniffer(label: str, description: str, *, finalizers: bool, workers: int = 64) -> System:
    return System(label, description, lambda t: [sys.executable, "-m", "cli", "watch"],
                  lambda t: _sniffer_env(t, finalizers=finalizers, workers=workers),
                  "caches synced")


SYSTEMS: dict[str, System] = {s.label: s for s in (
    _sniffer("sniffer", "sniffer watch, 64 workers, finalizers off (as the peers)",
             finalizers=False),
    _sniffer("sniffer-finalizers", "sniffer watch, 64 workers, finalizer mode on (its default)",
             finalizers=True),
    _sniffer("sniffer-w256", "sniffer watch, 256 workers, finalizers off", finalizers=False,
             workers=256),
    System("sniffer-defaults", "sniffer watch as shipped (config/default.yaml): finalizers "
           "on, 128 workers, leader election on",
           lambda t: [sys.executable, "-m", "cli", "watch"], _defaults_env, "caches synced"),
    System("sniffer-gcprobe", "sniffer (as `sniffer`) under bench.gcprobe: gc pauses recorded",
           lambda t: [sys.executable, "-m", "bench.gcprobe", "watch"],
           lambda t: _sniffer_env(t, finalizers=False, workers=64), "caches synced"),
    System("client-go", "Go: shared informer, rate-limited work queue, 64 workers",
           lambda t: [str(ensure_clientgo_peer())], _peer_env, "synced"),
    System("client-go-json", "the client-go peer, lists and watches in JSON (as Python must)",
           lambda t: [str(ensure_clientgo_peer())],
           lambda t: {**_peer_env(t), "PEER_CONTENT_TYPE": "json"}, "synced"),
    System("kopf", "kopf 1.45.2 operator, one @kopf.on.event handler (aiohttp)",
           lambda t: [sys.executable, "-m", "kopf", "run", "--standalone", "--quiet",
                      f"--namespace={t.namespace}", str(_PEERS / "kopf_peer.py")],
           _peer_env, None),
    System("baseline-serial", "kubernetes client Watch (typed), one blocking PATCH per event",
           lambda t: [sys.executable, str(_PEERS / "baseline_serial.py")], _peer_env, None),
)}
