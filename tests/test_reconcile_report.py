"""reconcile.report: the exit-code rule, the JSON summary and the on-call table."""

from __future__ import annotations

import json

import pytest

from reconcile.mismatch import Mismatch, MismatchKind, PodRef
from reconcile.repair import RepairOutcome, RepairResult
from reconcile.report import PassReport, render_json, render_table
from sniffer.states import Derived, WorkloadState

AHEAD = Mismatch(MismatchKind.POD_AHEAD, "r1", WorkloadState.RUNNING,
                 PodRef("ns", "p1", "u1"), "pod shows succeeded (Completed); platform has running",
                 target=Derived(WorkloadState.SUCCEEDED, "Completed"), release_finalizer=True)
LOST = Mismatch(MismatchKind.POD_LOST, "r2", WorkloadState.RUNNING, PodRef("ns", "p2", None),
                "no pod", target=Derived(WorkloadState.FAILED, "PodLost", "pod lost"))
ORPHAN = Mismatch(MismatchKind.ORPHAN_POD, "r3", None, PodRef("ns", "p3", "u3"), "no run r3")


def report(*results: tuple[Mismatch, RepairOutcome], **kw: object) -> PassReport:
    return PassReport(started_at=1_767_225_600.0, duration_s=1.5, dry_run=False, only=(),
                      scope=("ns",), pods_listed=3, runs_listed=2,
                      results=tuple(RepairResult(m, o, "did it",
                                                 "boom" if o is RepairOutcome.FAILED else None)
                                    for m, o in results), **kw)  # type: ignore[arg-type]


R = RepairOutcome


@pytest.mark.parametrize(("outcomes", "extra", "code"), [
    ([], {}, 0),
    ([R.REPAIRED, R.REPORTED], {}, 0),
    ([R.ALREADY_CONSISTENT, R.SKIPPED_RACE], {}, 0),
    ([R.PLANNED, R.PLANNED], {}, 0),
    ([R.REPAIRED, R.FAILED], {}, 1),
    ([R.REPAIRED], {"lookup_errors": {"r9": "PlatformUnavailable: 503"}}, 1),
    ([], {"error": "KubeError: 500"}, 1),
    ([R.REPAIRED, R.NOT_ATTEMPTED], {"interrupted": True}, 3),
    ([R.FAILED, R.NOT_ATTEMPTED], {"interrupted": True}, 1),
], ids=["consistent", "repaired-and-reported", "skipped", "dry-run", "repair-failed",
        "run-unreadable", "listing-failed", "interrupted", "failure-beats-interruption"])
def test_exit_code_rule(outcomes: list[RepairOutcome], extra: dict[str, object],
                        code: int) -> None:
    mismatches = [AHEAD, LOST, ORPHAN]
    assert report(*zip(mismatches, outcomes, strict=False), **extra).exit_code == code


def test_json_counts_every_kind_and_outcome_zeros_included() -> None:
    data = json.loads(render_json(report((AHEAD, R.REPAIRED), (LOST, R.FAILED),
                                         (ORPHAN, R.REPORTED))))
    assert data["mismatches"] == {"pod_ahead": 1, "pod_lost": 1, "finalizer_left": 0,
                                  "orphan_pod": 1, "underivable": 0, "uid_mismatch": 0,
                                  "job_ahead": 0, "job_lost": 0, "app_ahead": 0, "app_lost": 0}
    assert data["repaired"] == {"pod_ahead": 1, "pod_lost": 0, "finalizer_left": 0,
                                "job_ahead": 0, "job_lost": 0, "app_ahead": 0, "app_lost": 0}
    assert set(data["outcomes"]) == {o.value for o in RepairOutcome}
    assert (data["failed"], data["skipped"], data["exit_code"], data["ok"]) == (1, 0, 1, False)
    assert data["started_at"] == "2026-01-01T00:00:00.000000Z"
    assert data["items"][1] == {"run_id": "r2", "kind": "pod_lost", "pod": "ns/p2",
                                "run_state": "running", "detail": "no pod",
                                "outcome": "failed", "action": "did it", "error": "boom"}


def test_table_has_a_row_per_mismatch_and_a_summary() -> None:
    text = render_table(report((AHEAD, R.REPAIRED), (LOST, R.FAILED), (ORPHAN, R.REPORTED)))
    lines = text.splitlines()
    assert lines[0].split() == ["RUN", "MISMATCH", "POD", "WHAT", "WAS", "WRONG", "OUTCOME",
                                "WHAT", "WAS", "DONE"]
    assert lines[1].startswith("r1  ")
    assert "repaired" in lines[1]
    assert "ns/p2 (missing)" in lines[2]
    assert lines[2].endswith("did it: boom")
    assert lines[-1] == "result: FAILED: see the rows marked failed (exit 1)"


def test_a_consistent_pass_prints_only_the_summary() -> None:
    assert render_table(report()).splitlines() == [
        "pass: 3 tracked pods in ns, 2 open runs listed, 0 read one by one, 1.5s",
        "mismatches: 0",
        "result: consistent (exit 0)"]


def test_a_pass_that_could_not_list_claims_no_counts() -> None:
    lines = render_table(report(error="PlatformUnavailable: 503")).splitlines()
    assert lines[0] == "pass in ns: no snapshot, 1.5s"
    assert lines[1] == "PASS FAILED: PlatformUnavailable: 503"
    assert lines[-1] == "result: FAILED: the pass could not list both sides (exit 1)"


def test_a_pass_stopped_while_listing_says_so() -> None:
    lines = render_table(report(interrupted=True)).splitlines()
    assert lines[0] == "pass in ns: no snapshot, 1.5s"
    assert "INTERRUPTED" in lines[-2]
    assert lines[-1] == "result: incomplete (exit 3)"
