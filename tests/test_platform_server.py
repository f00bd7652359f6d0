"""The reference Platform server (testbed/platform) keeps its contract, over real HTTP.

Covers docs/platform-api.yaml: auth, the monotonic and precondition rules in their
documented order, 400s naming the field with nothing written, stable pagination while
runs change, the update log, restart durability, and every fault knob.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from testbed.platform.auth import RECHECK_S
from testbed.platform.launcher import AdminError, PlatformServer

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
RUN_FIELDS = {
    "id", "state", "version", "kind", "created_at", "updated_at", "started_at",
    "finished_at", "reason", "message", "exit_code", "cancel_requested", "pod_namespace",
    "pod_name", "pod_uid", "attempts", "attempt_pod",
}


class Api:
    """Raw HTTP against one server: every call returns ``(status, body, headers)``."""

    def __init__(self, session: aiohttp.ClientSession, server: PlatformServer) -> None:
        self.session = session
        self.server = server

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None,
        params: Any = None, raw: bytes | None = None,
    ) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {token or self.server.token}"}
        kwargs: dict[str, Any] = {"headers": headers, "params": params}
        if raw is not None:
            kwargs["data"] = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.server.url + path, **kwargs) as r:
            text = await r.read()
            try:
                data = json.loads(text)
            except ValueError:
                data = text
            return r.status, data, r.headers

    async def create(self, run_id: str, **fields: Any) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/api/v1/runs", {"id": run_id, **fields})
        assert status == 201, body
        return body

    async def patch(self, run_id: str, **fields: Any) -> tuple[int, Any]:
        status, body, _ = await self.call("PATCH", f"/api/v1/runs/{run_id}", fields)
        return status, body

    async def get(self, run_id: str) -> dict[str, Any]:
        status, body, _ = await self.call("GET", f"/api/v1/runs/{run_id}")
        assert status == 200, body
        return body


@pytest.fixture
async def api(platform: PlatformServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, platform)


# -- basics and auth ---------------------------------------------------------------------

async def test_create_returns_a_queued_run_at_version_1(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    run = await api.create(run_id, kind="notebook", pod_namespace="ns", pod_name="p")
    assert set(run) == RUN_FIELDS
    assert run["id"] == run_id
    assert (run["state"], run["version"], run["kind"]) == ("queued", 1, "notebook")
    assert (run["pod_namespace"], run["pod_name"], run["pod_uid"]) == ("ns", "p", None)
    assert run["cancel_requested"] is False
    assert TIMESTAMP.match(run["created_at"]) and run["created_at"] == run["updated_at"]
    assert await api.get(run_id) == run


async def test_create_without_id_generates_one_and_defaults_to_job(api: Api) -> None:
    status, run, _ = await api.call("POST", "/api/v1/runs", {})
    assert status == 201
    assert run["id"] and run["kind"] == "job"


async def test_creating_a_duplicate_id_answers_409_with_the_existing_run(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    first = await api.create(run_id)
    status, body, _ = await api.call("POST", "/api/v1/runs", {"id": run_id, "kind": "app"})
    assert status == 409
    assert body["error"]["code"] == "already_exists"
    assert body["run"] == first


async def test_an_overlong_query_is_refused_with_the_documented_json_400(api: Api) -> None:
    """A request line far beyond aiohttp's default 8 KiB reaches the application, which
    refuses it as the contract says (JSON, 400), rather than aiohttp's own plain-text
    answer (schemathesis' negative cases produce such URLs)."""
    status, body, headers = await api.call(
        "GET", "/api/v1/runs", params={"after": "\u00e9" * 30_000, "limit": "7"})
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"]["code"]


async def test_unknown_run_answers_404_for_get_patch_and_cancel(api: Api) -> None:
    for method, path, body in [
        ("GET", "/api/v1/runs/no-such-run", None),
        ("PATCH", "/api/v1/runs/no-such-run", {"state": "running", "expected_version": 1}),
        ("POST", "/api/v1/runs/no-such-run/cancel", None),
    ]:
        status, data, _ = await api.call(method, path, body)
        assert status == 404, (method, data)
        assert data["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/runs", "/admin/faults", "/admin/updates"])
