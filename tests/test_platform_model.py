"""The Platform API's values and errors (sniffer/platform_model.py), without a server."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from sniffer.platform_model import (
    Outcome,
    PlatformRejected,
    Run,
    StateUpdate,
    UpdateResult,
    error_code,
    error_text,
    parse_retry_after,
    read_field,
    read_run,
    rejection,
)
from sniffer.states import Derived, WorkloadState


class _State(enum.StrEnum):
    RUNNING = "running"


def _run_json(**changes: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "id": "r1", "state": "running", "version": 2, "kind": "job",
        "created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:04:06+01:00",
        "started_at": None, "finished_at": None, "reason": None, "message": None,
        "exit_code": None, "cancel_requested": False, "pod_namespace": "ns",
        "pod_name": "p", "pod_uid": None, "attempts": 0, "attempt_pod": None,
    }
    return {**run, **changes}


def test_run_from_json_gives_aware_utc_times() -> None:
    run = Run.from_json(_run_json())
    assert run.updated_at == datetime(2026, 1, 2, 2, 4, 6, tzinfo=UTC)
    assert run.updated_at.tzinfo is UTC
    assert not run.terminal
    assert Run.from_json(_run_json(state="cancelled")).terminal


@pytest.mark.parametrize(("changes", "complaint"), [
    ({"state": "done"}, "unknown state"),
    ({"version": True}, "version"),
    ({"exit_code": 1.5}, "exit_code"),
    ({"started_at": "2026-01-02T03:04:05"}, "time zone"),
    ({"cancel_requested": "no"}, "cancel_requested"),
])
def test_run_from_json_names_what_is_wrong(changes: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Run.from_json(_run_json(**changes))


def test_run_from_json_names_a_missing_field() -> None:
    data = _run_json()
    del data["pod_uid"]
    with pytest.raises(ValueError, match="pod_uid"):
        Run.from_json(data)


def test_state_update_refuses_unknown_states_and_naive_times() -> None:
    with pytest.raises(ValueError, match="unknown state"):
        StateUpdate("r", "done")
    with pytest.raises(ValueError, match="naive"):
        StateUpdate("r", "running", started_at=datetime(2026, 1, 1))
    assert StateUpdate("r", _State.RUNNING).state == "running"


def test_state_update_body_omits_none_fields_and_writes_utc_times() -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    body = StateUpdate("r", "running", exit_code=0, started_at=started).to_json()
    assert body == {"state": "running", "exit_code": 0,
                    "started_at": "2026-01-02T03:04:05.000006Z"}


def test_answer_readers_turn_bad_bodies_into_malformed_response() -> None:
    for read in (lambda: read_field(200, [], "run", "R"),
                 lambda: read_field(200, {}, "run", "R"),
                 lambda: read_run(200, {"id": "x"}, "R"),
                 lambda: read_run(200, None, "R")):
        with pytest.raises(PlatformRejected) as caught:
            read()
        assert caught.value.code == "malformed_response"
    assert read_run(200, _run_json(), "R").id == "r1"


def test_rejection_carries_the_contracts_error_code_and_field() -> None:
    body = {"error": {"code": "invalid", "message": "bad", "field": "state"}}
    err = rejection(400, body, "PATCH /api/v1/runs/{id}")
    assert (err.status, err.code) == (400, "invalid")
    assert "field state: bad" in str(err)
    assert rejection(418, "teapot", "R").code == "unexpected_status"
    assert error_code(body) == "invalid"
    assert error_code({"error": "x"}) is None


def test_error_text_prefers_the_contracts_message_over_the_raw_body() -> None:
    assert error_text(b'{"error": {"message": "down for maintenance"}}') == \
        "down for maintenance"
    assert error_text(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert error_text(b"\xff\xfe") == "\ufffd\ufffd"


def test_update_result_has_no_run_for_not_found() -> None:
    assert UpdateResult(Outcome.NOT_FOUND, None).run is None


@pytest.mark.parametrize(("header", "expected"), [
    ("3", 3.0), ("0.5", 0.5), ("-4", 0.0), (" 7 ", 7.0), ("soon", None), (None, None),
    ("nan", None),
])
def test_parse_retry_after_reads_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_reads_http_dates() -> None:
    now = 1_800_000_000.0
    when = datetime.fromtimestamp(now + 120, UTC)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now) == pytest.approx(120)
    past = datetime.fromtimestamp(now - 60, UTC)
    assert parse_retry_after(format_datetime(past, usegmt=True), now=now) == 0.0


def test_state_update_derived_reports_the_derived_state_and_names_the_pod() -> None:
    @dataclass(frozen=True)
    class Pod:
        namespace: str
        name: str
        uid: str | None

    derived = Derived(WorkloadState.FAILED, "OOMKilled", "container main: OOMKilled", 137,
                      started_at=1_700_000_000.0, finished_at=1_700_000_060.5)
    update = StateUpdate.derived("run-1", derived, Pod("ns", "p", "uid-1"))
    assert update == StateUpdate(
        run_id="run-1", state="failed", reason="OOMKilled",
        message="container main: OOMKilled", exit_code=137,
        started_at=datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        finished_at=datetime(2023, 11, 14, 22, 14, 20, 500000, tzinfo=UTC),
        pod_uid="uid-1", pod_name="p", pod_namespace="ns")
    bare = StateUpdate.derived("run-1", Derived(WorkloadState.RUNNING))
    assert (bare.pod_uid, bare.pod_name, bare.pod_namespace, bare.started_at) == (
        None, None, None, None)
