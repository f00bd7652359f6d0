"""A tracing backend for the testbed: Jaeger v2, built once from the Go module proxy.

Contract:

* `ensure_jaeger()` returns the path of an executable ``jaeger`` built from
  ``testbed/jaeger`` (a Go module whose only purpose is to pin
  ``github.com/jaegertracing/jaeger/cmd/jaeger`` as a tool, go.mod + go.sum). It is cached
  like the API server (`testbed.gocache`): ``<cache>/sniffer/testbed/jaeger-<key>/bin/jaeger``,
  the key a hash of go.mod and go.sum; a present entry is used as is, an entry appears
  atomically, concurrent callers build once. A cold build needs Go and the module proxy and
  takes ~15 minutes on 2 cores (a big module); `cached_jaeger()` never builds.
* `start(workdir)` runs it with in-memory storage, its OTLP/HTTP receiver and its query
  API on free loopback ports only, and returns once its health check answers; the
  returned `Jaeger` gives ``otlp_endpoint`` (for OTEL_EXPORTER_OTLP_ENDPOINT),
  ``query_url``, `trace(trace_id)` (the query API's OTLP JSON, or None) and `stop()`.
  The process gets SIGTERM if its starter dies (Linux parent-death signal), so a killed
  test run leaves nothing listening. Its log is ``workdir/jaeger.log``.

CLI: ``python -m testbed.jaeger build`` (build if needed, print the path) and
``python -m testbed.jaeger run`` (run until Ctrl-C, printing the exports to use).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import gocache
from testbed.gocache import BuildError, cache_root, ensure_entry, executable, find_go, go_build

MODULE_DIR = Path(__file__).resolve().parent / "jaeger"
TOOL = "github.com/jaegertracing/jaeger/cmd/jaeger"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


class JaegerError(RuntimeError):
    """Jaeger could not be started; the message carries the tail of its log."""


def source_key() -> str:
    return gocache.source_key(MODULE_DIR, [MODULE_DIR / "go.mod", MODULE_DIR / "go.sum"])


def _binary_in(entry: Path) -> Path:
    return entry / "bin" / "jaeger"


def _entry() -> Path:
    return cache_root() / f"jaeger-{source_key()}"


def _complete(entry: Path) -> bool:
    return executable(_binary_in(entry))


def cached_jaeger() -> Path | None:
    """The built binary for the current go.mod/go.sum, or None (never builds)."""
    path = _binary_in(_entry())
    return path if executable(path) else None


def ensure_jaeger(*, quiet: bool = False) -> Path:
    """The binary, built first if needed (see the module docstring); raises `BuildError`."""
    entry = _entry()
    build = functools.partial(_build, entry=entry, quiet=quiet)
    return _binary_in(ensure_entry(entry, complete=_complete, build=build,
                                   waiting=None if quiet else _say_waiting))


def _say_waiting(lock: Path) -> None:
    _say(f"another process is building jaeger; waiting for {lock}")


def _say(message: str) -> None:
    print(f"testbed.jaeger: {message}", file=sys.stderr, flush=True)


def _build(scratch: Path, *, entry: Path, quiet: bool) -> None:
    go = find_go("to build jaeger")
    (scratch / "bin").mkdir()
    if not quiet:
        _say("building Jaeger v2 (first time: ~15 minutes on 2 cores)…")
    started = time.monotonic()
    go_build(go, ["-ldflags", "-s -w", "-o", str(_binary_in(scratch)), TOOL],
             module_dir=MODULE_DIR)
    if not quiet:
        _say(f"built in {time.monotonic() - started:.0f}s: {_binary_in(entry)}")


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Jaeger:
    otlp_port: int
    query_port: int
    health_port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def otlp_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.otlp_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def trace_url(self, trace_id: str) -> str:
        """Where a person looks the trace up (the UI, if the build embeds it)."""
        return f"{self.query_url}/trace/{trace_id}"

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as the query API (api/v3) returns it (OTLP JSON), None if unknown."""
        try:
            with urllib.request.urlopen(f"{self.query_url}/api/v3/traces/{trace_id}",
                                        timeout=10) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/status",
                                        timeout=2) as resp:
                return bool(json.loads(resp.read()).get("healthy"))
        except (OSError, ValueError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.workdir / "jaeger.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start(workdir: Path, *, binary: Path | None = None,
          timeout: float = START_TIMEOUT) -> Jaeger:
    """Run Jaeger in `workdir`; returns once it is healthy, else raises `JaegerError`."""
    binary = binary or ensure_jaeger()
    workdir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _attempt in range(3):  # a free port can be taken before Jaeger binds it
        otlp, query, query_grpc, health = _free_ports(4)
        config = workdir / "config.yaml"
        config.write_text(CONFIG.format(otlp=otlp, query=query, query_grpc=query_grpc,
                                        health=health))
        jaeger = Jaeger(otlp, query, health, workdir)
        with open(workdir / "jaeger.log", "wb") as log:
            jaeger.process = subprocess.Popen(
                [str(binary), "--config", f"file:{config}"], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if jaeger.healthy():
                return jaeger
            assert jaeger.process is not None
            if jaeger.process.poll() is not None:
                break
            time.sleep(0.1)
        last_error = jaeger.log_tail()
        jaeger.stop()
        if "address already in use" not in last_error:
            break
    raise JaegerError(f"jaeger did not become healthy; its log ends:\n{last_error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.jaeger", description=(
        "Jaeger v2 for the testbed: build it (cached), or run it on loopback."))
    parser.add_argument("command", choices=("build", "run"))
    parser.add_argument("--dir", type=Path, default=Path(".testbed/jaeger"),
                        help="working directory for `run` (default .testbed/jaeger)")
    args = parser.parse_args(argv)
    try:
        binary = ensure_jaeger()
    except BuildError as e:
        print(f"testbed.jaeger: {e}", file=sys.stderr)
        return 1
    if args.command == "build":
        print(binary)
        return 0
    jaeger = start(args.dir, binary=binary)
    print(f"export OTEL_EXPORTER_OTLP_ENDPOINT={jaeger.otlp_endpoint}")
    print(f"# look a trace up: {jaeger.query_url}/api/v3/traces/<trace id>  "
          f"(UI: {jaeger.query_url}/search)", flush=True)
    try:
        while jaeger.process is not None and jaeger.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        jaeger.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
