"""Leader election on a real Lease: one writer at a time, fast takeover, clean release."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sniffer.kube import KubeClient
from testbed.apiserver import ApiServer
from watch.leader import LeaderElector, LeadershipLost


@pytest.fixture
async def kube(apiserver: ApiServer) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


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
    a, b = elector(kube, namespace, "a"), elector(kube, namespace, "b")
    ta = asyncio.create_task(a.run())
    await asyncio.wait_for(a.wait_leader(), 30)
    tb = asyncio.create_task(b.run())
    try:
        await asyncio.sleep(0.5)
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
