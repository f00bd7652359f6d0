"""`tests.reliability.joboracle`: a Job-backed run ends only when its Job does."""

from __future__ import annotations

from testbed.simulator.records import Change
from tests.reliability.joboracle import premature_ends, retried, wrong_attempts

T0 = 1_800_000_000.0


def change(run_id: str, shape: str, expect: str, sent: float) -> Change:
    return Change(run_id=run_id, pod=f"ns/job-{run_id}", op="status", actor="kubelet",
                  shape=shape, expect=expect, sent_at=sent, accepted_at=sent + 0.05,
                  resource_version="1", lifecycle="retry-once", kind="job")


def update(run_id: str, to: str, at: float, before: str = "running") -> dict[str, object]:
    return {"run_id": run_id, "from_state": before, "to_state": to, "received_at": at}


RETRIED_THEN_SUCCEEDED = [
    change("a", "attempt-running", "running", T0),
    change("a", "attempt-failed", "running", T0 + 2),  # the Job retries
    change("a", "attempt-running", "running", T0 + 13),
    change("a", "attempt-succeeded", "running", T0 + 15),
    change("a", "job-SuccessCriteriaMet-CompletionsReached", "succeeded", T0 + 15),
]


def test_a_run_that_ends_after_its_last_attempt_in_its_final_state_is_fine() -> None:
    updates = [update("a", "running", T0 + 0.3, "queued"), update("a", "succeeded", T0 + 16)]
    assert premature_ends(RETRIED_THEN_SUCCEEDED, updates) == []


def test_a_retried_attempts_failure_reported_as_the_runs_is_caught() -> None:
    updates = [update("a", "running", T0 + 0.3, "queued"), update("a", "failed", T0 + 2.5)]
    assert premature_ends(RETRIED_THEN_SUCCEEDED, updates) == [
        "a: failed, but its Job ended succeeded"]


def test_the_right_end_received_before_the_deciding_change_was_sent_is_caught() -> None:
    exhausted = [change("b", "attempt-failed", "running", T0),
                 change("b", "job-FailureTarget-BackoffLimitExceeded", "failed", T0 + 30)]
    assert premature_ends(exhausted, [update("b", "failed", T0 + 29)]) == [
        "b: failed 1.00s before the change that ended its Job was sent"]
    assert premature_ends(exhausted, [update("b", "failed", T0 + 30.01)]) == []


def test_an_end_for_a_run_whose_job_never_ended_is_caught() -> None:
    open_run = [change("c", "attempt-running", "running", T0)]
    assert premature_ends(open_run, [update("c", "cancelled", T0 + 5)]) == [
        "c: cancelled while its Job never ended"]


def test_open_states_and_other_runs_updates_are_not_judged() -> None:
    updates = [update("a", "running", T0 + 3), update("zz", "failed", T0)]
    assert premature_ends(RETRIED_THEN_SUCCEEDED, updates) == []


def test_only_failed_attempts_followed_by_another_count_as_retried() -> None:
    never_again = [change("d", "attempt-running", "running", T0),
                   change("d", "attempt-failed", "running", T0 + 1)]
    assert retried([*RETRIED_THEN_SUCCEEDED, *never_again]) == 1


def test_the_platform_must_show_as_many_attempts_as_ran() -> None:
    cancelled = [change("e", "attempt-running", "running", T0),
                 change("e", "job-deleted", "cancelled", T0 + 3)]
    changes = [*RETRIED_THEN_SUCCEEDED, *cancelled]
    assert wrong_attempts(changes, {"a": {"attempts": 2}, "e": {"attempts": 1}}) == []
    assert wrong_attempts(changes, {"a": {"attempts": 1}}) == [
        "a: 2 attempt(s) ran, the platform shows 1",
        "e: 1 attempt(s) ran, the platform shows None"]
