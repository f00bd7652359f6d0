"""Servers a fault scenario controls: a restartable kube-apiserver and a threaded proxy.

* `RestartableApiServer` runs the testbed's kube-testbed binary on fixed loopback ports
  and a data directory of its own, so `restart()` brings the same cluster back (same etcd
  data, certificate, token and URL) — what an API server restart is in production.
  `testbed.apiserver.start` cannot do that: it wipes ``state/`` and picks new ports on
  every start. `handle` is an `ApiServer` describing it (kubeconfig, `compact_etcd`);
  the handle's own `stop` ends nothing, `stop()` here ends the process and removes the data.
* `ThreadedProxy` runs `tests.fixtures.proxy.Proxy` on an event loop in its own thread,
  so the proxy keeps forwarding while the scenario's loop is busy simulating a kubelet.
  `cut`, `freeze`, `thaw`, `block` and `unblock` return once the proxy has done them.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from testbed.apiserver import ApiServer, ApiServerError
from testbed.build import ensure_binaries
from testbed.kubeconfig import write_admin_kubeconfig
from tests.fixtures.proxy import Proxy

T = TypeVar("T")
START_TIMEOUT_S = 180.0


_PORTS = random.Random()


def free_port() -> int:
    """A loopback port free now, from below the kernel's ephemeral range (32768-60999 by
    default): the kernel never hands these out for outgoing connections or ``bind(0)``,
    so the port is still free when the child process binds it a moment later."""
    for _ in range(200):
        port = _PORTS.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free loopback port in 20000-32000")


class RestartableApiServer:
    """A kube-apiserver + etcd whose restarts keep the cluster (see module docstring)."""

    def __init__(self, workdir: Path, *, extra_args: Sequence[str] = ()) -> None:
        self.workdir = Path(workdir).resolve()
        self.state = self.workdir / "state"
        self.log_path = self.workdir / "apiserver.log"
        self.extra_args = list(extra_args)
        self.ports = (free_port(), free_port(), free_port())
        self.token = secrets.token_urlsafe(32)
        self._proc: subprocess.Popen[bytes] | None = None
        self.handle: ApiServer | None = None
        self.restarts = 0

    def start(self) -> ApiServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.state, ignore_errors=True)
        token_file = self.workdir / "admin-token"
        token_file.write_text(self.token + "\n")
        token_file.chmod(0o600)
        self._launch()
        return self._describe()

    def restart(self) -> None:
        """SIGTERM the server, wait for it to exit, start it again on the same data and
        ports; returns once it answers /readyz."""
        self._terminate()
        self._launch()
        self.restarts += 1

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.state, ignore_errors=True)

    def _argv(self) -> list[str]:
        binary = ensure_binaries().apiserver
        secure, etcd, peer = self.ports
        argv = [str(binary), f"--data-dir={self.state}",
                f"--admin-token-file={self.workdir / 'admin-token'}",
                f"--secure-port={secure}", f"--etcd-port={etcd}", f"--etcd-peer-port={peer}",
                "--exit-with-parent"]
        if self.extra_args:
            argv += ["--", *self.extra_args]
        return argv

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        secure = self.ports[0]
        ca = self.state / "cert" / "apiserver.crt"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ApiServerError(f"the API server exited with {self._proc.returncode}; "
                                     f"see {self.log_path}")
            if ca.exists() and _ready(f"https://127.0.0.1:{secure}", ca, self.token):
                return
            time.sleep(0.2)
        self._terminate()
        raise ApiServerError(f"the API server was not ready in {START_TIMEOUT_S:.0f}s; "
                             f"see {self.log_path}")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _describe(self) -> ApiServer:
        endpoints = json.loads((self.state / "endpoints.json").read_text())
        kubeconfig = self.workdir / "kubeconfig"
        write_admin_kubeconfig(kubeconfig, endpoints["url"], Path(endpoints["ca_file"]),
                               self.token)
        self.handle = ApiServer(url=endpoints["url"], token=self.token,
                                ca_file=Path(endpoints["ca_file"]), kubeconfig=kubeconfig,
                                kubectl=ensure_binaries().kubectl,
                                etcd_url=endpoints.get("etcd_url"), workdir=self.workdir)
        return self.handle


def _ready(url: str, ca: Path, token: str) -> bool:
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        req = urllib.request.Request(f"{url}/readyz",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return bool(resp.status == 200)
    except (OSError, ssl.SSLError, urllib.error.HTTPError):
        return False


class ThreadedProxy:
    """`Proxy` on its own event loop thread. Caller duty: `close()`."""

    def __init__(self, target_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)
        self._thread.start()
        self._proxy: Proxy = self._call(self._make(target_port))
        self.port = self._proxy.port

    async def _make(self, target_port: int) -> Proxy:
        proxy = Proxy(target_port)
        await proxy.start()
        return proxy

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def _do(self, action: str) -> None:
        async def run() -> None:
            getattr(self._proxy, action)()
        self._call(run())

    def cut(self) -> None:
        self._do("cut")

    def freeze(self) -> None:
        self._do("freeze")

    def thaw(self) -> None:
        self._do("thaw")

    def block(self) -> None:
        self._do("block")

    def unblock(self) -> None:
        self._do("unblock")

    @property
    def connections(self) -> int:
        return self._proxy.connections

    def close(self) -> None:
        if not self._loop.is_closed():
            try:
                self._call(self._proxy.stop())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(30)
                self._loop.close()