async def test_requests_without_a_valid_token_answer_401(api: Api, path: str) -> None:
    async with api.session.get(api.server.url + path) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    status, body, _ = await api.call("GET", path, token="wrong-token")
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_auth_is_checked_before_the_request_itself(api: Api) -> None:
    status, _, _ = await api.call("GET", "/api/v1/runs", params={"bogus": "1"},
                                  token="wrong-token")
    assert status == 401
    status, _, _ = await api.call("PATCH", "/api/v1/runs/x", raw=b"{", token="wrong-token")
    assert status == 401
    status, body, _ = await api.call("GET", "/api/v1/runs", params={"bogus": "1"})
    assert status == 400 and body["error"]["field"] == "bogus"


async def test_healthz_needs_no_token(api: Api) -> None:
    async with api.session.get(api.server.url + "/healthz") as r:
        assert r.status == 200 and (await r.json()) == {"status": "ok"}


async def test_an_unauthenticated_write_changes_nothing(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    status, _, _ = await api.call(
        "PATCH", f"/api/v1/runs/{run_id}", {"state": "running", "expected_version": 1},
        token="wrong-token",
    )
    assert status == 401
    assert (await api.get(run_id))["state"] == "queued"


def test_a_rotated_token_file_accepts_the_new_token_at_once_and_drops_the_old_one(
    fresh_platform_server: PlatformServer,
) -> None:
    server = fresh_platform_server
    old = server.token
    server.token_file.write_text("rotated-token\n", encoding="utf-8")
    server.token = "rotated-token"
    assert server.stats()["runs_by_state"]["queued"] == 0
    server.token = old
    time.sleep(RECHECK_S + 0.1)
    with pytest.raises(AdminError) as caught:
        server.stats()
    assert caught.value.status == 401


# -- the state rules ---------------------------------------------------------------------

async def test_forward_update_applies_details_binds_the_pod_and_bumps_the_version(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    status, body = await api.patch(
        run_id, state="running", expected_state="queued", pod_uid="uid-1", pod_name="p-1",
        pod_namespace="ns-1", started_at="2026-01-02T04:04:05+01:00",
    )
    assert status == 200 and body["applied"] is True
    run = body["run"]
    assert (run["state"], run["version"]) == ("running", 2)
    assert (run["pod_uid"], run["pod_name"], run["pod_namespace"]) == ("uid-1", "p-1", "ns-1")
    assert run["started_at"] == "2026-01-02T03:04:05.000000Z"
    status, body = await api.patch(
        run_id, state="failed", expected_version=2, reason="Error", message="boom",
        exit_code=3,
    )
    assert status == 200 and body["applied"] is True
    run = body["run"]
    assert (run["state"], run["version"], run["reason"], run["message"], run["exit_code"]) == (
        "failed", 3, "Error", "boom", 3)
    assert TIMESTAMP.match(run["finished_at"]), "entering a terminal state stamps finished_at"
    assert run["updated_at"] > run["created_at"]
    assert await api.get(run_id) == run


async def test_repeating_an_update_is_a_noop_success_whatever_its_precondition(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    _, first = await api.patch(run_id, state="running", expected_state="queued", pod_uid="u")
    for stale in ({"expected_state": "queued"}, {"expected_version": 1}, {},
                  {"pod_uid": "another-pod"}):
        status, body = await api.patch(run_id, state="running", **stale)
        assert status == 200, body
        assert body == {"run": first["run"], "applied": False}


@pytest.mark.parametrize(("path", "backwards"), [
    (["running"], "queued"),
    (["succeeded"], "running"),
    (["succeeded"], "failed"),
    (["running", "cancelled"], "succeeded"),
    (["failed"], "queued"),
])
async def test_a_move_that_is_not_forward_answers_409_conflict_with_the_current_run(
    api: Api, unique_run_id, path: list[str], backwards: str
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    for version, state in enumerate(path, start=1):
        status, _ = await api.patch(run_id, state=state, expected_version=version)
        assert status == 200
    current = await api.get(run_id)
    status, body = await api.patch(run_id, state=backwards, expected_state=current["state"])
    assert status == 409
    assert body["error"]["code"] == "conflict"
    assert body["run"] == current
    assert await api.get(run_id) == current


async def test_forward_moves_may_skip_states(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    status, body = await api.patch(run_id, state="cancelled", expected_state="queued")
    assert status == 200 and body["run"]["state"] == "cancelled"
    assert body["run"]["started_at"] is None


async def test_a_different_pod_uid_answers_409_pod_mismatch(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    await api.patch(run_id, state="running", expected_state="queued", pod_uid="uid-a")
    status, body = await api.patch(
        run_id, state="succeeded", expected_state="running", pod_uid="uid-b"
    )
    assert status == 409
    assert body["error"]["code"] == "pod_mismatch"
    assert body["run"]["pod_uid"] == "uid-a" and body["run"]["state"] == "running"
    status, body = await api.patch(
        run_id, state="succeeded", expected_state="running", pod_uid="uid-a"
    )
    assert status == 200 and body["applied"]


async def test_an_update_without_precondition_answers_428_and_writes_nothing(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    created = await api.create(run_id)
    status, body = await api.patch(run_id, state="running", reason="x")
    assert status == 428
    assert body["error"]["code"] == "precondition_required"
    assert body["run"] == created
    assert await api.get(run_id) == created


@pytest.mark.parametrize("precondition", [
    {"expected_state": "running"},
    {"expected_version": 2},
    {"expected_state": "queued", "expected_version": 7},
])
async def test_a_stale_precondition_answers_412_with_the_current_run(
    api: Api, unique_run_id, precondition: dict[str, Any]
) -> None:
    run_id = unique_run_id()
    created = await api.create(run_id)
    status, body = await api.patch(run_id, state="succeeded", **precondition)
    assert status == 412
    assert body["error"]["code"] == "precondition_failed"
    assert body["run"] == created


async def test_racing_writers_with_the_same_precondition_apply_exactly_once(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    targets = ["succeeded", "failed", "cancelled"] * 10
    results = await asyncio.gather(
        *(api.patch(run_id, state=t, expected_state="queued", expected_version=1)
          for t in targets)
    )
    applied = [b for s, b in results if s == 200 and b["applied"]]
    assert len(applied) == 1
    winner = applied[0]["run"]["state"]
    for (status, body), target in zip(results, targets, strict=True):
        if target == winner:
            assert status == 200  # the winner, or a no-op repeat of it
        else:
            assert status == 409 and body["error"]["code"] == "conflict"
    assert (await api.get(run_id))["version"] == 2


async def test_cancel_request_sets_the_flag_once_and_bumps_the_version_once(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    for _ in range(3):
        status, run, _ = await api.call("POST", f"/api/v1/runs/{run_id}/cancel")
        assert status == 200
        assert run["cancel_requested"] is True and run["version"] == 2
    assert run["state"] == "queued", "the watcher reports cancelled, not the cancel request"


# -- bad requests --------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({}, "state"),
    ({"state": None}, "state"),
    ({"state": "done"}, "state"),
    ({"state": "running", "expected_state": "starting"}, "expected_state"),
    ({"state": "running", "expected_version": "1"}, "expected_version"),
    ({"state": "running", "expected_version": 0}, "expected_version"),
    ({"state": "running", "expected_version": True}, "expected_version"),
    ({"state": "running", "expected_version": 1, "exit_code": 1.5}, "exit_code"),
    ({"state": "running", "expected_version": 1, "reason": 7}, "reason"),
    ({"state": "running", "expected_version": 1, "message": "m" * 5000}, "message"),
    ({"state": "running", "expected_version": 1, "started_at": "yesterday"}, "started_at"),
    ({"state": "running", "expected_version": 1, "finished_at": "2026-13-01T00:00:00Z"},
     "finished_at"),
    ({"state": "running", "expected_version": 1, "pod_uid": ["x"]}, "pod_uid"),
    ({"state": "running", "expected_version": 1, "colour": "red"}, "colour"),
    (["state", "running"], "body"),
])
async def test_a_bad_patch_answers_400_naming_the_field_and_writes_nothing(
    api: Api, unique_run_id, body: Any, field: str
) -> None:
    run_id = unique_run_id()
    created = await api.create(run_id)
    status, data, _ = await api.call("PATCH", f"/api/v1/runs/{run_id}", body)
    assert status == 400
    assert data["error"]["code"] == "invalid"
    assert data["error"]["field"] == field
    assert await api.get(run_id) == created


async def test_a_body_that_is_not_json_answers_400_naming_the_body(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    status, data, _ = await api.call("PATCH", f"/api/v1/runs/{run_id}", raw=b"{state:")
    assert status == 400 and data["error"]["field"] == "body"


@pytest.mark.parametrize(("body", "field"), [
    ({"id": "has/slash"}, "id"),
    ({"id": ""}, "id"),
    ({"kind": "cronjob"}, "kind"),
    ({"pod_name": 5}, "pod_name"),
    ({"pod_uid": "u"}, "pod_uid"),
])
async def test_a_bad_create_answers_400_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    status, data, _ = await api.call("POST", "/api/v1/runs", body)
    assert status == 400 and data["error"]["field"] == field


@pytest.mark.parametrize(("params", "field"), [
    ({"state": "sleeping"}, "state"),
    ({"state": "queued,bogus"}, "state"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
])
async def test_a_bad_list_query_answers_400_naming_the_parameter(
    api: Api, params: dict[str, str], field: str
) -> None:
    status, data, _ = await api.call("GET", "/api/v1/runs", params=params)
    assert status == 400 and data["error"]["field"] == field


# -- listing -----------------------------------------------------------------------------

async def _list_all(api: Api, states: list[str], limit: int,
                    between_pages: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params = [("state", s) for s in states] + [("limit", str(limit))]
        if after:
            params.append(("after", after))
        status, page, _ = await api.call("GET", "/api/v1/runs", params=params)
        assert status == 200, page
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        after = page["next"]
        if after is None:
            return items
        if between_pages is not None:
            await between_pages()


async def test_listing_filters_by_repeated_or_comma_separated_states_in_id_order(
    api: Api, unique_run_id
) -> None:
    ids = [unique_run_id() for _ in range(6)]
    for run_id in ids:
        await api.create(run_id)
    await api.patch(ids[1], state="running", expected_version=1)
    await api.patch(ids[2], state="succeeded", expected_version=1)
    mine = set(ids)
    repeated = [r for r in await _list_all(api, ["queued", "running"], 2) if r["id"] in mine]
    comma = [r for r in await _list_all(api, ["queued,running"], 1000) if r["id"] in mine]
    assert [r["id"] for r in repeated] == sorted(set(ids) - {ids[2]})
    assert repeated == comma
    everything = await _list_all(api, [], 1000)
    assert [r["id"] for r in everything] == sorted(r["id"] for r in everything)
    assert mine <= {r["id"] for r in everything}


async def test_the_last_page_has_no_next_cursor(api: Api) -> None:
    status, page, _ = await api.call("GET", "/api/v1/runs", params={"limit": "1000"})
    assert status == 200
    total = len(await _list_all(api, [], 1000))
    if total <= 1000:
        assert page["next"] is None


async def test_pagination_returns_each_steadily_matching_run_once_while_runs_change(
    api: Api, unique_run_id
) -> None:
    ids = [unique_run_id() for _ in range(120)]
    for run_id in ids:
        await api.create(run_id)
    staying = set(ids[0::2])   # queued → running: matches the filter throughout
    leaving = set(ids[1::2])   # queued → succeeded: drops out of the filter
    # Between every two pages, change a few runs on both sides of the cursor.
    pending = [run_id for pair in zip(ids, reversed(ids), strict=True) for run_id in pair]
    pending = list(dict.fromkeys(pending))
    changed: list[str] = []

    async def change_some() -> None:
        for _ in range(4):
            if pending:
                run_id = pending.pop(0)
                target = "running" if run_id in staying else "succeeded"
                status, _ = await api.patch(run_id, state=target, expected_state="queued")
                assert status == 200
                changed.append(run_id)

    seen = await _list_all(api, ["queued", "running"], 7, between_pages=change_some)
    assert len(changed) >= 40, "the listing should interleave with many changes"
    mine = [r for r in seen if r["id"] in set(ids)]
    mine_ids = [r["id"] for r in mine]
    assert len(mine_ids) == len(set(mine_ids)), "a run was returned twice"
    assert staying <= set(mine_ids), "a run that matched throughout was skipped"
    assert set(mine_ids) - staying <= leaving
    assert {r["state"] for r in mine if r["id"] in staying} == {"queued", "running"}


# -- the update log ----------------------------------------------------------------------

async def test_every_applied_change_is_logged_once_with_its_arrival_time(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    since = api.server.stats()["last_update_seq"]
    before = time.time()
    await api.patch(run_id, state="running", expected_state="queued")
    await api.patch(run_id, state="running", expected_state="queued")  # no-op: not logged
    await api.patch(run_id, state="queued", expected_state="running")  # 409: not logged
    await api.patch(run_id, state="succeeded", expected_state="running")
    after = time.time()
    entries = [e for e in api.server.updates(since) if e["run_id"] == run_id]
    assert [(e["from_state"], e["to_state"], e["version"]) for e in entries] == [
        ("queued", "running", 2), ("running", "succeeded", 3)]
    assert entries[0]["seq"] < entries[1]["seq"]
    for entry in entries:
        assert before <= entry["received_at"] <= after
        assert TIMESTAMP.match(entry["received_at_rfc3339"])


# -- attempts of Job-backed runs ----------------------------------------------------------


async def running_job_run(api: Api, run_id: str, attempts: int = 1) -> dict[str, Any]:
    await api.create(run_id)
    status, body = await api.patch(run_id, state="running", expected_state="queued",
                                   pod_uid="job-uid", attempts=attempts,
                                   attempt_pod=f"train-{attempts}")
    assert status == 200 and body["applied"], body
    return body["run"]


async def test_a_new_run_has_no_attempts(api: Api, unique_run_id) -> None:
    run = await api.create(unique_run_id())
    assert (run["attempts"], run["attempt_pod"]) == (0, None)


async def test_a_same_state_update_that_raises_attempts_is_applied_without_a_log_entry(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    before = await running_job_run(api, run_id)
    since = api.server.stats()["last_update_seq"]
    status, body = await api.patch(run_id, state="running", attempts=2,
                                   attempt_pod="train-2", reason="Retrying")
    assert status == 200 and body["applied"] is True, body
    run = body["run"]
    assert (run["attempts"], run["attempt_pod"], run["version"]) == (2, "train-2", 3)
    assert run["reason"] == before["reason"], "an attempts raise changes nothing else"
    assert run["updated_at"] > before["updated_at"]
    assert await api.get(run_id) == run
    assert [e for e in api.server.updates(since) if e["run_id"] == run_id] == []


async def test_a_lower_or_equal_attempts_count_is_ignored_not_refused(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    run = await running_job_run(api, run_id, attempts=3)
    for attempts, pod in ((2, "train-2"), (3, "train-3-other"), (0, None)):
        status, body = await api.patch(run_id, state="running", attempts=attempts,
                                       attempt_pod=pod)
        assert (status, body) == (200, {"run": run, "applied": False})
    # a forward move carrying a stale count still moves; the count stays
    status, body = await api.patch(run_id, state="failed", expected_state="running",
                                   attempts=1, attempt_pod="train-1", exit_code=3)
    assert status == 200 and body["applied"] is True
    assert (body["run"]["state"], body["run"]["attempts"], body["run"]["attempt_pod"]) == (
        "failed", 3, "train-3")


async def test_a_forward_move_with_more_attempts_raises_them_too(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await running_job_run(api, run_id)
    status, body = await api.patch(run_id, state="succeeded", expected_state="running",
                                   attempts=3, attempt_pod="train-3")
    assert status == 200 and body["applied"] is True
    assert (body["run"]["state"], body["run"]["attempts"], body["run"]["attempt_pod"]) == (
        "succeeded", 3, "train-3")


async def test_a_terminal_run_keeps_its_attempts(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    await running_job_run(api, run_id)
    _, body = await api.patch(run_id, state="failed", expected_state="running", attempts=4)
    for state in ("failed", "succeeded"):
        status, again = await api.patch(run_id, state=state, expected_state="failed",
                                        attempts=9, attempt_pod="late")
        assert again["run"] == body["run"]
        assert (status, again.get("applied")) in ((200, False), (409, None))


async def test_attempts_from_another_pod_uid_are_not_applied(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    run = await running_job_run(api, run_id)
    status, body = await api.patch(run_id, state="running", pod_uid="another-job", attempts=5)
    assert (status, body) == (200, {"run": run, "applied": False})


@pytest.mark.parametrize(("field", "value"), [
    ("attempts", -1), ("attempts", "2"), ("attempts", 1.5), ("attempts", True),
    ("attempts", 2**31), ("attempt_pod", 7), ("attempt_pod", "p" * 254),
])
async def test_a_bad_attempts_field_answers_400_naming_it(
    api: Api, unique_run_id, field: str, value: Any
) -> None:
    run_id = unique_run_id()
    run = await running_job_run(api, run_id)
    status, body = await api.patch(run_id, state="running", **{field: value})
    assert status == 400 and body["error"]["field"] == field, body
    assert await api.get(run_id) == run


async def test_update_log_pages_by_seq(api: Api, unique_run_id) -> None:
    ids = [unique_run_id() for _ in range(5)]
    since = api.server.stats()["last_update_seq"]
    for run_id in ids:
        await api.create(run_id)
        await api.patch(run_id, state="running", expected_version=1)
    seqs: list[int] = []
    cursor = since
    while True:
        status, page, _ = await api.call(
            "GET", "/admin/updates", params={"since": str(cursor), "limit": "2"}
        )
        assert status == 200
        seqs.extend(e["seq"] for e in page["items"])
        cursor = page["last_seq"]
        if not page["more"]:
            break
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) >= 5


async def test_stats_count_runs_by_state_and_requests_by_status(api: Api) -> None:
    await api.call("GET", "/api/v1/runs/not-there")
    status, stats, _ = await api.call("GET", "/admin/stats")
    assert status == 200
    assert set(stats["runs_by_state"]) == {"queued", "running", "succeeded", "failed",
                                           "cancelled"}
    assert stats["requests_by_status"]["404"] >= 1


# -- durability ------------------------------------------------------------------------

@pytest.mark.parametrize("kill", [True, False], ids=["killed", "stopped"])
def test_a_restarted_server_has_every_committed_run_and_update(
    fresh_platform_server: PlatformServer, kill: bool
) -> None:
    server = fresh_platform_server
    for i in range(40):
        server.create_run(f"durable-{i:03d}", pod_name=f"pod-{i}")
        server.patch_run(f"durable-{i:03d}", state="running", expected_version=1,
                         pod_uid=f"uid-{i}")
        if i % 2:
            server.patch_run(f"durable-{i:03d}", state="failed", expected_version=2,
                             exit_code=i)
    runs_before = server.list_runs()
    log_before = server.updates()
    server.restart(kill=kill)
    assert server.running
    assert server.list_runs() == runs_before
    assert server.updates() == log_before
    status, body = server.patch_run("durable-000", state="succeeded", expected_version=2)
    assert status == 200 and body["run"]["version"] == 3


def test_the_server_announces_url_and_pid_and_exits_cleanly_on_sigterm(
    fresh_platform_server: PlatformServer,
) -> None:
    server = fresh_platform_server
    ready = json.loads((server.workdir / "platform.ready.json").read_text(encoding="utf-8"))
    assert ready == {"url": server.url, "pid": server.pid}
    assert server.url in server.log_path.read_text(encoding="utf-8").splitlines()
    process = server._process
    assert process is not None and process.pid == server.pid
    server.stop()
    assert process.returncode == 0


# -- faults ------------------------------------------------------------------------------

async def test_latency_delays_api_calls_but_never_admin_calls(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    api.server.set_faults(latency_ms=300)
    started = time.monotonic()
    await api.get(run_id)
    assert time.monotonic() - started >= 0.29
    status, faults, _ = await api.call("GET", "/admin/faults")
    assert status == 200 and faults["latency_ms"] == 300


async def test_latency_jitter_varies_the_delay(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    api.server.set_faults(latency_ms=100, latency_jitter_ms=80)
    durations = []
    for _ in range(10):
        started = time.monotonic()
        await api.get(run_id)
        durations.append(time.monotonic() - started)
    assert min(durations) >= 0.019
    assert max(durations) - min(durations) > 0.01


async def test_received_at_is_taken_before_the_injected_latency(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    since = api.server.stats()["last_update_seq"]
    api.server.set_faults(latency_ms=300)
    await api.patch(run_id, state="running", expected_state="queued")
    answered = time.time()
    (entry,) = [e for e in api.server.updates(since) if e["run_id"] == run_id]
    assert answered - entry["received_at"] >= 0.29


async def test_error_rate_one_answers_429_with_retry_after_and_applies_nothing(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    api.server.set_faults(error_rate=1, error_status=429, retry_after_s=2)
    status, body, headers = await api.call(
        "PATCH", f"/api/v1/runs/{run_id}", {"state": "running", "expected_version": 1}
    )
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert body["error"]["code"] == "injected"
    api.server.set_faults(retry_after_s=0.25, error_status=503)
    status, _, headers = await api.call("GET", f"/api/v1/runs/{run_id}")
    assert status == 503 and headers["Retry-After"] == "0.25"
    api.server.clear_faults()
    assert (await api.get(run_id))["version"] == 1


async def test_a_partial_error_rate_fails_about_that_fraction(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    api.server.set_faults(error_rate=0.5, error_status=500)
    statuses = [(await api.call("GET", f"/api/v1/runs/{run_id}"))[0] for _ in range(200)]
    assert set(statuses) == {200, 500}
    assert 50 <= statuses.count(500) <= 150


async def test_an_outage_answers_503_until_its_window_ends(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    api.server.set_faults(outage_s=1.2)
    status, body, headers = await api.call("GET", f"/api/v1/runs/{run_id}")
    assert status == 503 and body["error"]["code"] == "unavailable"
    assert 1 <= float(headers["Retry-After"]) <= 2
    status, _, _ = await api.call("POST", "/api/v1/runs", {"id": unique_run_id()})
    assert status == 503
    remaining = api.server.get_faults()["outage_s"]  # admin is never faulted
    assert remaining > 0
    await asyncio.sleep(remaining + 0.05)
    assert api.server.get_faults()["outage_s"] == 0
    assert (await api.get(run_id))["id"] == run_id


async def test_slow_drip_trickles_the_body_after_prompt_headers(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    created = await api.create(run_id)
    api.server.set_faults(slow_drip_ms=600)
    started = time.monotonic()
    async with api.session.get(
        f"{api.server.url}/api/v1/runs/{run_id}",
        headers={"Authorization": f"Bearer {api.server.token}"},
    ) as response:
        headers_at = time.monotonic()
        body = await response.read()
        done_at = time.monotonic()
    assert response.status == 200
    assert json.loads(body) == created
    assert done_at - started >= 0.55
    assert done_at - headers_at >= 0.4, "the delay is in the body, not before the headers"


async def test_resets_drop_the_connection_without_an_answer_and_apply_nothing(
    api: Api, unique_run_id
) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    resets_before = api.server.stats()["requests_by_status"].get("reset", 0)
    api.server.set_faults(reset_rate=1)
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.patch(run_id, state="running", expected_version=1)
    api.server.clear_faults()
    assert (await api.get(run_id))["state"] == "queued"
    assert api.server.stats()["requests_by_status"]["reset"] == resets_before + 1


async def test_resets_after_apply_lose_only_the_answer(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    api.server.set_faults(reset_rate=1, reset_phase="after")
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.patch(run_id, state="running", expected_version=1)
    api.server.clear_faults()
    assert (await api.get(run_id))["state"] == "running"
    status, body = await api.patch(run_id, state="running", expected_version=1)
    assert status == 200 and body["applied"] is False, "the retry is a no-op success"


async def test_malformed_rate_replaces_the_body(api: Api, unique_run_id) -> None:
    run_id = unique_run_id()
    await api.create(run_id)
    api.server.set_faults(malformed_rate=1, malformed_body="{oops")
    status, body, _ = await api.call("GET", f"/api/v1/runs/{run_id}")
    assert status == 200 and body == b"{oops"


async def test_fault_updates_merge_and_delete_clears_them(api: Api) -> None:
    api.server.set_faults(latency_ms=5)
    merged = api.server.set_faults(error_rate=0.1)
    assert (merged["latency_ms"], merged["error_rate"]) == (5, 0.1)
    cleared = api.server.clear_faults()
    assert (cleared["latency_ms"], cleared["error_rate"], cleared["outage_s"]) == (0, 0, 0)


@pytest.mark.parametrize(("body", "field"), [
    ({"error_rate": 2}, "error_rate"),
    ({"error_status": 404}, "error_status"),
    ({"latency_ms": "slow"}, "latency_ms"),
    ({"reset_phase": "during"}, "reset_phase"),
    ({"chaos": 1}, "chaos"),
])
async def test_a_bad_fault_setting_answers_400_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    status, data, _ = await api.call("PUT", "/admin/faults", body)
    assert status == 400 and data["error"]["field"] == field
    assert api.server.get_faults()["error_rate"] == 0


def test_a_database_from_before_attempts_gains_them_on_open(tmp_path) -> None:
    import sqlite3

    from testbed.platform.store import Store

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, state TEXT NOT NULL, version INTEGER"
                " NOT NULL, kind TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT"
                " NULL, started_at TEXT, finished_at TEXT, reason TEXT, message TEXT,"
                " exit_code INTEGER, cancel_requested INTEGER NOT NULL DEFAULT 0,"
                " pod_namespace TEXT, pod_name TEXT, pod_uid TEXT) WITHOUT ROWID")
    old.execute("INSERT INTO runs (id, state, version, kind, created_at, updated_at) VALUES"
                " ('r', 'queued', 1, 'job', '2026-01-01T00:00:00.000000Z',"
                " '2026-01-01T00:00:00.000000Z')")
    old.commit()
    old.close()
    store = Store.open(path)
    try:
        run = store.get_run("r")
        assert run is not None
        assert (run["attempts"], run["attempt_pod"]) == (0, None)
    finally:
        store.close()
