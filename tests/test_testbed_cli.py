"""`python -m testbed up|status|simulate|down`, as a new user runs it, in a fresh folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path


def sniffer(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_up_simulate_status_down_in_a_fresh_folder(tmp_path: Path) -> None:
    up = sniffer(tmp_path, "up")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        env_file = tmp_path / ".testbed" / "env"
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in env_file.read_text().splitlines())
        assert set(exports) == {"KUBECONFIG", "SNIFFER_PLATFORM_URL",
                                "SNIFFER_PLATFORM_TOKEN_FILE", "SNIFFER_KUBECTL"}
        token = Path(exports["SNIFFER_PLATFORM_TOKEN_FILE"]).read_text().strip()
        assert token not in up.stdout + up.stderr, "the token itself is never printed"

        sim = sniffer(tmp_path, "simulate", "--jobs", "20", "--rate", "40", "--quiet")
        assert sim.returncode == 0, sim.stderr[-3000:]

        pods = subprocess.run([exports["SNIFFER_KUBECTL"], "--kubeconfig",
                               exports["KUBECONFIG"], "get", "pods", "-A", "-o", "json"],
                              capture_output=True, text=True, timeout=60, check=True)
        tracked = [p for p in json.loads(pods.stdout)["items"]
                   if "sniffer.io/run-id" in p["metadata"].get("labels", {})]
        assert tracked, "the simulator's pods are visible to the built kubectl"

        request = urllib.request.Request(
            exports["SNIFFER_PLATFORM_URL"] + "/api/v1/runs?limit=1000",
            headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["items"]
        assert len(runs) == 20

        status = sniffer(tmp_path, "status")
        assert status.returncode == 0 and status.stdout.count("running") == 2, status.stdout
    finally:
        down = sniffer(tmp_path, "down")
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / ".testbed").exists()
    assert sniffer(tmp_path, "status").returncode == 1
