"""testbed.realnode: a Ready node whose pod statuses are written by a real kubelet.

These are issue 12's done-when checks; they need root and this kind of machine, and FAIL
(never skip) when the node cannot start.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import time
from typing import Any

from sniffer.podview import project
from sniffer.states import Derived, StatePolicy, WorkloadState, derive
from tests.fixtures.realnode import RealNodeBed


def _kubectl(bed: RealNodeBed, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(bed.kube.kubectl_command(*args), input=stdin, capture_output=True,
                          text=True, check=False, timeout=180)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def _run_to_end(bed: RealNodeBed, script: str) -> dict[str, Any]:
    """Create a pod running ``sh -c script`` (no hostNetwork), wait for a terminal phase as
    the kubelet reports it, and return the pod."""
    name = f"t-{secrets.token_hex(4)}"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": bed.node.image,
                                    "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", script]}]}}
    _kubectl(bed, "create", "-f", "-", stdin=json.dumps(pod))
    # Wait for the phase the kubelet writes: poll the pod itself (no fixed sleep decides
    # anything; the deadline only bounds a broken node).
    deadline = time.monotonic() + 120
    while True:
        result: dict[str, Any] = json.loads(_kubectl(bed, "get", f"pod/{name}", "-o", "json"))
        if result.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            break
        assert time.monotonic() < deadline, f"pod {name} not terminal: {result.get('status')}"
        time.sleep(0.2)
    _kubectl(bed, "delete", f"pod/{name}", "--wait=false")
    return result


def test_the_node_registers_and_is_ready(real_node: RealNodeBed) -> None:
    node = json.loads(_kubectl(real_node, "get", "node", "localhost", "-o", "json"))
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"


def test_a_pod_exiting_3_ends_failed_with_exit_code_3_written_by_the_kubelet(
        real_node: RealNodeBed) -> None:
    pod = _run_to_end(real_node, "exit 3")
    assert pod["status"]["phase"] == "Failed"
    (status,) = pod["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 3
    assert status["state"]["terminated"]["reason"] == "Error"
    assert status["containerID"].startswith("containerd://")
    # What Sniffer makes of the kubelet's own status: failed, Error, exit code 3.
    derived = derive(project(pod), now=time.time(), policy=StatePolicy())
    assert isinstance(derived, Derived)
    assert (derived.state, derived.reason, derived.exit_code) == (
        WorkloadState.FAILED, "Error", 3)


def test_a_pod_gets_a_bridge_address_and_no_route_out(real_node: RealNodeBed) -> None:
    # /proc/net/route lists a default route as destination 00000000; exit 0 iff none.
    pod = _run_to_end(real_node, "! grep -q '^[^\t]*\t00000000' /proc/net/route")
    assert pod["status"]["phase"] == "Succeeded"
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network("10.244.0.0/16")
    assert pod["spec"].get("hostNetwork") is not True
