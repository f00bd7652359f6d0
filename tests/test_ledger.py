"""watch.ledger: the run ledger and its seed, against the reference platform over HTTP.

The clock is injected: a pod is "older than the seed" when its creation time lies more
than the margin before the clock time the listing started.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from sniffer.platform import PlatformClient
from sniffer.podview import PodView, project
from sniffer.states import WorkloadState
from testbed.platform.launcher import PlatformServer
from watch.ledger import SEED_MARGIN_S, TERMINAL_UNKNOWN, Acked, RunLedger

CREATED = "2026-01-01T00:00:00Z"
CREATED_AT = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
OLD = CREATED_AT + SEED_MARGIN_S + 60  # a seed taken then finds the pod older than it
NEW = CREATED_AT + SEED_MARGIN_S - 1  # ... and then, within the margin: maybe newer


def pod(run_id: str | None, name: str = "p") -> PodView:
    labels = {"sniffer.io/kind": "job"} | ({"sniffer.io/run-id": run_id} if run_id else {})
    return project({
        "metadata": {"name": name, "namespace": "acks", "uid": f"uid-{name}",
                     "resourceVersion": "1", "creationTimestamp": CREATED, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main"}]},
        "status": {"phase": "Succeeded"}})


def new_run_id() -> str:
    return f"acks-{uuid.uuid4().hex[:16]}"


def finish_run(platform: PlatformServer, run_id: str, state: str) -> None:
    for expected, to in (("queued", "running"), ("running", state)):
        status, _ = platform.patch_run(run_id, state=to, expected_state=expected)
        assert status == 200


@pytest.fixture
async def client(platform: PlatformServer) -> AsyncIterator[PlatformClient]:
    c = PlatformClient(platform.url, platform.token_file, timeout=5)
    try:
        yield c
    finally:
        await c.close()


def acks_at(client: PlatformClient, now: float, **kw: float
            ) -> tuple[RunLedger, Callable[[float], None]]:
    clock = [now]

    def set_clock(t: float) -> None:
        clock[0] = t

    return RunLedger(client, clock=lambda: clock[0], **kw), set_clock


async def test_without_a_seed_no_run_is_terminal_acknowledged_and_every_run_must_be_read(
        client: PlatformClient) -> None:
    acks, _ = acks_at(client, OLD)
    closed = pod(new_run_id())
    assert not acks.terminal_acknowledged(closed)
    assert acks.from_seed(closed) is None
    assert len(acks) == 0


async def test_a_run_open_at_the_listing_gets_its_listed_state_and_stays_open(
        platform: PlatformServer, client: PlatformClient) -> None:
    run_id = new_run_id()
    platform.create_run(run_id)
    acks, _ = acks_at(client, OLD)
    await acks.seed()
    p = pod(run_id)
    assert not acks.terminal_acknowledged(p)
    acked = acks.from_seed(p)
    assert acked is not None
    assert acked.state is WorkloadState.QUEUED
    assert acks.get(run_id) == acked, "moved into the acknowledgements"
    assert not acks.terminal_acknowledged(p)


async def test_an_old_pod_of_a_run_not_open_at_the_listing_is_terminal_acknowledged(
        platform: PlatformServer, client: PlatformClient) -> None:
    closed, unknown = new_run_id(), new_run_id()
    platform.create_run(closed)
    finish_run(platform, closed, "failed")
    acks, _ = acks_at(client, OLD)
    await acks.seed()
    for run_id in (closed, unknown):  # the platform's terminal and never-known runs alike
        assert acks.terminal_acknowledged(pod(run_id))
        assert acks.from_seed(pod(run_id)) is TERMINAL_UNKNOWN
        assert acks.get(run_id) is TERMINAL_UNKNOWN


async def test_a_pod_not_older_than_the_listing_by_the_margin_must_be_read(
        platform: PlatformServer, client: PlatformClient) -> None:
    closed = new_run_id()
    platform.create_run(closed)
    finish_run(platform, closed, "succeeded")
    acks, _ = acks_at(client, NEW)
    await acks.seed()
    assert not acks.terminal_acknowledged(pod(closed))
    assert acks.from_seed(pod(closed)) is None
    assert acks.get(closed) is None


async def test_terminal_acknowledged_holds_iff_from_seed_would_answer_terminal(
        platform: PlatformServer, client: PlatformClient) -> None:
    open_, closed = new_run_id(), new_run_id()
    for run_id in (open_, closed):
        platform.create_run(run_id)
    finish_run(platform, closed, "cancelled")
    for now in (OLD, NEW):
        acks, _ = acks_at(client, now)
        await acks.seed()
        for p in (pod(open_), pod(closed), pod(new_run_id())):
            said = acks.terminal_acknowledged(p)
            answer = acks.from_seed(p)
            assert said == (answer is not None and answer.terminal), (now, p.run_id)


async def test_an_acknowledgement_outranks_the_seed_and_forgetting_it_restores_the_rule(
        platform: PlatformServer, client: PlatformClient) -> None:
    run_id = new_run_id()
    acks, _ = acks_at(client, OLD)
    await acks.seed()
    p = pod(run_id)
    assert acks.terminal_acknowledged(p), "not open at the listing"
    acks.record(run_id, Acked(WorkloadState.RUNNING))
    assert not acks.terminal_acknowledged(p), "the platform's own answer decides"
    acks.record(run_id, Acked(WorkloadState.SUCCEEDED))
    assert acks.terminal_acknowledged(p)
    acks.forget(run_id)
    assert len(acks) == 0
    assert acks.terminal_acknowledged(p)


async def test_a_pod_without_a_run_is_never_terminal_acknowledged(client: PlatformClient) -> None:
    acks, _ = acks_at(client, OLD)
    await acks.seed()
    assert not acks.terminal_acknowledged(pod(None))


async def test_a_failed_listing_leaves_no_seed_not_the_older_one(
        platform: PlatformServer, client: PlatformClient,
        caplog: pytest.LogCaptureFixture) -> None:
    closed = new_run_id()
    acks, set_clock = acks_at(client, OLD)
    await acks.seed()
    assert acks.terminal_acknowledged(pod(closed))
    platform.set_faults(error_rate=1.0, error_status=503)
    set_clock(OLD + 3600)
    with caplog.at_level(logging.WARNING, logger="watch.controller"):
        await acks.seed()
    assert [r.getMessage() for r in caplog.records if r.name == "watch.controller"] == [
        "could not list non-terminal runs; runs will be read one by one"]
    assert not acks.terminal_acknowledged(pod(closed))
    assert acks.from_seed(pod(closed)) is None


async def test_the_seed_margin_is_the_one_given(platform: PlatformServer,
                                               client: PlatformClient) -> None:
    """A ledger built with a shorter margin calls a run closed as soon as its pod is
    older than the listing by that margin (tests need not wait out the default)."""
    closed = new_run_id()
    just_after = CREATED_AT + 1.5
    default, _ = acks_at(client, just_after)
    short, _ = acks_at(client, just_after, seed_margin_s=1.0)
    for ledger in (default, short):
        await ledger.seed()
    assert not default.terminal_acknowledged(pod(closed))
    assert short.terminal_acknowledged(pod(closed))
    with pytest.raises(ValueError, match="seed_margin_s"):
        RunLedger(client, clock=lambda: 0.0, seed_margin_s=-1.0)


async def test_unknown_holds_until_the_platform_answers_or_the_run_is_forgotten(
        client: PlatformClient) -> None:
    ledger, _ = acks_at(client, OLD)
    run_id = new_run_id()
    ledger.record(run_id, Acked(WorkloadState.RUNNING))
    ledger.record_unknown(run_id)
    assert ledger.unknown(run_id)
    assert ledger.get(run_id) is None
    ledger.record(run_id, Acked(WorkloadState.RUNNING))
    assert not ledger.unknown(run_id)
    assert ledger.get(run_id) is not None
    ledger.record_unknown(run_id)
    ledger.forget(run_id)
    assert not ledger.unknown(run_id)
    assert ledger.get(run_id) is None
