"""Invalid configuration at the command line: one clear error naming the field, exit 2,
before anything starts (no connection, no log line, no traceback).

tests/test_config.py covers the loader itself; these tests hold the `sniffer` programs to
the same contract, with a few hand-picked bad files and environments (as real processes)
and hypothesis-generated values for every setting (in process, where a started watcher
would fail the test).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import socket
import subprocess
import sys
import typing
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cli.main as cli
from config.settings import Settings
from testbed.apiserver import ApiServer

REPO = Path(__file__).resolve().parents[1]
HEADER = "sniffer: invalid configuration:"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "SNIFFER_")) and k != "KUBECONFIG"}
    token = tmp_path / "token"
    token.write_text("not-a-real-token\n")
    env.update({"OTEL_SDK_DISABLED": "true",
                # Everything a start would touch is unusable: a start would not go unseen.
                "SNIFFER_KUBE_KUBECONFIG": str(tmp_path / "no-such-kubeconfig"),
                "SNIFFER_PLATFORM_URL": "http://127.0.0.1:9",
                "SNIFFER_PLATFORM_TOKEN_FILE": str(token)})
    env.update(extra)
    return env


def assert_one_clear_error(returncode: int, stdout: str, stderr: str, *needles: str) -> None:
    assert returncode == 2, stderr
    assert stdout == ""
    assert stderr.startswith(HEADER), stderr
    assert stderr.count(HEADER) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr, stderr


BAD = [
    ("workers:\n  count: lots\n", {}, ["workers.count: must be an integer (got 'lots')"]),
    ("kube: [\n", {}, ["not valid YAML"]),
    ("kube:\n  page_size: 0\nleader:\n  retry_period_s: -1\n", {},
     ["kube.page_size", "leader.renew_deadline_s"]),
    ("telemetry:\n  log_format: xml\n", {"SNIFFER_TELEMETRY_LOG_LEVEL": "LOUD"},
     ["telemetry.log_format", "telemetry.log_level"]),
    ("", {"SNIFFER_HEALTH_PORT": "70000"}, ["health.port: must be in 0..65535"]),
    ("", {"SNIFFER_WORKERS_BASE_DELAY_S": "soon"},
     ["workers.base_delay_s (from SNIFFER_WORKERS_BASE_DELAY_S): must be a number"]),
    ("", {"SNIFFER_FINALIZERS_ENABLED": "perhaps"}, ["finalizers.enabled"]),
    ("", {"SNIFFER_KUBE_WATCH_TIMEOUT_MIN_S": "900"}, ["kube.watch_timeout_min_s"]),
    ("", {"SNIFFER_KUBE_VERIFY_TLS": "nope"}, ["kube.verify_tls"]),
    ("", {"SNIFFER_PLATFORM_URL": "platform.internal"}, ["platform.url: must start with"]),
    ("platform:\n  token: hunter2hunter2\n", {}, ["platform.token: unknown field"]),
    ("watch:\n  workers: 3\n", {}, ["watch: unknown section"]),
]


@pytest.mark.parametrize(("yaml_text", "env", "needles"), BAD,
                         ids=[n[0].split(":")[0] for _, _, n in BAD])
@pytest.mark.parametrize("command", ["watch", "reconcile"])
def test_a_bad_setting_stops_the_program_with_one_error_naming_it(
        tmp_path: Path, yaml_text: str, env: dict[str, str], needles: list[str],
        command: str) -> None:
    config = tmp_path / "sniffer.yaml"
    config.write_text(yaml_text)
    done = subprocess.run([sys.executable, "-m", "cli", command, "--config",
                           str(config)], env=clean_env(tmp_path, **env), capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert_one_clear_error(done.returncode, done.stdout, done.stderr, *needles)
    assert "hunter2" not in done.stderr


def test_a_missing_config_file_is_one_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "cli", "watch", "--config",
                           str(tmp_path / "absent.yaml")], env=clean_env(tmp_path),
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert_one_clear_error(done.returncode, done.stdout, done.stderr, "cannot read")


# -- every field, fuzzed ---------------------------------------------------------------------

def _fields() -> list[tuple[str, str]]:
    out = []
    for group in dataclasses.fields(Settings):
        cls = typing.get_type_hints(Settings)[group.name]
        out += [(group.name, f.name) for f in dataclasses.fields(cls)]
    return out


FIELDS = _fields()
ENV_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                   max_size=40)
VALUES = ENV_TEXT | st.sampled_from(["", " ", "null", "-1", "0", "1e999", "nan", "inf",
                                     "-inf", "9" * 5000, "1_000", "0x10", "true", "yes",
                                     "a,,b", ",", "\u0661\u0662", "3.5", "  7  "])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELDS), VALUES)
def test_any_value_of_any_setting_gives_one_error_before_anything_starts(
        field: tuple[str, str], value: str) -> None:
    """`kube.page_size=0` makes every configuration invalid; the fuzzed field may add its
    own problem. Either way: exit 2, one message, and the watcher is never started."""
    group, name = field
    env = {"SNIFFER_PLATFORM_URL": "http://127.0.0.1:9", "SNIFFER_KUBE_PAGE_SIZE": "0",
           f"SNIFFER_{group.upper()}_{name.upper()}": value}
    if (group, name) == ("kube", "page_size"):
        env["SNIFFER_WORKERS_COUNT"] = "0"
    stderr, stdout = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), \
            mock.patch.object(cli, "_watch", side_effect=AssertionError("started")), \
            mock.patch.object(cli, "setup_logging", side_effect=AssertionError("logging")), \
            contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = cli.main(["watch"])
    assert_one_clear_error(code, stdout.getvalue(), stderr.getvalue())
    problems = stderr.getvalue().splitlines()[1:]
    assert problems
    assert all(line.startswith("  ") for line in problems)
    named = {line.strip().split(" ", 1)[0].rstrip(":") for line in problems}
    # Every problem names its field; coercion problems stop before cross-field checks,
    # so the fuzzed field or the anchor (or both) is named.
    assert named <= {f"{g}.{n}" for g, n in FIELDS}, problems
    assert named & {f"{group}.{name}", "kube.page_size", "workers.count"}, problems


@pytest.mark.parametrize("env", [
    {"SNIFFER_KUBE_NAMESPACES": "Team A"},
    {"SNIFFER_LEADER_LEASE_NAMESPACE": "under_score"},
    {"SNIFFER_LEADER_LEASE_NAME": "Sniffer Watch!"},
])
def test_a_name_kubernetes_would_refuse_is_a_config_error(env: dict[str, str]) -> None:
    full = {"SNIFFER_PLATFORM_URL": "http://127.0.0.1:9", **env}
    stderr, stdout = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, full, clear=True), \
            mock.patch.object(cli, "_watch", return_value=0), \
            mock.patch.object(cli, "setup_logging"), \
            contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = cli.main(["watch"])
    field = next(iter(env)).removeprefix("SNIFFER_").lower().replace("_", ".", 1)
    assert_one_clear_error(code, stdout.getvalue(), stderr.getvalue(), field)


@pytest.mark.parametrize("setting", ["SNIFFER_HEALTH_PORT", "SNIFFER_TELEMETRY_PROMETHEUS_PORT"])
def test_a_port_in_use_is_one_clear_error(tmp_path: Path, setting: str,
                                          apiserver: ApiServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = clean_env(tmp_path, SNIFFER_HEALTH_HOST="127.0.0.1",
                        SNIFFER_KUBE_KUBECONFIG=str(apiserver.kubeconfig),
                        SNIFFER_LEADER_ENABLED="false",
                        **{setting: str(taken.getsockname()[1])})
        if setting == "SNIFFER_TELEMETRY_PROMETHEUS_PORT":
            del env["OTEL_SDK_DISABLED"]  # the endpoint is part of the SDK's metrics
        proc = subprocess.Popen([sys.executable, "-m", "cli", "watch"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # it started regardless of the port
            proc.terminate()
            _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert setting.removeprefix("SNIFFER_").lower().replace("_", ".", 1) in stderr


def test_a_missing_kubeconfig_is_one_clear_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "cli", "watch"],
                          env=clean_env(tmp_path), capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert_one_clear_error(done.returncode, done.stdout, done.stderr, "kube.kubeconfig")
