"""Security properties of the `sniffer` programs, at the command line, on the testbed.

* TLS verification of the API server is on by default: with a kubeconfig that names the
  wrong CA, `sniffer reconcile` fails the pass and `sniffer watch` never syncs. Turning
  verification off is explicit and logged at every start, whether by Sniffer's setting
  (``SNIFFER_KUBE_VERIFY_TLS=false``, ``SNIFFER_PLATFORM_VERIFY_TLS=false``) or by the
  kubeconfig itself (``insecure-skip-tls-verify: true``).
* The platform token comes only from a file: ``SNIFFER_PLATFORM_TOKEN`` is refused by both
  programs with exit 2 before anything starts, and the refusal never echoes the value.
* No token ever leaves the process: a full fault scenario at DEBUG level, with OTLP traces,
  metrics and logs exported to a local receiver and a Prometheus endpoint, with platform
  error bursts, connection resets, a token rotation (401, re-read) and `sniffer reconcile`
  passes, is grepped end to end — the watcher log, every reconcile report (JSON) and log,
  the platform's update log and server log, every OTLP body and header, the scrape — for
  the platform tokens (old and new) and the API server's admin token.

RBAC least privilege (sufficient and minimal, can-i refusals, the admission policy that
limits pod patches to Sniffer's finalizer) and the restricted Pod Security profile
(non-root, read-only root filesystem) are checked on the API server by
tests/test_deploy.py; they are not repeated here.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from tests.fixtures.otlp import OtlpReceiver
from tests.reliability import faults
from tests.reliability.context import Ctx
from tests.reliability.harness import Bed, run_scenario
from tests.reliability.model import Load, Scenario
from tests.reliability.servers import free_port

REPO = Path(__file__).resolve().parents[1]
BOUND_S = 120.0


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "SNIFFER_")) and k != "KUBECONFIG"}
    env.update({"OTEL_SDK_DISABLED": "true", "PYTHONUNBUFFERED": "1",
                "SNIFFER_TELEMETRY_LOG_FORMAT": "json"})
    env.update(settings)
    return env


def watch_env(apiserver: ApiServer, platform: PlatformServer, namespace: str,
              **settings: str) -> dict[str, str]:
    return clean_env(**{
        "SNIFFER_KUBE_KUBECONFIG": str(apiserver.kubeconfig),
        "SNIFFER_KUBE_NAMESPACES": namespace,
        "SNIFFER_PLATFORM_URL": platform.url,
        "SNIFFER_PLATFORM_TOKEN_FILE": str(platform.token_file),
        "SNIFFER_LEADER_ENABLED": "false",
        "SNIFFER_HEALTH_HOST": "127.0.0.1",
        "SNIFFER_HEALTH_PORT": str(free_port()),
        **settings})


def sniffer(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cli", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def wait_for(proc: subprocess.Popen[bytes], log: Path, needle: str) -> str:
    """Wait (bounded) until `needle` is in the log; returns the log."""
    deadline = time.monotonic() + BOUND_S
    while True:
        text = log.read_text(errors="replace")
        if needle in text:
            return text
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"{needle!r} not logged in {BOUND_S}s:\n{text}"
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
    return proc.returncode


def ready(env: dict[str, str]) -> bool:
    try:
        with urllib.request.urlopen(
                f"http://127.0.0.1:{env['SNIFFER_HEALTH_PORT']}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def kubeconfig_with(apiserver: ApiServer, path: Path, **cluster: Any) -> Path:
    config = yaml.safe_load(Path(apiserver.kubeconfig).read_text())
    for item in config["clusters"]:
        item["cluster"].pop("certificate-authority", None)
        item["cluster"].update(cluster)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture
def wrong_ca(tmp_path: Path) -> Path:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


# -- TLS --------------------------------------------------------------------------------

def test_turning_tls_verification_off_is_logged_at_start(
        apiserver: ApiServer, platform: PlatformServer, namespace: str, tmp_path: Path):
    env = watch_env(apiserver, platform, namespace, SNIFFER_KUBE_VERIFY_TLS="false",
                    SNIFFER_PLATFORM_VERIFY_TLS="false")
    log = tmp_path / "watch.log"
    proc = sniffer(["watch"], env, log)
    try:
        text = wait_for(proc, log, "caches synced")
    finally:
        assert stop(proc) == 0
    warnings = [json.loads(line) for line in text.splitlines()
                if line.startswith("{") and '"level": "warning"' in line]
    messages = " | ".join(w["message"] for w in warnings)
    assert "TLS verification of the Kubernetes API server is OFF" in messages
    assert "TLS verification of the platform is OFF" in messages


def test_with_verification_on_a_wrong_ca_fails_the_reconcile_pass(
        apiserver: ApiServer, platform: PlatformServer, namespace: str, tmp_path: Path,
        wrong_ca: Path):
    kubeconfig = kubeconfig_with(apiserver, tmp_path / "kubeconfig",
                                 **{"certificate-authority": str(wrong_ca)})
    env = watch_env(apiserver, platform, namespace,
                    SNIFFER_KUBE_KUBECONFIG=str(kubeconfig))
    done = subprocess.run([sys.executable, "-m", "cli", "reconcile", "--output",
                           "json"], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=BOUND_S)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert not report["ok"] and "certificate verify failed" in report["error"].lower()
    assert report["pods_listed"] == 0


def test_with_verification_on_a_wrong_ca_never_lets_the_watcher_sync(
        apiserver: ApiServer, platform: PlatformServer, namespace: str, tmp_path: Path,
        wrong_ca: Path):
    kubeconfig = kubeconfig_with(apiserver, tmp_path / "kubeconfig",
                                 **{"certificate-authority": str(wrong_ca)})
    env = watch_env(apiserver, platform, namespace, SNIFFER_KUBE_KUBECONFIG=str(kubeconfig))
    log = tmp_path / "watch.log"
    proc = sniffer(["watch"], env, log)
    try:
        text = wait_for(proc, log, "list/watch failed, retrying")
        assert "CERTIFICATE_VERIFY_FAILED" in text
        assert not ready(env)
        assert "caches synced" not in log.read_text()
    finally:
        assert stop(proc) == 0


def test_a_kubeconfig_that_skips_verification_is_logged_too(
        apiserver: ApiServer, platform: PlatformServer, namespace: str, tmp_path: Path):
    """Skipping verification must be visible however it was asked for: a kubeconfig's
    ``insecure-skip-tls-verify: true`` turns it off for the Kubernetes client."""
    kubeconfig = kubeconfig_with(apiserver, tmp_path / "kubeconfig",
                                 **{"insecure-skip-tls-verify": True})
    env = watch_env(apiserver, platform, namespace, SNIFFER_KUBE_KUBECONFIG=str(kubeconfig))
    log = tmp_path / "watch.log"
    proc = sniffer(["watch"], env, log)
    try:
        text = wait_for(proc, log, "caches synced")
    finally:
        assert stop(proc) == 0
    assert "TLS verification of the Kubernetes API server is OFF" in text


# -- the platform token only from a file --------------------------------------------------

@pytest.mark.parametrize("command", [["watch"], ["reconcile"]])
def test_a_platform_token_in_the_environment_is_refused_before_anything_starts(
        command: list[str], tmp_path: Path):
    token = "tok-" + secrets.token_urlsafe(24)
    env = clean_env(SNIFFER_PLATFORM_URL="http://127.0.0.1:9", SNIFFER_PLATFORM_TOKEN=token,
                    SNIFFER_KUBE_KUBECONFIG=str(tmp_path / "no-such-kubeconfig"))
    done = subprocess.run([sys.executable, "-m", "cli", *command], env=env,
                          capture_output=True, text=True, cwd=REPO, timeout=BOUND_S)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "platform.token (from SNIFFER_PLATFORM_TOKEN): unknown field" in done.stderr
    assert "token_file" in done.stderr  # it names where the token belongs
    assert token not in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreadable_token_file_stops_the_watcher_before_it_connects(tmp_path: Path):
    env = clean_env(SNIFFER_PLATFORM_URL="http://127.0.0.1:9",
                    SNIFFER_PLATFORM_TOKEN_FILE=str(tmp_path / "missing-token"),
                    SNIFFER_KUBE_KUBECONFIG=str(tmp_path / "no-such-kubeconfig"))
    done = subprocess.run([sys.executable, "-m", "cli", "watch"], env=env,
                          capture_output=True, text=True, cwd=REPO, timeout=BOUND_S)
    assert done.returncode == 2
    assert "platform.token_file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["watch"], ["reconcile"]])
def test_unusable_credentials_exit_2_from_either_command(command: list[str], tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("tok")
    token_file.chmod(0o600)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    env = clean_env(SNIFFER_PLATFORM_URL="http://127.0.0.1:9",
                    SNIFFER_PLATFORM_TOKEN_FILE=str(token_file),
                    SNIFFER_KUBE_KUBECONFIG=str(kubeconfig))
    done = subprocess.run([sys.executable, "-m", "cli", *command], env=env,
                          capture_output=True, text=True, cwd=REPO, timeout=BOUND_S)
    assert done.returncode == 2, done.stderr  # a configuration error, as documented
    assert "no usable Kubernetes credentials" in done.stderr
    assert "Traceback" not in done.stderr


# -- no token in any output of a full run ----------------------------------------------------

@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


async def _tokens_scenario(ctx: Ctx) -> None:
    """Platform faults, a token rotation mid-run, a reconcile pass, and a Prometheus
    scrape of the watcher before it stops."""
    simulation = ctx.start_simulation()
    await faults.platform_burst(ctx, 0.2, 4, "platform 503 burst", error_rate=0.4,
                                error_status=503, retry_after_s=0.2)
    await faults.platform_burst(ctx, 0.35, 4, "platform resets", reset_rate=0.3,
                                reset_phase="after")
    await ctx.at(0.5)
    async with ctx.fault("platform token rotated"):
        new = "rotated-" + secrets.token_urlsafe(24)
        ctx.extras["tokens"].append(new)
        tmp = ctx.platform.token_file.with_suffix(".new")
        tmp.write_text(new + "\n")
        tmp.chmod(0o600)
        tmp.replace(ctx.platform.token_file)
        ctx.platform.token = new  # the admin helpers authenticate with the new one
    await simulation
    await ctx.reconcile(env={"SNIFFER_TELEMETRY_PROMETHEUS_PORT": ""})  # the watcher's
    ctx.extras["scraped"] = await asyncio.to_thread(_scrape, ctx.extras["prometheus_port"])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _outputs(workdir: Path) -> dict[str, bytes]:
    """Every log, report and record file a scenario left (not the token files)."""
    return {str(p): p.read_bytes() for p in workdir.rglob("*")
            if p.is_file() and p.suffix in (".log", ".json", ".jsonl")}


async def test_no_token_appears_in_any_output_of_a_full_run(
        apiserver: ApiServer, otlp: OtlpReceiver, tmp_path: Path):
    prometheus_port = free_port()
    tokens: list[str] = []
    extras: dict[str, Any] = {}

    async def drive(ctx: Ctx) -> None:
        tokens.append(ctx.platform.token)
        ctx.extras.update(tokens=tokens, prometheus_port=prometheus_port)
        try:
            await _tokens_scenario(ctx)
        finally:
            extras.update(ctx.extras)
            extras["updates"] = ctx.platform.updates()
            extras["platform_log"] = ctx.platform.log_path

    scenario = Scenario(
        "no-token-leaks", "DEBUG logs, OTLP export, Prometheus, platform faults, a token "
        "rotation, reconcile", Load(jobs=200, rate=20), drive=drive,
        leader_election=True,
        env={"SNIFFER_TELEMETRY_LOG_LEVEL": "DEBUG", "OTEL_SDK_DISABLED": "false",
             "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_LOGS_EXPORTER": "otlp",
             "OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_BSP_SCHEDULE_DELAY": "200",
             "SNIFFER_TELEMETRY_PROMETHEUS_PORT": str(prometheus_port)})
    result = await run_scenario(scenario, Bed(apiserver), tmp_path)
    assert result.ok, result.problems
    assert len(tokens) == 2 and result.platform_requests.get("401"), (
        "the rotation must have been met with a 401 and a re-read")
    assert otlp.raw and "sniffer_" in extras["scraped"]
    secrets_ = [*tokens, apiserver.token or ""]
    assert all(len(s) >= 16 for s in secrets_)
    outputs = await asyncio.to_thread(_outputs, Path(result.workdir))
    outputs["platform update log"] = json.dumps(extras["updates"]).encode()
    outputs["prometheus scrape"] = extras["scraped"].encode()
    outputs.update({f"otlp body {i}": body for i, body in enumerate(otlp.raw)})
    outputs.update({f"otlp headers {i}": json.dumps(h).encode()
                    for i, h in enumerate(otlp.headers)})
    assert any("reconcile-" in name for name in outputs), "the reconcile report is grepped"
    assert any(name.endswith("watcher-0.log") for name in outputs)
    assert any(name.endswith("platform.log") for name in outputs)
    leaks = [(name, which) for name, data in outputs.items()
             for which, s in enumerate(secrets_) if s.encode() in data]
    assert not leaks, f"tokens leaked into: {leaks}"
