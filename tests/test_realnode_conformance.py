"""The simulator held to the real kubelet: recorded fixtures (tests/fixtures/kubelet/).

* Each recording, judged as the watcher would judge it (`testbed.conformance.judge`),
  ends in its lifecycle's expected platform outcome: Sniffer's state mapping checked
  against what a real kubelet wrote, without needing the node (pure, fast).
* For each lifecycle the simulator also plays (`realcatalogue.SIMULATED_AS`), the
  simulator's pods on a real kube-apiserver, judged the same way, reach the same outcome
  (state, reason, and exit code where the lifecycle fixes it), decided by a version with
  the same fields Sniffer reads, through every state the kubelet went through.

Re-record with ``sniffer testbed up --node real`` and
``sniffer testbed simulate --node real --decided-within 5 --record tests/fixtures/kubelet``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sniffer.kube import KubeClient
from sniffer.states import StatePolicy
from testbed import kubeletrecord
from testbed.conformance import differences, judge
from testbed.platform.launcher import PlatformServer
from testbed.podfeed import feeding
from testbed.realcatalogue import CATALOGUE, SIMULATED_AS, Act
from testbed.simulator.config import Distribution, SimConfig
from testbed.simulator.driver import simulate
from tests.fixtures.watcher import BOUND_S

# The recordings were made with no Sniffer deciding; a stuck image is judged under a
# short stuck-image rule (the truth tests run Sniffer with the same).
POLICY = StatePolicy(image_pull_failure_after_s=2.0)


def _versions(name: str) -> list[dict[str, Any]]:
    document = kubeletrecord.load(kubeletrecord.FIXTURES / f"{name}.json")
    assert document["lifecycle"] == name
    return [event["pod"] for event in document["events"]]


def _at_its_end(pod: dict[str, Any] | None, gone: bool) -> bool:
    """A simulated pod's last version: gone, or in a terminal phase."""
    return gone or ((pod or {}).get("status") or {}).get("phase") in ("Succeeded", "Failed")


def test_every_real_lifecycle_has_a_recorded_kubelet_fixture() -> None:
    recorded = {p.stem for p in kubeletrecord.FIXTURES.glob("*.json")}
    assert sorted(set(CATALOGUE) - recorded) == []
    assert sorted(recorded - set(CATALOGUE)) == []  # no stale recording of a lost lifecycle


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_the_kubelets_recorded_statuses_end_in_the_lifecycles_expected_outcome(
        name: str) -> None:
    lc = CATALOGUE[name]
    verdict = judge(_versions(name), policy=POLICY,
                    cancel_requested=lc.act in (Act.CANCEL, Act.CANCEL_NO_ANNOTATION,
                                                Act.CANCEL_PENDING))
    want = lc.outcome
    assert verdict.outcome is not None, verdict
    state, reason, exit_code = verdict.outcome
    assert (state, reason) == (want.state.value, want.reason)
    if want.exit_code is not None:
        assert exit_code == want.exit_code
    assert verdict.visited[0] == "queued"


@pytest.mark.parametrize("name", sorted(SIMULATED_AS))
async def test_the_simulator_matches_the_kubelet_recording(
        name: str, platform: PlatformServer, kube: KubeClient, namespace: str) -> None:
    lc = CATALOGUE[name]
    real = judge(_versions(name), policy=POLICY,
                 cancel_requested=lc.act in (Act.CANCEL, Act.CANCEL_PENDING))
    config = SimConfig(jobs=4, rate=0, namespace=namespace, seed=12,
                       mix={SIMULATED_AS[name]: 1.0}, kinds={lc.kind: 1.0},
                       duration=Distribution("uniform", 0.3, 0.6),
                       run_prefix=f"conf-{namespace[-6:]}")
    async with feeding(kube, namespace) as feed:
        result = await simulate(kube, platform.url, platform.token_file, config)
        assert result.errors == []
        # The simulator's last writes were accepted; wait for the watch to deliver them.
        for outcome in result.outcomes:
            await asyncio.wait_for(feed.until(outcome.pod.split("/", 1)[1], _at_its_end),
                                   BOUND_S)
    judged = 0
    for pod_name, history in feed.history.items():
        simulated = judge([obj for _, obj in history], policy=POLICY,
                          cancel_requested=lc.act in (Act.CANCEL, Act.CANCEL_PENDING))
        assert differences(real, simulated,
                           exit_code_fixed=lc.outcome.exit_code is not None) == [], pod_name
        judged += 1
    assert judged == config.jobs
