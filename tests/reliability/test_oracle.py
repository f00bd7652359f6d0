"""The fault matrix's oracle rules that are pure functions of the simulator's records."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from testbed.simulator.records import Change, SimResult
from tests.reliability.scenarios import pending_past
from tests.reliability.verdict import delivered_before


def left(c: Change) -> bool:
    return c.expect != "queued"

T0 = 1_800_000_000.4  # a creation sent 0.4 s into a second: creationTimestamp may floor it


def change(run_id: str, op: str, expect: str, at: float) -> Change:
    return Change(run_id=run_id, pod=f"ns/{run_id}", op=op, actor="kubelet", shape="s",
                  expect=expect, sent_at=at - 0.01, accepted_at=at, resource_version="1",
                  lifecycle="succeeded", kind="job")


def sim(*changes: Change) -> SimResult:
    return SimResult(run_prefix="oracle", seed=1, started_at=T0, finished_at=T0 + 60,
                     created=1, finished=1, expected={}, changes=list(changes))


def test_a_pod_that_left_pending_before_the_rule_could_fire_may_not_be_failed_pending() -> None:
    records = sim(change("a", "run-create", "queued", T0 - 1),
                  change("a", "create", "queued", T0),
                  change("a", "status", "queued", T0 + 3),  # ContainerCreating
                  change("a", "status", "running", T0 + 7.5))  # floor(T0) + 8 is later
    assert pending_past([records], 8.0, until=left) == set()


def test_a_pod_still_pending_when_the_rule_fires_may_be_failed_pending() -> None:
    records = sim(change("b", "create", "queued", T0),
                  change("b", "status", "running", T0 + 7.7))  # after floor(T0) + 8
    assert pending_past([records], 8.0, until=left) == {"b"}


def test_a_pod_that_never_left_pending_may_be_failed_pending() -> None:
    records = sim(change("c", "create", "queued", T0),
                  change("c", "run-cancel", "cancelled", T0 + 20))  # the platform's, not the pod's
    assert pending_past([records], 8.0, until=left) == {"c"}


def test_a_stuck_pod_whose_condition_came_after_the_rule_may_show_the_shape_before() -> None:
    def stuck(c: Change) -> bool:
        return c.shape == "unschedulable"
    early = sim(change("d", "create", "queued", T0),
                dataclasses.replace(change("d", "status", "queued", T0 + 2), shape="unschedulable"))
    late = sim(change("e", "create", "queued", T0),
               dataclasses.replace(change("e", "status", "queued", T0 + 9), shape="unschedulable"))
    assert pending_past([early, late], 8.0, until=stuck) == {"e"}


def _log(path: Path, *entries: Mapping[str, object]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + "not json\n")
    return path


def test_what_a_watcher_had_delivered_when_its_stream_failed_is_read_from_its_log(
        tmp_path: Path) -> None:
    start = datetime(2026, 12, 3, 17, 40, 32, tzinfo=UTC).timestamp()
    before = {"time": "2026-12-03T17:40:10.000Z", "message": "list/watch failed, retrying",
              "resume_from": "300"}
    first = {"time": "2026-12-03T17:40:33.060Z", "message": "list/watch failed, retrying",
             "resume_from": "478"}
    later = {"time": "2026-12-03T17:40:40.000Z", "message": "watch stream stalled, reopening",
             "resume_from": "900"}
    a = _log(tmp_path / "a.log", before, {"time": "x", "message": "listed pods"}, first, later)
    b = _log(tmp_path / "b.log", {**first, "resume_from": "610"})
    assert delivered_before([a], start) == 478  # the first failure after the gap began
    assert delivered_before([a, b], start) == 478  # the least of the watchers
    assert delivered_before([b, tmp_path / "missing.log"], start) == 610
    assert delivered_before([_log(tmp_path / "c.log", before)], start) is None
