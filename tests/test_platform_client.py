"""Sniffer's Platform API client (sniffer/platform.py) against the real reference server.

The values and errors on their own: tests/test_platform_model.py; the token file on its own:
tests/test_platform_token.py.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import traceback
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from sniffer.platform import PlatformClient
from sniffer.platform_model import (
    Outcome,
    PlatformError,
    PlatformRejected,
    PlatformUnavailable,
    Run,
    StateUpdate,
)
from sniffer.platform_token import TokenFile
from testbed.platform.launcher import PlatformServer, launch


@pytest.fixture
async def client(platform: PlatformServer) -> AsyncIterator[PlatformClient]:
    async with PlatformClient(platform.url, platform.token_file, timeout=5) as c:
        yield c


# -- reads and creates ---------------------------------------------------------------------

async def test_get_run_returns_a_typed_run_with_aware_times(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id, kind="app", pod_namespace="ns", pod_name="web-1")
    run = await client.get_run(run_id)
    assert isinstance(run, Run)
    assert (run.id, run.state, run.version, run.kind) == (run_id, "queued", 1, "app")
    assert (run.pod_namespace, run.pod_name, run.pod_uid) == ("ns", "web-1", None)
    assert run.created_at.tzinfo is not None
    assert abs(datetime.now(UTC) - run.created_at) < timedelta(minutes=5)
    assert not run.terminal
    assert run.started_at is None
    assert run.cancel_requested is False


async def test_get_run_of_an_unknown_id_returns_none(client: PlatformClient) -> None:
    assert await client.get_run("never-created") is None


async def test_create_run_and_a_duplicate_is_rejected_with_already_exists(
    client: PlatformClient, unique_run_id
) -> None:
    run_id = unique_run_id()
    run = await client.create_run(run_id, kind="notebook", pod_name="nb")
    assert (run.id, run.kind, run.pod_name, run.state) == (run_id, "notebook", "nb", "queued")
    with pytest.raises(PlatformRejected) as caught:
        await client.create_run(run_id)
    assert (caught.value.status, caught.value.code) == (409, "already_exists")


class _State(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"


async def test_list_runs_follows_next_across_pages_in_id_order(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    ids = [unique_run_id() for _ in range(7)]
    for run_id in ids:
        platform.create_run(run_id)
    platform.patch_run(ids[0], state="running", expected_version=1)
    platform.patch_run(ids[1], state="failed", expected_version=1)
    listed = [r async for r in client.list_runs([_State.QUEUED, "running"], page_size=2)]
    mine = [r for r in listed if r.id in set(ids)]
    assert [r.id for r in mine] == sorted(set(ids) - {ids[1]})
    assert {r.state for r in mine} == {"queued", "running"}
    assert [r.id for r in listed] == sorted(r.id for r in listed)
    everything = {r.id async for r in client.list_runs([])}
    assert set(ids) <= everything


async def test_list_runs_refuses_an_unknown_state_before_sending(
    client: PlatformClient,
) -> None:
    with pytest.raises(ValueError, match="unknown state"):
        [r async for r in client.list_runs(["sleeping"])]


# -- update outcomes -----------------------------------------------------------------------

async def test_update_outcomes_applied_then_unchanged(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    started = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    update = StateUpdate(run_id, "running", pod_uid="uid-1", started_at=started)
    result = await client.update_state(update, expected_state="queued")
    assert result.outcome is Outcome.APPLIED
    assert result.run is not None
    assert (result.run.state, result.run.version, result.run.pod_uid) == ("running", 2, "uid-1")
    assert result.run.started_at == started
    again = await client.update_state(update, expected_state="queued")
    assert again.outcome is Outcome.UNCHANGED
    assert again.run == result.run


async def test_attempts_travel_and_a_raise_alone_is_applied(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    first = StateUpdate(run_id, "running", pod_uid="job-uid", attempts=1, attempt_pod="t-a")
    result = await client.update_state(first, expected_state="queued")
    assert result.run is not None
    assert (result.run.attempts, result.run.attempt_pod) == (1, "t-a")
    retry = StateUpdate(run_id, "running", pod_uid="job-uid", attempts=2, attempt_pod="t-b")
    raised = await client.update_state(retry, expected_state="running")
    assert raised.outcome is Outcome.APPLIED
    assert raised.run is not None
    assert (raised.run.state, raised.run.attempts, raised.run.attempt_pod) == (
        "running", 2, "t-b")
    stale = await client.update_state(first, expected_state="running")
    assert stale.outcome is Outcome.UNCHANGED
    assert stale.run == raised.run


def test_a_state_update_refuses_a_negative_attempts_count() -> None:
    with pytest.raises(ValueError, match="attempts"):
        StateUpdate("r", "running", attempts=-1)


async def test_update_outcome_conflict_carries_the_current_run_and_code(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    platform.patch_run(run_id, state="succeeded", expected_version=1, pod_uid="uid-1")
    result = await client.update_state(StateUpdate(run_id, "running"), expected_version=2)
    assert result.outcome is Outcome.CONFLICT
    assert result.code == "conflict"
    assert result.run is not None
    assert result.run.state == "succeeded"
    assert result.run.terminal


async def test_update_outcome_conflict_pod_mismatch(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    platform.patch_run(run_id, state="running", expected_version=1, pod_uid="uid-1")
    result = await client.update_state(
        StateUpdate(run_id, "failed", pod_uid="uid-2", exit_code=1), expected_state="running"
    )
    assert result.outcome is Outcome.CONFLICT
    assert result.code == "pod_mismatch"
    assert result.run is not None
    assert result.run.pod_uid == "uid-1"


async def test_update_outcome_precondition_failed(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    result = await client.update_state(StateUpdate(run_id, "running"), expected_version=5)
    assert result.outcome is Outcome.PRECONDITION_FAILED
    assert result.code == "precondition_failed"
    assert result.run is not None
    assert result.run.version == 1


async def test_update_outcome_not_found(client: PlatformClient) -> None:
    result = await client.update_state(StateUpdate("no-such-run", "running"),
                                       expected_state="queued")
    assert result.outcome is Outcome.NOT_FOUND
    assert result.run is None


async def test_an_update_without_precondition_is_rejected_with_428(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    with pytest.raises(PlatformRejected) as caught:
        await client.update_state(StateUpdate(run_id, "running"))
    assert (caught.value.status, caught.value.code) == (428, "precondition_required")


async def test_an_invalid_update_is_rejected_with_400_naming_the_field(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    with pytest.raises(PlatformRejected) as caught:
        await client.update_state(StateUpdate(run_id, "failed", message="x" * 5000),
                                  expected_state="queued")
    assert (caught.value.status, caught.value.code) == (400, "invalid")
    assert "message" in str(caught.value)


def test_constructing_a_client_needs_no_event_loop_and_starts_nothing(tmp_path: Path) -> None:
    client = PlatformClient("http://127.0.0.1:9/", tmp_path / "missing-token")
    assert "127.0.0.1:9" in repr(client)


async def test_a_closed_client_refuses_calls(platform: PlatformServer) -> None:
    client = PlatformClient(platform.url, platform.token_file)
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_run("x")


async def test_many_concurrent_updates_share_a_small_pool(
    platform: PlatformServer, unique_run_id
) -> None:
    ids = [unique_run_id() for _ in range(100)]
    async with PlatformClient(platform.url, platform.token_file, max_connections=4) as client:
        for run_id in ids:
            await client.create_run(run_id)
        results = await asyncio.gather(*(
            client.update_state(StateUpdate(i, "succeeded", exit_code=0), expected_version=1)
            for i in ids
        ))
    assert {r.outcome for r in results} == {Outcome.APPLIED}


# -- retryable failures ----------------------------------------------------------------------

async def test_429_with_retry_after_raises_unavailable_carrying_the_delay(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    platform.set_faults(error_rate=1, error_status=429, retry_after_s=3)
    with pytest.raises(PlatformUnavailable) as caught:
        await client.update_state(StateUpdate(run_id, "running"), expected_state="queued")
    assert (caught.value.status, caught.value.retry_after) == (429, 3.0)
    platform.set_faults(error_status=503, retry_after_s=0.25)
    with pytest.raises(PlatformUnavailable) as caught:
        await client.get_run(run_id)
    assert (caught.value.status, caught.value.retry_after) == (503, 0.25)
    platform.set_faults(error_status=500, retry_after_s=0)
    with pytest.raises(PlatformUnavailable) as caught:
        await client.get_run(run_id)
    assert (caught.value.status, caught.value.retry_after) == (500, None)


async def test_an_outage_raises_unavailable_with_the_remaining_time(
    client: PlatformClient, platform: PlatformServer
) -> None:
    platform.set_faults(outage_s=30)
    with pytest.raises(PlatformUnavailable) as caught:
        [r async for r in client.list_runs(["queued"])]
    assert caught.value.status == 503
    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 30


async def test_a_reset_connection_raises_unavailable_and_the_client_keeps_working(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    platform.set_faults(reset_rate=1, reset_phase="after")
    update = StateUpdate(run_id, "running")
    with pytest.raises(PlatformUnavailable) as caught:
        await client.update_state(update, expected_state="queued")
    assert caught.value.status is None
    platform.clear_faults()
    retry = await client.update_state(update, expected_state="queued")
    assert retry.outcome is Outcome.UNCHANGED, "the lost answer's update had been applied"


async def test_a_body_slower_than_the_timeout_raises_unavailable(
    platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    platform.set_faults(slow_drip_ms=2000)
    async with PlatformClient(platform.url, platform.token_file, timeout=0.3) as client:
        with pytest.raises(PlatformUnavailable, match="no complete answer") as caught:
            await client.get_run(run_id)
    assert caught.value.status is None
    assert caught.value.retry_after is None


async def test_waiting_for_a_free_connection_does_not_count_against_the_timeout(
    platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    platform.set_faults(latency_ms=300)
    async with PlatformClient(platform.url, platform.token_file, timeout=0.5,
                              max_connections=1) as client:
        runs = await asyncio.gather(*(client.get_run(run_id) for _ in range(3)))
    assert all(run is not None and run.id == run_id for run in runs)


async def test_a_refused_connection_raises_unavailable(platform: PlatformServer) -> None:
    async with PlatformClient("http://127.0.0.1:9", platform.token_file) as client:
        with pytest.raises(PlatformUnavailable):
            await client.get_run("x")


# -- malformed responses ---------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "{not json", "[]", '{"id": 5}', '{"run": {"id": "x"}, "applied": true}', "", "\xff",
])
async def test_a_malformed_response_is_rejected_clearly_and_the_client_keeps_working(
    client: PlatformClient, platform: PlatformServer, unique_run_id, body: str
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    platform.set_faults(malformed_rate=1, malformed_body=body)
    calls = [
        client.get_run(run_id),
        client.update_state(StateUpdate(run_id, "running"), expected_state="queued"),
        client.create_run(unique_run_id()),
    ]
    for call in calls:
        with pytest.raises(PlatformRejected) as caught:
            await call
        assert caught.value.code == "malformed_response"
    with pytest.raises(PlatformRejected, match="malformed_response"):
        [r async for r in client.list_runs(["queued"])]
    platform.clear_faults()
    assert (await client.get_run(run_id)) is not None


# -- the token ---------------------------------------------------------------------------

def _write(path: Path, text: str) -> None:
    path.write_text(text + "\n", encoding="utf-8")


async def test_a_rewritten_token_file_is_picked_up_without_a_restart(
    fresh_platform_server: PlatformServer, tmp_path: Path, unique_run_id
) -> None:
    server = fresh_platform_server
    mine = tmp_path / "client-token"
    _write(mine, server.token)
    run_id = unique_run_id()
    server.create_run(run_id)
    async with PlatformClient(server.url, mine) as client:
        assert await client.get_run(run_id) is not None
        # Rotate: the platform accepts only the new token; the Secret mount is rewritten.
        _write(server.token_file, "rotated-token-2")
        _write(mine, "rotated-token-2")
        assert await client.get_run(run_id) is not None
        # A Secret volume swaps in a new file (new inode) atomically.
        _write(server.token_file, "rotated-token-3")
        staged = tmp_path / "staged"
        _write(staged, "rotated-token-3")
        os.replace(staged, mine)
        assert await client.get_run(run_id) is not None


async def test_a_401_rereads_the_token_even_when_the_file_looks_unchanged(
    fresh_platform_server: PlatformServer, tmp_path: Path, unique_run_id
) -> None:
    server = fresh_platform_server
    mine = tmp_path / "client-token"
    _write(mine, "token-aaaa")
    _write(server.token_file, "token-aaaa")
    run_id = unique_run_id()
    async with PlatformClient(server.url, mine) as client:
        await client.create_run(run_id)
        st = os.stat(mine)
        _write(server.token_file, "token-bbbb")
        _write(mine, "token-bbbb")  # same size, same inode ...
        os.utime(mine, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the same mtime
        assert await client.get_run(run_id) is not None


async def test_a_wrong_token_is_rejected_with_401(
    platform: PlatformServer, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    _write(wrong, "not-the-token")
    async with PlatformClient(platform.url, wrong) as client:
        with pytest.raises(PlatformRejected) as caught:
            await client.get_run("x")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")


async def test_a_missing_token_file_is_rejected_without_a_request(tmp_path: Path) -> None:
    async with PlatformClient("http://127.0.0.1:9", tmp_path / "absent") as client:
        with pytest.raises(PlatformRejected) as caught:
            await client.get_run("x")
    assert caught.value.code == "token_unavailable"


async def test_the_token_never_reaches_a_repr_an_exception_or_a_log(
    platform: PlatformServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    unique_run_id,
) -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    _write(token_file, secret)
    _write(platform.token_file, f"{platform.token}\n{secret}")  # the server accepts both
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    run_id = unique_run_id()
    try:
        async with PlatformClient(platform.url, token_file, timeout=0.5) as client:
            await client.create_run(run_id)
            scenarios: list[dict[str, Any]] = [
                {"error_rate": 1, "error_status": 503, "retry_after_s": 1},
                {"reset_rate": 1},
                {"malformed_rate": 1, "malformed_body": "{"},
                {"slow_drip_ms": 1500},
            ]
            for faults in scenarios:
                platform.set_faults(**faults)
                try:
                    await client.update_state(StateUpdate(run_id, "running"),
                                              expected_state="queued")
                except PlatformError as exc:
                    errors.append(exc)
                platform.clear_faults()
            _write(token_file, "wrong-" + secret)
            await asyncio.sleep(TokenFile.RECHECK_S + 0.1)  # the client re-checks the file
            try:
                await client.get_run(run_id)
            except PlatformError as exc:
                errors.append(exc)
            texts = [repr(client), repr(vars(client)) if hasattr(client, "__dict__") else ""]
    finally:
        _write(platform.token_file, platform.token)
    assert len(errors) == 5
    for error in errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    texts.append(caplog.text)
    for text in texts:
        assert secret not in text


# -- trace context ---------------------------------------------------------------------------

async def test_requests_carry_the_callers_w3c_trace_context(
    client: PlatformClient, platform: PlatformServer, unique_run_id
) -> None:
    run_id = unique_run_id()
    platform.create_run(run_id)
    since = platform.stats()["last_update_seq"]
    trace_id = int.from_bytes(os.urandom(16), "big") | 1
    parent = SpanContext(trace_id=trace_id, span_id=0x1234, is_remote=False,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        await client.update_state(StateUpdate(run_id, "running"), expected_state="queued")
    finally:
        otel_context.detach(token)
    (entry,) = [e for e in platform.updates(since) if e["run_id"] == run_id]
    assert entry["traceparent"] is not None
    assert entry["traceparent"].split("-")[1] == f"{trace_id:032x}"


# -- TLS -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformServer]:
    """A reference server speaking HTTPS with a certificate from a throwaway CA."""
    workdir = tmp_path_factory.mktemp("tls-platform")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    server = launch(workdir, tls_cert=workdir / "cert.pem", tls_key=workdir / "key.pem",
                    ca_file=workdir / "ca.pem")
    try:
        yield server
    finally:
        server.stop()


async def test_tls_certificates_are_verified_by_default(tls_platform: PlatformServer) -> None:
    assert tls_platform.url.startswith("https://")
    async with PlatformClient(tls_platform.url, tls_platform.token_file) as client:
        with pytest.raises(PlatformUnavailable, match=r"(?i)certificate"):
            await client.get_run("x")


async def test_a_ca_file_makes_the_platform_certificate_trusted(
    tls_platform: PlatformServer,
) -> None:
    assert tls_platform.ca_file is not None
    async with PlatformClient(tls_platform.url, tls_platform.token_file,
                              ca_file=tls_platform.ca_file) as client:
        run = await client.create_run()
        assert await client.get_run(run.id) == run


async def test_turning_tls_verification_off_works_and_is_logged(
    tls_platform: PlatformServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sniffer.platform")
    async with PlatformClient(tls_platform.url, tls_platform.token_file,
                              verify_tls=False) as client:
        assert await client.get_run("not-there") is None
    assert "verification is OFF" in caplog.text
