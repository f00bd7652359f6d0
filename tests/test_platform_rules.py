"""The Platform's pure state rules (testbed/platform/rules.py), table-driven."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.platform.rules import (
    STATES,
    TERMINAL_STATES,
    Decision,
    PatchRequest,
    RunView,
    Verdict,
    check_transition,
    decide_patch,
)

OK, NOOP, CONFLICT = Verdict.OK, Verdict.NOOP, Verdict.CONFLICT

# Every (current, target) pair, written out: the table is the specification.
TRANSITIONS = {
    ("queued", "queued"): NOOP,
    ("queued", "running"): OK,
    ("queued", "succeeded"): OK,
    ("queued", "failed"): OK,
    ("queued", "cancelled"): OK,
    ("running", "queued"): CONFLICT,
    ("running", "running"): NOOP,
    ("running", "succeeded"): OK,
    ("running", "failed"): OK,
    ("running", "cancelled"): OK,
    ("succeeded", "queued"): CONFLICT,
    ("succeeded", "running"): CONFLICT,
    ("succeeded", "succeeded"): NOOP,
    ("succeeded", "failed"): CONFLICT,
    ("succeeded", "cancelled"): CONFLICT,
    ("failed", "queued"): CONFLICT,
    ("failed", "running"): CONFLICT,
    ("failed", "succeeded"): CONFLICT,
    ("failed", "failed"): NOOP,
    ("failed", "cancelled"): CONFLICT,
    ("cancelled", "queued"): CONFLICT,
    ("cancelled", "running"): CONFLICT,
    ("cancelled", "succeeded"): CONFLICT,
    ("cancelled", "failed"): CONFLICT,
    ("cancelled", "cancelled"): NOOP,
}


def test_transition_table_covers_every_pair_of_states() -> None:
    assert set(TRANSITIONS) == set(itertools.product(STATES, STATES))


@pytest.mark.parametrize(("current", "target"), sorted(TRANSITIONS))
def test_check_transition_matches_the_table(current: str, target: str) -> None:
    assert check_transition(current, target) is TRANSITIONS[(current, target)]


@pytest.mark.parametrize(("current", "target"), [("queued", "done"), ("bogus", "running")])
def test_check_transition_refuses_unknown_states(current: str, target: str) -> None:
    with pytest.raises(ValueError, match="unknown state"):
        check_transition(current, target)


@given(st.lists(st.sampled_from(STATES), min_size=1, max_size=12))
def test_applying_only_ok_moves_never_leaves_a_terminal_state_or_goes_back(
    targets: list[str],
) -> None:
    rank = {"queued": 0, "running": 1}
    state = "queued"
    for target in targets:
        if check_transition(state, target) is OK:
            assert rank.get(target, 2) > rank.get(state, 2)
            assert state not in TERMINAL_STATES
            state = target
    # Once terminal, every further request is a no-op or a conflict.
    if state in TERMINAL_STATES:
        assert all(check_transition(state, t) is not OK for t in STATES)


RUN = RunView(state="running", version=3, pod_uid="uid-a")

# (request, decision): the PATCH evaluation order, earliest rule first.
DECISIONS = [
    # same state: no-op whatever the precondition or pod uid says
    (PatchRequest("running"), Decision.NOOP),
    (PatchRequest("running", expected_state="queued", expected_version=1), Decision.NOOP),
    (PatchRequest("running", pod_uid="uid-other"), Decision.NOOP),
    # backwards: conflict before pod and precondition checks
    (PatchRequest("queued", expected_state="running", pod_uid="uid-other"), Decision.CONFLICT),
    (PatchRequest("queued"), Decision.CONFLICT),
    # pod mismatch before the precondition checks
    (PatchRequest("succeeded", pod_uid="uid-other"), Decision.POD_MISMATCH),
    (PatchRequest("failed", expected_state="queued", pod_uid="uid-other"),
     Decision.POD_MISMATCH),
    # no precondition
    (PatchRequest("succeeded"), Decision.PRECONDITION_REQUIRED),
    (PatchRequest("succeeded", pod_uid="uid-a"), Decision.PRECONDITION_REQUIRED),
    # wrong precondition
    (PatchRequest("succeeded", expected_state="queued"), Decision.PRECONDITION_FAILED),
    (PatchRequest("succeeded", expected_version=2), Decision.PRECONDITION_FAILED),
    (PatchRequest("succeeded", expected_state="running", expected_version=4),
     Decision.PRECONDITION_FAILED),
    (PatchRequest("succeeded", expected_state="queued", expected_version=3),
     Decision.PRECONDITION_FAILED),
    # apply
    (PatchRequest("succeeded", expected_state="running"), Decision.APPLY),
    (PatchRequest("cancelled", expected_version=3), Decision.APPLY),
    (PatchRequest("failed", expected_state="running", expected_version=3, pod_uid="uid-a"),
     Decision.APPLY),
]


@pytest.mark.parametrize(("request_", "decision"), DECISIONS)
def test_decide_patch_follows_the_documented_order(
    request_: PatchRequest, decision: Decision
) -> None:
    assert decide_patch(RUN, request_) is decision


def test_a_run_without_a_pod_uid_binds_any_uid() -> None:
    unbound = RunView(state="queued", version=1, pod_uid=None)
    request = PatchRequest("running", expected_state="queued", pod_uid="uid-new")
    assert decide_patch(unbound, request) is Decision.APPLY


def test_terminal_run_answers_conflict_to_a_different_terminal_state() -> None:
    done = RunView(state="succeeded", version=5, pod_uid=None)
    request = PatchRequest("failed", expected_state="succeeded", expected_version=5)
    assert decide_patch(done, request) is Decision.CONFLICT


# --- attempts -----------------------------------------------------------------------------

JOB_RUN = RunView(state="running", version=3, pod_uid="uid-a", attempts=2)


@pytest.mark.parametrize(("request_", "decision"), [
    (PatchRequest("running", attempts=3), Decision.ATTEMPTS),  # no precondition needed
    (PatchRequest("running", attempts=3, pod_uid="uid-a"), Decision.ATTEMPTS),
    (PatchRequest("running", attempts=3, expected_version=1), Decision.ATTEMPTS),
    (PatchRequest("running", attempts=2), Decision.NOOP),
    (PatchRequest("running", attempts=1), Decision.NOOP),
    (PatchRequest("running", attempts=3, pod_uid="uid-other"), Decision.NOOP),
    (PatchRequest("queued", attempts=9), Decision.CONFLICT),  # no backwards move for a count
    (PatchRequest("failed", attempts=1, expected_state="running"), Decision.APPLY),
    (PatchRequest("failed", attempts=1), Decision.PRECONDITION_REQUIRED),
])
def test_a_same_state_attempts_raise_is_its_own_decision(
    request_: PatchRequest, decision: Decision
) -> None:
    assert decide_patch(JOB_RUN, request_) is decision


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_a_terminal_run_ignores_an_attempts_raise(state: str) -> None:
    done = RunView(state=state, version=5, pod_uid=None, attempts=1)
    assert decide_patch(done, PatchRequest(state, attempts=7)) is Decision.NOOP
