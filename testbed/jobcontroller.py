"""The real Job controller beside an API server: kube-controller-manager with only the
controllers Job-backed runs need, and no node.

Contract:

* `JobController(kube, workdir).start()` runs the real kube-controller-manager (built and
  cached by `testbed.nodebuild`, the binary the real node runs) against ``kube`` with only
  `CONTROLLERS`: the Job controller (it creates each attempt pod from the Job's template,
  counts attempts, honours ``backoffLimit`` with its own backoff between attempts, and
  writes the Job's conditions) and the garbage collector (a deleted Job's pods go once
  the Job is gone, as in a cluster). It returns once the controller-manager answers
  ``/healthz``, else raises `JobControllerError` with its log's tail and stops it.
* Its client may send `API_QPS` requests per second (burst `API_BURST`), far above the
  default 20: a thousand Jobs on the testbed must not queue behind the client's limiter.
* Every listener binds 127.0.0.1 on a free port; it runs in its own process group, and
  `stop()` ends that group (SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`). Call `stop()`
  once done; it is idempotent. The log is ``<workdir>/kube-controller-manager.log``.
* Pods stay unscheduled unless their template names a node: no scheduler runs, and no
  kubelet; the caller plays the kubelet's part (`testbed.simulator.jobdriver`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from testbed import nodebuild
from testbed.apiserver import ApiServer

CONTROLLERS = ("job-controller", "garbage-collector-controller")
API_QPS = 300
API_BURST = 600
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


class JobControllerError(RuntimeError):
    """The controller-manager did not come up; the message carries its log's tail."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JobController:
    """One kube-controller-manager process running `CONTROLLERS`."""

    def __init__(self, kube: ApiServer, workdir: Path) -> None:
        self.kube = kube
        self.workdir = Path(workdir).resolve()
        self.log_path = self.workdir / "kube-controller-manager.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False

    def argv(self, binary: Path) -> list[str]:
        config = str(self.kube.kubeconfig)
        return [str(binary), f"--kubeconfig={config}",
                f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                "--leader-elect=false", "--bind-address=127.0.0.1",
                f"--secure-port={self.port}", f"--controllers={','.join(CONTROLLERS)}",
                "--use-service-account-credentials=false",
                f"--kube-api-qps={API_QPS}", f"--kube-api-burst={API_BURST}",
                "--concurrent-job-syncs=10"]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> JobController:
        if self._started:
            raise RuntimeError("JobController.start() may be called once")
        self._started = True
        binary = nodebuild.ensure_kube(quiet=True).controller_manager
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self.argv(binary), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._healthy():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                code = self._proc.poll()
                self.stop()
                what = f"exited with {code}" if code is not None else "was not healthy in time"
                raise JobControllerError(f"kube-controller-manager {what}:\n{self.tail()}")
            time.sleep(0.2)
        return self

    def _healthy(self) -> bool:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # its self-signed serving cert, on loopback
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/healthz",
                                        context=context, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, ssl.SSLError, urllib.error.HTTPError):
            return False

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
