"""`sniffer testbed simulate --node real`: the real-node lifecycle driver's command line,
on the session's real node (it FAILS, never skips, without the node)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from testbed import kubeletrecord
from testbed.conformance import judge
from testbed.platform.launcher import PlatformServer
from testbed.realcli import main
from tests.fixtures.kube import _purge_namespace
from tests.fixtures.realnode import RealNodeBed


def test_simulate_node_real_plays_lifecycles_and_records_what_the_kubelet_wrote(
        real_node: RealNodeBed, platform: PlatformServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    namespace = f"cli-{secrets.token_hex(3)}"
    try:
        code = main(["--node", "real", "--lifecycles", "exit-3,succeeded",
                     "--namespace", namespace, "--kubeconfig", str(real_node.kube.kubeconfig),
                     "--platform-url", platform.url,
                     "--platform-token-file", str(platform.token_file),
                     "--image", real_node.node.image, "--record", str(tmp_path)])
    finally:
        _purge_namespace(real_node.kube, namespace)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "played 2 lifecycles on the real node" in out and "errors 0" in out
    exit3 = kubeletrecord.load(tmp_path / "exit-3.json")
    assert exit3["expected"] == {"state": "failed", "reason": "Error", "exit_code": 3}
    verdict = judge([event["pod"] for event in exit3["events"]])
    assert verdict.outcome == ("failed", "Error", 3)
    last = exit3["events"][-1]["pod"]
    assert "managedFields" not in last["metadata"]  # trimmed to what Sniffer reads
    assert (tmp_path / "succeeded.json").exists()


def test_simulate_node_real_refuses_an_unknown_lifecycle(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--node", "real", "--lifecycles", "no-such-thing"])
    assert stopped.value.code == 2
    assert "no-such-thing" in capsys.readouterr().err
