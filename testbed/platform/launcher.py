"""Start, stop and poke a reference Platform server from synchronous code.

Used by tests, benchmarks and the simulator. Promises:

* :func:`launch` returns only once the server accepts requests (its ready file exists and
  ``/healthz`` answers), or raises ``RuntimeError`` with the tail of the server's log.
* The server runs as a child process with its log in ``workdir/platform.log``; the database
  and token file live in ``workdir`` unless given. Nothing is written elsewhere.
* :meth:`PlatformServer.restart` reuses the same database and, when it is free, the same
  port (``url`` is updated if the port had to change). Data committed before a stop — even
  a ``kill=True`` stop — is there after the restart.
* The helpers (``create_run``, ``set_faults``, ...) are thin, synchronous stdlib HTTP
  calls, raising :class:`AdminError` on an unexpected status. They bypass nothing: they go
  through the same HTTP API (faults affect ``/api/v1`` helpers, never ``/admin`` ones).

Caller duty: call :meth:`PlatformServer.stop` (or use the handle as a context manager).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0


class AdminError(RuntimeError):
    """A helper call got an unexpected HTTP status; ``status`` and ``body`` tell what."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} answered {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class PlatformServer:
    """A running reference server. ``url`` has no trailing slash and no ``/api/v1``."""

    workdir: Path
    token: str = field(repr=False)
    token_file: Path
    db_path: Path
    url: str = ""
    pid: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_file: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: Any = field(default=None, repr=False)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "platform.log"

    def _start(self, port: int) -> None:
        ready = self.workdir / "platform.ready.json"
        ready.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        command = [
            sys.executable, "-m", "testbed.platform", "serve",
            "--host", "127.0.0.1", "--port", str(port),
            "--db", str(self.db_path), "--token-file", str(self.token_file),
            "--ready-file", str(ready),
        ]
        if self.tls_cert is not None and self.tls_key is not None:
            command += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, cwd=str(self.workdir),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"platform server exited with {self._process.returncode}:\n{self._tail()}"
                )
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError(f"platform server not ready in {START_TIMEOUT_S}s:\n"
                                   f"{self._tail()}")
            time.sleep(0.02)
        info = json.loads(ready.read_text(encoding="utf-8"))
        self.url = info["url"]
        self.pid = int(info["pid"])
        self._request("GET", "/healthz")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (graceful) or, with ``kill=True``, SIGKILL (a crash)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop (gracefully, or SIGKILL with ``kill=True``) and start again on the same db."""
        port = self.port
        self.stop(kill=kill)
        try:
            self._start(port)
        except RuntimeError:
            self.stop(kill=True)
            self._start(0)  # the old port was taken meanwhile

    def __enter__(self) -> PlatformServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- HTTP helpers ------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200,)
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        if status not in ok:
            raise AdminError(method, path, status, payload)
        return status, payload

    def set_faults(self, **knobs: Any) -> dict[str, Any]:
        """Merge ``knobs`` into the fault configuration (``PUT /admin/faults``)."""
        return self._request("PUT", "/admin/faults", knobs)[1]

    def clear_faults(self) -> dict[str, Any]:
        return self._request("DELETE", "/admin/faults")[1]

    def get_faults(self) -> dict[str, Any]:
        return self._request("GET", "/admin/faults")[1]

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/admin/stats")[1]

    def updates(self, since: int = 0) -> list[dict[str, Any]]:
        """Every update-log entry with ``seq > since``, oldest first (follows pages)."""
        entries: list[dict[str, Any]] = []
        while True:
            page = self._request("GET", f"/admin/updates?since={since}&limit=10000")[1]
            entries.extend(page["items"])
            since = page["last_seq"]
            if not page["more"]:
                return entries

    def create_run(
        self, run_id: str | None = None, *, kind: str = "job",
        pod_namespace: str | None = None, pod_name: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind}
        for key, value in (("id", run_id), ("pod_namespace", pod_namespace),
                           ("pod_name", pod_name)):
            if value is not None:
                body[key] = value
        return self._request("POST", "/api/v1/runs", body, ok=(201,))[1]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        status, body = self._request(
            "GET", f"/api/v1/runs/{urllib.parse.quote(run_id, safe='')}", ok=(200, 404)
        )
        return body if status == 200 else None

    def patch_run(self, run_id: str, **fields: Any) -> tuple[int, dict[str, Any]]:
        """Raw PATCH: returns ``(status, body)`` for any 2xx/4xx answer."""
        return self._request(
            "PATCH", f"/api/v1/runs/{urllib.parse.quote(run_id, safe='')}", fields,
            ok=(200, 400, 404, 409, 412, 428),
        )

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        """The user cancels on the platform: sets ``cancel_requested``."""
        return self._request(
            "POST", f"/api/v1/runs/{urllib.parse.quote(run_id, safe='')}/cancel"
        )[1]

    def list_runs(
        self, states: tuple[str, ...] = (), page_size: int = 1000
    ) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            query: list[tuple[str, str]] = [("state", s) for s in states]
            query.append(("limit", str(page_size)))
            if after is not None:
                query.append(("after", after))
            page = self._request("GET", "/api/v1/runs?" + urllib.parse.urlencode(query))[1]
            runs.extend(page["items"])
            after = page["next"]
            if after is None:
                return runs


def launch(
    workdir: Path, *, token: str | None = None, db: Path | None = None,
    tls_cert: Path | None = None, tls_key: Path | None = None, ca_file: Path | None = None,
) -> PlatformServer:
    """Start a server whose files live in ``workdir``; returns once it answers requests.

    ``token`` defaults to a random one; it is written to ``workdir/platform.token``
    (mode 0600). ``db`` defaults to ``workdir/platform.db`` (reused if it exists). With
    ``tls_cert`` and ``tls_key`` it serves HTTPS; the helpers then trust ``ca_file``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(24)
    token_file = workdir / "platform.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    server = PlatformServer(
        workdir=workdir, token=token, token_file=token_file,
        db_path=Path(db) if db is not None else workdir / "platform.db",
        tls_cert=tls_cert, tls_key=tls_key, ca_file=ca_file,
    )
    server._start(0)
    return server
