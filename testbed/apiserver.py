"""Start, find and stop a real kube-apiserver (with embedded etcd) on loopback.

Contract:

* `start(workdir)` returns only when the server answers ``/readyz`` with 200, as the admin
  user; otherwise it raises `ApiServerError` whose message includes the tail of the server's
  log, and leaves no process behind.
* Everything a testbed owns lives in its ``workdir``: ``state/`` (etcd data, certificates,
  keys; removed by `ApiServer.stop`), ``kubeconfig`` (admin, token auth; removed by stop),
  ``admin-token`` and ``apiserver.log`` (kept for post-mortems). Two testbeds in two workdirs
  run side by side; a second `start` in a workdir whose server still runs is refused.
* The admin token belongs to group system:masters. The server authorizes with RBAC, so any
  other identity (a service account, an impersonated user) gets only what RBAC grants it.
* By default the server dies with the process that started it (it watches its parent), so a
  killed test run leaves nothing listening. ``detached=True`` lets it outlive its starter;
  `attach(workdir)` finds it again and its `stop` ends it.
* `ApiServer.from_kubeconfig(path)` describes an existing cluster instead; its `stop` ends
  nothing (it only removes files the handle itself wrote).

Only the standard library is used, except that reading a YAML kubeconfig needs PyYAML.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.build import ensure_binaries
from testbed.kubeconfig import KubeconfigError, read_kubeconfig, write_admin_kubeconfig

DEFAULT_START_TIMEOUT = 180.0
"""Seconds to wait for /readyz. A cold start on 2 busy cores takes 10-30 s."""
STOP_TIMEOUT = 20.0
"""Seconds between SIGTERM and SIGKILL."""
_PORT_RACE_ATTEMPTS = 3
_LOG_TAIL_LINES = 40


class ApiServerError(RuntimeError):
    """The API server could not be started, reached or described."""


@dataclass(frozen=True)
class ApiServer:
    """How to reach one API server as its admin, and how to stop it if this handle owns it."""

    url: str
    """Base URL, e.g. ``https://127.0.0.1:40123`` (no trailing slash)."""
    token: str | None
    """Admin bearer token; None if the kubeconfig authenticates otherwise."""
    ca_file: Path | None
    """PEM bundle that verifies the server; None means the system's trust store."""
    kubeconfig: Path
    """A kubeconfig for the admin, usable by kubectl and by Sniffer."""
    kubectl: Path | None = None
    """A kubectl binary matching the server, if known."""
    pid: int | None = None
    """The server's process id when this machine runs it."""
    etcd_url: str | None = None
    """etcd's client URL (its JSON gateway answers ``POST /v3/kv/compaction``), if exposed."""
    client_cert: Path | None = None
    """Client certificate, for kubeconfigs that authenticate with one."""
    client_key: Path | None = None
    insecure: bool = False
    """Skip server certificate verification (only if the kubeconfig says so)."""
    workdir: Path | None = None
    """The testbed's directory, for servers started by `start`."""
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _owned_paths: tuple[Path, ...] = field(default=(), repr=False, compare=False)

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this server (and presents the client cert, if any)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key or self.client_cert))
        return ctx

    def headers(self) -> dict[str, str]:
        """Authentication headers for the admin."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def kubectl_command(self, *args: str) -> list[str]:
        """argv running this handle's kubectl against this server as the admin.

        The caller must make sure `kubectl` is set (it is for servers from `start`).
        """
        if self.kubectl is None:
            raise ApiServerError("no kubectl known for this API server")
        return [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args]

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision and return that revision.

        Every older resourceVersion becomes unusable in etcd. The API server's watch cache
        still serves its own window of events, so only a server started with
        ``extra_args=["--watch-cache=false"]`` answers 410 Gone for them (a watch then gets an
        ERROR event with code 410, an ``Exact`` list a 410 with reason Expired).
        """
        if self.etcd_url is None:
            raise ApiServerError("this API server exposes no etcd URL to compact")
        key = base64.b64encode(b"/").decode()
        header = _post_json(f"{self.etcd_url}/v3/kv/range", {"key": key, "count_only": True})
        revision = int(header["header"]["revision"])
        _post_json(f"{self.etcd_url}/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End the server if this handle owns it (SIGTERM, then SIGKILL), and remove its state.

        Idempotent. A handle from `from_kubeconfig` ends nothing.
        """
        if self._process is not None:
            _terminate_child(self._process, timeout)
        elif self.pid is not None:
            _terminate_pid(self.pid, timeout)
        for path in self._owned_paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    @classmethod
    def from_kubeconfig(cls, path: Path | str, *, kubectl: Path | None = None,
                        context: str | None = None) -> ApiServer:
        """Describe the cluster of a kubeconfig's current (or given) context.

        Supports token and client-certificate auth, file or inline (``*-data``) credentials.
        Inline data is written to a private temporary directory that `stop` removes.
        """
        try:
            access = read_kubeconfig(Path(path), context=context)
        except KubeconfigError as e:
            raise ApiServerError(str(e)) from e
        return cls(
            url=access.url, token=access.token, ca_file=access.ca_file,
            kubeconfig=access.path, kubectl=kubectl, client_cert=access.client_cert,
            client_key=access.client_key, insecure=access.insecure,
            _owned_paths=(access.scratch,) if access.scratch else ())


def start(workdir: Path, *, token: str | None = None, kubectl: Path | None = None,
          apiserver_binary: Path | None = None, extra_args: Sequence[str] = (),
          detached: bool = False, service_account_admission: bool = False,
          timeout: float = DEFAULT_START_TIMEOUT) -> ApiServer:
    """Start a testbed API server whose files live in ``workdir`` and wait until it is ready.

    ``token`` is the admin bearer token (a random one if None). Binaries default to
    `testbed.build.ensure_binaries()` (which may build them: minutes, once). ``extra_args``
    are appended to kube-apiserver's flags. ``service_account_admission`` keeps the
    ServiceAccount admission plugin (pods get their projected token), for a server that a
    controller-manager serves (the real node). The caller must call `ApiServer.stop`.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "state"
    running = _running_pid(state)
    if running is not None:
        raise ApiServerError(f"a testbed API server (pid {running}) already runs in {workdir}")
    if apiserver_binary is None or kubectl is None:
        built = ensure_binaries()
        apiserver_binary = apiserver_binary or built.apiserver
        kubectl = kubectl or built.kubectl
    token = token or secrets.token_urlsafe(32)
    token_file = workdir / "admin-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)

    for attempt in range(1, _PORT_RACE_ATTEMPTS + 1):
        shutil.rmtree(state, ignore_errors=True)
        log_path = workdir / "apiserver.log"
        argv = [str(apiserver_binary), f"--data-dir={state}", f"--admin-token-file={token_file}"]
        if not detached:
            argv.append("--exit-with-parent")
        if service_account_admission:
            argv.append("--service-account-admission")
        if extra_args:
            argv += ["--", *extra_args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=detached)
        try:
            endpoints = _wait_ready(proc, state, token, log_path, timeout)
        except _PortTaken:
            if attempt == _PORT_RACE_ATTEMPTS:
                raise ApiServerError(f"ports kept being taken by other processes:\n"
                                     f"{_tail(log_path)}") from None
            continue
        except BaseException:
            _terminate_child(proc, STOP_TIMEOUT)
            raise
        kubeconfig = workdir / "kubeconfig"
        write_admin_kubeconfig(kubeconfig, endpoints["url"], Path(endpoints["ca_file"]), token)
        return ApiServer(
            url=endpoints["url"], token=token, ca_file=Path(endpoints["ca_file"]),
            kubeconfig=kubeconfig, kubectl=kubectl, pid=proc.pid,
            etcd_url=endpoints.get("etcd_url"), workdir=workdir,
            _process=None if detached else proc, _owned_paths=(state, kubeconfig))
    raise AssertionError("unreachable")


def attach(workdir: Path, *, kubectl: Path | None = None) -> ApiServer:
    """Find the server `start` left running in ``workdir`` (e.g. with ``detached=True``).

    Raises `ApiServerError` if none runs there. The returned handle's `stop` ends it.
    """
    workdir = Path(workdir).resolve()
    state = workdir / "state"
    pid = _running_pid(state)
    if pid is None:
        raise ApiServerError(f"no testbed API server runs in {workdir}")
    endpoints = json.loads((state / "endpoints.json").read_text())
    token = (workdir / "admin-token").read_text().strip()
    return ApiServer(
        url=endpoints["url"], token=token, ca_file=Path(endpoints["ca_file"]),
        kubeconfig=workdir / "kubeconfig", kubectl=kubectl, pid=pid,
        etcd_url=endpoints.get("etcd_url"), workdir=workdir,
        _owned_paths=(state, workdir / "kubeconfig"))


class _PortTaken(Exception):
    pass


def _wait_ready(proc: subprocess.Popen[bytes], state: Path, token: str, log_path: Path,
                timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    endpoints: dict[str, Any] | None = None
    last_error = "endpoints.json not written yet"
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            tail = _tail(log_path)
            if "address already in use" in tail:
                raise _PortTaken()
            raise ApiServerError(f"the API server exited with code {code} before it was "
                                 f"ready; last lines of {log_path}:\n{tail}")
        if endpoints is None:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                endpoints = json.loads((state / "endpoints.json").read_text())
        if endpoints is not None and Path(endpoints["ca_file"]).exists():
            try:
                if _readyz(endpoints["url"], Path(endpoints["ca_file"]), token):
                    return endpoints
                last_error = "/readyz not ok yet"
            except (OSError, ssl.SSLError) as e:
                last_error = f"/readyz: {e}"
        time.sleep(0.2)
    raise ApiServerError(f"the API server was not ready after {timeout:.0f}s ({last_error}); "
                         f"last lines of {log_path}:\n{_tail(log_path)}")


def _readyz(url: str, ca_file: Path, token: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    req = urllib.request.Request(f"{url}/readyz", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False  # 500 while post-start hooks (RBAC bootstrap, ...) are still running


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return dict(json.loads(resp.read()))
    except (OSError, json.JSONDecodeError) as e:
        raise ApiServerError(f"POST {url}: {e}") from e


def _running_pid(state: Path) -> int | None:
    try:
        pid = int(json.loads((state / "endpoints.json").read_text())["pid"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    """True while process `pid` runs (a zombie, exited but not reaped, counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still accepts signal 0.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _terminate_child(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _terminate_pid(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.1)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
