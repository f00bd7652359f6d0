"""watch.handler: the platform handler's branches, one pod at a time, against the reference
platform over HTTP.

No workers and no queue run here: each test calls `PlatformHandler.handle(key)` on a pod
it put in a real `PodStore` and checks the outcome, what the run ledger recorded, and
what the platform holds. Nothing here talks to Kubernetes: finalizer work is recorded
(the handler only enqueues it) and no rule of the default state policy asks for the
quorum read of a judged failure.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from sniffer.kube import KubeClient
from sniffer.platform import PlatformClient
from sniffer.podview import PodView
from sniffer.states import StatePolicy, WorkloadState
from testbed.platform.launcher import PlatformServer
from tests.test_controller import pod as controller_pod
from watch.handler import PlatformHandler
from watch.ledger import Acked, RunLedger
from watch.store import PodStore, SettledPod
from watch.workers import Result
from watch.workqueue import WorkQueue

NS = "hdl"


def pod(run_id: str, phase: str, *, rv: int = 1, uid: str = "uid-p") -> PodView:
    """The pod "p" of run `run_id` (tests/test_controller.py's builder), with its uid."""
    return dataclasses.replace(controller_pod(run_id, rv, phase, name="p", ns=NS), uid=uid)


class CountingClient(PlatformClient):
    """Counts the state writes the handler attempts (the platform logs only answers)."""

    writes = 0

    async def update_state(self, update: Any, **kw: Any) -> Any:
        self.writes += 1
        return await super().update_state(update, **kw)


@dataclasses.dataclass
class Bed:
    handler: PlatformHandler
    store: PodStore
    ledger: RunLedger
    platform: PlatformServer
    finalizer_work: list[str]
    client: CountingClient

    def state(self, run_id: str) -> str | None:
        return (self.platform.get_run(run_id) or {}).get("state")


@pytest.fixture
async def bed(platform: PlatformServer) -> AsyncIterator[Bed]:
    client = CountingClient(platform.url, platform.token_file, timeout=5)
    ledger = RunLedger(client, clock=time.time)
    store = PodStore((NS,), compaction=ledger)
    finalizer_work: list[str] = []
    observed: dict[str, float] = {}
    handler = PlatformHandler(
        store=store, ledger=ledger, platform=client, pods=cast(KubeClient, None),
        policy=StatePolicy(), attempts=WorkQueue[str](),
        finalizer_loop=lambda p: finalizer_work.append(p.key), observed_at=observed.get)
    try:
        yield Bed(handler, store, ledger, platform, finalizer_work, client)
    finally:
        await client.close()


def new_run(platform: PlatformServer, state: str = "queued") -> str:
    run_id = f"hdl-{uuid.uuid4().hex[:16]}"
    platform.create_run(run_id, pod_namespace=NS, pod_name="p")
    path = {"queued": [], "running": ["running"], "cancelled": ["cancelled"],
            "succeeded": ["running", "succeeded"]}[state]
    current = "queued"
    for to in path:
        status, _ = platform.patch_run(run_id, state=to, expected_state=current)
        assert status == 200
        current = to
    return run_id


async def test_a_412_records_the_runs_real_state_and_asks_to_handle_again(bed: Bed) -> None:
    """Someone else moved the run since the ledger's answer: the write's precondition
    fails, nothing is written, the ledger learns the real state, and the key is handled
    again against it."""
    run_id = new_run(bed.platform)
    bed.ledger.record(run_id, Acked(WorkloadState.QUEUED))
    status, _ = bed.platform.patch_run(run_id, state="running", expected_state="queued")
    assert status == 200  # the reconciler, say, moved it meanwhile
    bed.store.upsert(pod(run_id, "Succeeded"))
    outcome = await bed.handler.handle(f"{NS}/p")
    assert outcome.result is Result.REQUEUE
    assert bed.state(run_id) == "running", "nothing written against a stale state"
    assert bed.ledger.get(run_id) == Acked(WorkloadState.RUNNING)
    outcome = await bed.handler.handle(f"{NS}/p")
    assert outcome.result is Result.DONE
    assert bed.state(run_id) == "succeeded"


async def test_a_409_records_the_platforms_terminal_state_and_sends_nothing_more(
        bed: Bed, caplog: pytest.LogCaptureFixture) -> None:
    """The platform already has a terminal state (cancelled) the ledger did not know:
    our succeeded is no forward move. The handler records the platform's state, logs
    it, and is done; the pod is settled and read back as a record."""
    run_id = new_run(bed.platform, "cancelled")
    bed.ledger.record(run_id, Acked(WorkloadState.RUNNING))
    bed.store.upsert(pod(run_id, "Succeeded"))
    with caplog.at_level(logging.INFO, logger="watch.controller"):
        outcome = await bed.handler.handle(f"{NS}/p")
    assert outcome.result is Result.DONE
    assert bed.state(run_id) == "cancelled", "a terminal state never changes"
    acked = bed.ledger.get(run_id)
    assert acked is not None
    assert acked.state is WorkloadState.CANCELLED
    assert "platform already has a newer or terminal state" in caplog.messages
    assert isinstance(bed.store.get(f"{NS}/p"), SettledPod)
    assert bed.finalizer_work == [f"{NS}/p"], "the release goes to the finalizer loop"


async def test_a_pod_whose_run_is_bound_to_another_pod_is_not_reported(
        bed: Bed, caplog: pytest.LogCaptureFixture) -> None:
    """A foreign pod (its run bound to another pod uid, e.g. an old pod of a retried
    run): nothing is sent for it, its key goes to the finalizer loop (a leftover
    finalizer is released), and once deleted its tombstone is forgotten."""
    run_id = new_run(bed.platform)
    status, _ = bed.platform.patch_run(run_id, state="running", expected_state="queued",
                                       pod_uid="uid-the-real-one")
    assert status == 200
    bed.store.upsert(pod(run_id, "Succeeded", uid="uid-foreign"))
    with caplog.at_level(logging.WARNING, logger="watch.controller"):
        outcome = await bed.handler.handle(f"{NS}/p")
    assert outcome.result is Result.DONE
    assert bed.client.writes == 0, "not even an attempt was sent"
    assert bed.state(run_id) == "running", "the foreign pod's outcome is not the run's"
    assert "run is bound to another pod; not reporting this one" in caplog.messages
    assert bed.finalizer_work == [f"{NS}/p"]
    bed.store.delete(pod(run_id, "Succeeded", rv=2, uid="uid-foreign"), now=1.0)
    assert (await bed.handler.handle(f"{NS}/p")).result is Result.DONE
    assert bed.state(run_id) == "running"
    assert bed.store.get(f"{NS}/p") is None, "the tombstone was handled"
