"""`testbed.simulator.jobplans`: Job-backed runs' attempts, decided in advance."""

from __future__ import annotations

from collections import Counter

import pytest

from testbed.simulator.jobplans import draw_job_plans
from testbed.simulator.lifecycles import Expectation, State


def test_the_same_seed_draws_the_same_plans() -> None:
    assert draw_job_plans(50, 7, "p", "ns") == draw_job_plans(50, 7, "p", "ns")
    assert draw_job_plans(50, 7, "p", "ns") != draw_job_plans(50, 8, "p", "ns")


def test_every_lifecycle_ends_as_its_attempts_say() -> None:
    plans = draw_job_plans(400, 1, "p", "ns", backoff_limit=3)
    seen = Counter(p.lifecycle for p in plans)
    assert set(seen) == {"first-try", "retry-once", "retry-twice", "exhausted", "cancelled"}
    for plan in plans:
        assert len(plan.durations) == len(plan.attempts)
        assert all(code != 0 for code in plan.attempts[:-1])
        failures = sum(1 for code in plan.attempts if code)
        if plan.lifecycle == "exhausted":
            assert failures == plan.backoff_limit + 1
            assert len(set(plan.attempts)) == len(plan.attempts)  # the last one shows
            assert plan.expectation == Expectation(State.FAILED, "BackoffLimitExceeded",
                                                   plan.attempts[-1])
        elif plan.lifecycle == "cancelled":
            assert plan.cancel
            assert plan.expectation == Expectation(State.CANCELLED, "Cancelled", None)
        else:
            assert failures == {"first-try": 0, "retry-once": 1, "retry-twice": 2}[
                plan.lifecycle]
            assert failures <= plan.backoff_limit
            assert plan.expectation == Expectation(State.SUCCEEDED, "Completed", 0)


def test_failed_attempts_never_exit_as_a_kill_would() -> None:
    codes = {c for p in draw_job_plans(300, 3, "p", "ns") for c in p.attempts}
    assert codes <= set(range(100))


def test_names_are_distinct_dns_labels_in_creation_order() -> None:
    plans = draw_job_plans(3, 1, "x" * 70, "ns")
    assert [p.index for p in plans] == [0, 1, 2]
    assert len({p.job_name for p in plans}) == 3
    assert all(len(p.job_name) <= 63 for p in plans)


def test_a_mix_naming_an_unknown_lifecycle_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown Job lifecycles"):
        draw_job_plans(1, 1, "p", "ns", mix={"flaky": 1})
