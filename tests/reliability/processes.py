"""The processes a scenario watches: `sniffer watch` replicas, `sniffer reconcile` passes,
and an independent observer of the namespace.

* `WatcherProcess`: one replica as a real process (``python -m cli watch``),
  restartable (each life appends to the same log); SIGKILL is a crash whose exit code is
  not judged, SIGTERM a stop whose exit code is.
* `PodObserver`: a list+watch of its own that records which pods ever carried Sniffer's
  finalizer and every finalizer transition (with the field manager that made it), so the
  verdict can tell a pod deleted unseen from one Sniffer held.
* `spawn(args, env, stdout, stderr)`: any ``sniffer`` command with its output in files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sniffer.kube import KubeClient
from sniffer.kubedecode import Gone, KubeError, MalformedEvent
from sniffer.podview import OUTCOME_FINALIZER, RUN_ID_LABEL
from tests.reliability.servers import free_port

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
READY_BOUND_S = 120.0
STOP_BOUND_S = 60.0


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
        self._ending = False
        """True from a `kill` or `stop` until the next `start`: an exit then is ours."""

    def start(self) -> None:
        assert self._proc is None or self._proc.poll() is not None
        self._ending = False
        self.port = free_port()
        env = {**self.env, "SNIFFER_HEALTH_PORT": str(self.port)}
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", "cli", "watch"],
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
        self._ending = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(30)
            self.killed += 1
        self._proc = None

    async def stop(self) -> int | None:
        """SIGTERM and wait (bounded); returns the exit code (None if it was not running)."""
        self._ending = True
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

    def exited_on_its_own(self) -> int | None:
        """The exit code of a life that ended without `kill` or `stop` (recorded, and the
        process forgotten so it can be started again), else None."""
        if self._ending or self._proc is None or self._proc.poll() is None:
            return None
        code = self._proc.returncode
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


def spawn(args: list[str], env: Mapping[str, str], stdout: Path,
           stderr: Path) -> subprocess.Popen[bytes]:
    """`python -m cli <args>` with its output in files."""
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "cli", *args], env=dict(env),
                                stdout=out, stderr=err, cwd=REPO)


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
