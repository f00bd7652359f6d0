"""Leader election on a real Lease: one writer at a time, fast takeover, clean release;
and what a standby observes of the leader (pure, with injected times, and on a real Lease)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

import pytest

from sniffer.kube import KubeClient
from tests.fixtures.clock import FakeClock
from tests.fixtures.watcher import eventually
from watch.leader import LeaderElector, LeaderObservation, LeadershipLost


def elector(kube: KubeClient, namespace: str, identity: str) -> LeaderElector:
    return LeaderElector(kube, name="sniffer-test", namespace=namespace, identity=identity,
                         lease_duration_s=3.0, renew_deadline_s=2.0, retry_period_s=0.2)


async def lease(kube: KubeClient, namespace: str) -> dict:
    return await kube.request_json(
        "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/sniffer-test")


async def test_only_one_of_two_candidates_leads(kube, namespace):
    a, b = elector(kube, namespace, "a"), elector(kube, namespace, "b")
    waits = [asyncio.create_task(a.wait_leader()), asyncio.create_task(b.wait_leader())]
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run()), *waits]
    try:
        await asyncio.wait_for(asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED), 30)
        for _ in range(10):  # over several renew rounds, never two leaders
            assert a.is_leader != b.is_leader
            await asyncio.sleep(0.2)
        holder = (await lease(kube, namespace))["spec"]["holderIdentity"]
        assert holder == ("a" if a.is_leader else "b")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_released_lease_is_taken_over_by_the_standby_without_waiting(kube, namespace):
    """The standby's clock stands still, so on its clock the lease it saw held never
    expires: it can take over only because `release()` cleared the holder. (With a
    moving clock it would also take over once the 3 s lease ran out, and a broken
    release would pass unnoticed.)"""
    a = elector(kube, namespace, "a")
    b = LeaderElector(kube, name="sniffer-test", namespace=namespace, identity="b",
                      lease_duration_s=3.0, renew_deadline_s=2.0, retry_period_s=0.2,
                      clock=lambda: 0.0)
    ta = asyncio.create_task(a.run())
    await asyncio.wait_for(a.wait_leader(), 30)
    tb = asyncio.create_task(b.run())
    try:
        # The standby has read the lease as held by `a`.
        await eventually(lambda: b._observed is not None and b._observed[0] == "a")
        assert not b.is_leader
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
        await a.release()
        assert not a.is_leader
        await asyncio.wait_for(b.wait_leader(), 30)
        spec = (await lease(kube, namespace))["spec"]
        assert spec["holderIdentity"] == "b"
        assert spec["leaseTransitions"] >= 1
    finally:
        tb.cancel()
        await asyncio.gather(tb, return_exceptions=True)


async def test_a_leader_whose_lease_is_taken_stops_leading_at_once_and_raises(
        kube, namespace):
    a = elector(kube, namespace, "a")
    ta = asyncio.create_task(a.run())
    await asyncio.wait_for(a.wait_leader(), 30)
    record = await lease(kube, namespace)
    record["spec"]["holderIdentity"] = "usurper"
    await kube.request_json(
        "PUT", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/sniffer-test",
        body=record)
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(ta, 30)
    assert not a.is_leader


# --- what a standby observes of the leader ----------------------------------------------

TERM = ("leader", "2026-01-01T00:00:00.000000Z", 3)


def observed(renewals: list[float], term: tuple = TERM, duration: float = 10.0,
             max_gap_s: float = 3.0) -> LeaderObservation:
    seen = LeaderObservation(max_gap_s=max_gap_s, cover_leases=4)
    for t in renewals:
        seen.renewed(term, duration, t)
    return seen


def test_nothing_is_covered_until_a_leader_was_seen_renewing_for_the_whole_window():
    assert observed([0.0, 2.0, 4.0]).covered_before() is None
    assert observed([2.0 * i for i in range(20)]).covered_before() is None  # 38 s < 40 s
    assert observed([2.0 * i for i in range(21)]).covered_before() == 0.0
    assert observed([2.0 * i for i in range(26)]).covered_before() == 10.0


def test_a_leader_that_stopped_renewing_covers_nothing_after_its_last_renewal():
    seen = observed([2.0 * i for i in range(26)])  # last renewal seen at 50
    assert seen.covered_before() == 10.0  # a deletion seen at 11 waits for more renewals


def test_a_gap_in_renewals_may_hide_a_restart_and_starts_the_window_again():
    seen = observed([2.0 * i for i in range(26)])
    seen.renewed(TERM, 10.0, 54.0)  # 4 s after the last one: more than max_gap_s
    assert seen.covered_before() is None
    for t in range(56, 96, 2):
        seen.renewed(TERM, 10.0, float(t))
    assert seen.covered_before() == 54.0  # the new streak began at 54


def test_a_new_term_starts_the_window_again():
    seen = observed([2.0 * i for i in range(26)])
    seen.renewed(("other", "2026-01-02T00:00:00.000000Z", 4), 10.0, 52.0)
    assert seen.covered_before() is None


def test_a_free_lease_covers_nothing():
    seen = observed([2.0 * i for i in range(26)])
    seen.vacant()
    assert seen.covered_before() is None


class LeaseOnly:
    """A KubeClient that serves one Lease record to GET; a standby never writes."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.record = {"metadata": {"name": "sniffer-test", "resourceVersion": "1"},
                       "spec": spec}

    async def request_json(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        assert method == "GET", f"a standby must not write the lease ({method})"
        return copy.deepcopy(self.record)

    def renew(self, renew_time: str, **changes: Any) -> None:
        self.record["spec"].update(renewTime=renew_time, **changes)


async def test_a_standby_reports_deletions_covered_once_the_leader_renewed_for_the_window():
    clock, covered = FakeClock(500.0), list[float]()
    kube = LeaseOnly({"holderIdentity": "leader", "leaseDurationSeconds": 2,
                      "acquireTime": "t0", "leaseTransitions": 0})
    standby = LeaderElector(cast(KubeClient, kube), name="sniffer-test", namespace="ns",
                            identity="standby", lease_duration_s=3.0, renew_deadline_s=2.0,
                            retry_period_s=0.5, clock=clock, on_covered=covered.append,
                            cover_leases=4)
    started = clock.now
    for i in range(17):  # the leader renews between two of our reads, for 8 s
        kube.renew(f"r{i}")
        assert not await standby._try_acquire_or_renew()
        clock.now += 0.5
    assert covered == [started]  # 4 lease durations of 2 s after the first renewal seen
    kube.renew("restarted")  # seen 3 s later: more than renew deadline + retry period
    clock.now += 2.5
    assert not await standby._try_acquire_or_renew()
    assert standby.observation.covered_before() is None
    assert covered == [started]
    assert not standby.is_leader


async def test_a_standby_observes_a_live_leader_on_a_real_lease(kube, namespace):
    leader = elector(kube, namespace, "leader")
    covered: list[float] = []
    three = asyncio.Event()

    def note(before: float) -> None:
        covered.append(before)
        if len(covered) >= 3:
            three.set()

    standby = LeaderElector(kube, name="sniffer-test", namespace=namespace, identity="standby",
                            lease_duration_s=3.0, renew_deadline_s=2.0, retry_period_s=0.2,
                            on_covered=note, cover_leases=1)
    leading = asyncio.create_task(leader.run())
    await asyncio.wait_for(leader.wait_leader(), 30)
    standing_by = asyncio.create_task(standby.run())
    try:
        await asyncio.wait_for(three.wait(), 60)
        assert covered == sorted(covered)
        assert not standby.is_leader
    finally:
        for task in (leading, standing_by):
            task.cancel()
        await asyncio.gather(leading, standing_by, return_exceptions=True)


@pytest.mark.parametrize("spec", [
    {"holderIdentity": "leader", "leaseDurationSeconds": "soon"},
    {"holderIdentity": "leader", "leaseDurationSeconds": 2, "leaseTransitions": "many"},
    {"holderIdentity": "leader", "leaseDurationSeconds": -2},
    {"holderIdentity": ["leader"], "leaseDurationSeconds": 2},
])
async def test_a_malformed_lease_is_unreadable_not_a_crash(spec: dict[str, Any]) -> None:
    # A real API server refuses such a Lease; a non-conforming one must not kill the elector.
    kube = LeaseOnly({})
    kube.record["spec"] = spec
    standby = LeaderElector(cast(KubeClient, kube), name="sniffer-test", namespace="ns",
                            identity="standby", lease_duration_s=3.0, renew_deadline_s=2.0,
                            retry_period_s=0.5, clock=FakeClock(500.0))
    assert not await standby._try_acquire_or_renew()
    assert not standby.is_leader
