"""The benchmark's pure parts: matching changes to acknowledgements, verdicts, sizes.

The harness itself runs end to end in `make bench-quick` (every scenario and peer at tiny
sizes against the testbed, asserting every run ended right).
"""

from __future__ import annotations

import time

import pytest

from bench.load import MIX, Change, make_plans
from bench.measure import match, percentiles, settled, verify
from bench.scenarios import Ceiling, Sizes
from testbed.simulator.lifecycles import Expectation, Shape, State
from testbed.simulator.shapes import render
from testbed.simulator.workloads import new_traceparent, pod_manifest


def _update(run_id: str, state: str, at: float) -> dict[str, object]:
    return {"run_id": run_id, "to_state": state, "received_at": at}


def test_latency_is_acknowledgement_minus_acceptance():
    m = match([Change("a", "running", 10.0), Change("a", "succeeded", 12.0)],
              [_update("a", "running", 10.25), _update("a", "succeeded", 12.5)])
    assert m.latencies == [0.25, 0.5]
    assert (m.superseded, m.missing, m.first_ack, m.last_ack) == (0, 0, 10.25, 12.5)


def test_a_coalesced_intermediate_state_is_superseded_not_missing():
    m = match([Change("a", "running", 1.0), Change("a", "failed", 1.1),
               Change("b", "running", 1.0)],
              [_update("a", "failed", 1.3)])
    assert m.latencies == pytest.approx([0.2])
    assert (m.superseded, m.missing) == (1, 1)


def test_percentiles_use_nearest_rank_and_tolerate_empty_input():
    values = [i / 100 for i in range(1, 101)]
    assert percentiles(values) == {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}


def test_verify_checks_state_then_reason_then_exit_code():
    expect = {"a": Expectation(State.FAILED, "OOMKilled", 137),
              "b": Expectation(State.SUCCEEDED, "Completed", 0),
              "c": Expectation(State.FAILED, None, None),
              "d": Expectation(State.RUNNING, None, None)}
    runs = [{"id": "a", "state": "failed", "reason": "Error", "exit_code": 137},
            {"id": "b", "state": "succeeded", "reason": "Completed", "exit_code": 0},
            {"id": "c", "state": "failed", "reason": "anything", "exit_code": 3}]
    count, examples = verify(expect, runs)
    assert count == 2
    assert examples == ["a: reason 'Error' (want 'OOMKilled')", "d: no such run"]


def test_settled_counts_runs_not_yet_in_their_expected_state():
    expect = {"a": Expectation(State.SUCCEEDED, None, None),
              "b": Expectation(State.RUNNING, None, None)}
    assert settled(expect, [_update("a", "running", 1)]) == 2
    assert settled(expect, [_update("a", "succeeded", 1), _update("b", "running", 1)]) == 0


def test_full_sizes_scale_to_the_api_servers_ceiling():
    sizes = Sizes.full_run().scaled(Ceiling(jobs_per_s=40, writes_per_s=180,
                                            status_per_s=150, apiserver_cores=1.0))
    assert sizes.steady_rates == (20, 40, 60)  # 50, 100 and 150 % of the ceiling
    assert sizes.election_jobs == 600  # 80 % of what 5 s of final statuses allow
    assert sizes.trials == 3
    assert Sizes.quick_run().scaled(Ceiling(1, 1, 1, 1)) == Sizes.quick_run()


def test_plans_use_only_lifecycles_every_peer_can_follow():
    plans = make_plans(200, namespace="ns", prefix="p")
    assert {p.lifecycle.name for p in plans} <= set(MIX)
    assert len({p.run_id for p in plans}) == 200


@pytest.mark.parametrize(("shape", "want"), [
    (Shape.RUNNING, {"state": "running"}),
    (Shape.SUCCEEDED, {"state": "succeeded", "reason": "Completed", "exit_code": 0}),
    (Shape.OOM_KILLED, {"state": "failed", "reason": "OOMKilled", "exit_code": 137}),
])
def test_the_kopf_peer_derives_the_simple_way(shape, want):
    kopf_peer = pytest.importorskip("bench.peers.kopf_peer")
    plan = make_plans(1, namespace="ns", prefix="p")[0]
    pod = pod_manifest(plan, new_traceparent())
    pod["metadata"]["uid"] = "u-1"
    pod["status"] = render(shape, pod, time.time())
    assert kopf_peer.derive(pod) == {"run_id": plan.run_id, **want}


def test_other_cold_sizes_get_a_limit_in_proportion_to_their_pods():
    sizes = Sizes.full_run().with_cold_sizes((10_000, 50_000, 200_000))
    assert sizes.cold_sizes == (10_000, 50_000, 200_000)
    assert sizes.cold_timeout_s == (60.0, 90.0, 360.0)
    assert len(Sizes.full_run().cold_timeout_s) == len(Sizes.full_run().cold_sizes)


def test_only_what_runs_to_the_catch_up_limit_gets_one_catch_up_trial():
    sizes = Sizes.full_run()
    # kopf re-sends every run in the cold start (one trial there), but finishes the
    # catch-up at +200 ms well within the limit: its spread is measured like the others'.
    assert set(sizes.cold_one_trial) == {"kopf", "baseline-serial"}
    assert sizes.catchup_one_trial == ("baseline-serial",)
    assert Sizes.quick_run().cold_one_trial == Sizes.quick_run().catchup_one_trial == ()
