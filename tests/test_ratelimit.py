"""watch.ratelimit: client-go's rate limiters, driven by a fake clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures.clock import FakeClock
from watch.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    RateLimiter,
    default_controller_rate_limiter,
)

# --- ItemExponentialFailureRateLimiter --------------------------------------------------


def test_exponential_backoff_doubles_per_failure() -> None:
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(
        0.005, 60.0)
    assert [limiter.when("a") for _ in range(5)] == pytest.approx(
        [0.005, 0.01, 0.02, 0.04, 0.08])


def test_exponential_backoff_is_capped_at_max_delay() -> None:
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(1, 5)
    assert [limiter.when("a") for _ in range(5)] == [1, 2, 4, 5, 5]


def test_exponential_backoff_survives_a_huge_failure_count() -> None:
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(
        0.005, 60.0)
    delays = [limiter.when("a") for _ in range(1500)]
    assert delays[-1] == 60.0
    assert limiter.num_requeues("a") == 1500


def test_num_requeues_counts_calls_to_when() -> None:
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter()
    assert limiter.num_requeues("a") == 0
    limiter.when("a")
    limiter.when("a")
    assert limiter.num_requeues("a") == 2


def test_forget_resets_backoff_and_requeue_count() -> None:
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(1, 60)
    limiter.when("a")
    limiter.when("a")
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0
    assert limiter.when("a") == 1
    limiter.forget("never-seen")  # forgetting an unknown key is harmless


def test_keys_back_off_independently() -> None:
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(1, 60)
    limiter.when("a")
    limiter.when("a")
    assert limiter.when("b") == 1
    assert limiter.when("a") == 4


def test_jitter_shortens_each_delay_by_at_most_its_fraction() -> None:
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(
        1, 8, jitter=0.5, rng=random.Random(7))
    for full in (1, 2, 4, 8, 8, 8):
        delay = limiter.when("a")
        assert full * 0.5 <= delay <= full


def test_jitter_spreads_keys_that_fail_in_lockstep() -> None:
    limiter: ItemExponentialFailureRateLimiter[int] = ItemExponentialFailureRateLimiter(
        1, 8, jitter=0.2, rng=random.Random(1))
    assert len({limiter.when(key) for key in range(20)}) > 1


@pytest.mark.parametrize(("base", "cap", "jitter"),
                         [(0, 1, 0), (-1, 1, 0), (2, 1, 0), (1, 2, 1.0), (1, 2, -0.1)])
def test_exponential_limiter_rejects_bad_parameters(base: float, cap: float,
                                                    jitter: float) -> None:
    with pytest.raises(ValueError, match=r"base_delay|jitter"):
        ItemExponentialFailureRateLimiter(base, cap, jitter=jitter)


@given(st.floats(1e-4, 10), st.floats(1, 100), st.integers(1, 200))
def test_exponential_delays_never_shrink_and_never_exceed_the_cap(
        base: float, factor: float, calls: int) -> None:
    cap = base * factor
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(
        base, cap)
    delays = [limiter.when("k") for _ in range(calls)]
    assert delays == sorted(delays)
    assert all(base <= d <= cap for d in delays)


# --- BucketRateLimiter --------------------------------------------------------------------


def test_bucket_lets_a_burst_through_without_waiting() -> None:
    clock = FakeClock()
    bucket: BucketRateLimiter[str] = BucketRateLimiter(qps=10, burst=3, clock=clock)
    assert [bucket.when(k) for k in "abc"] == [0, 0, 0]


def test_bucket_makes_callers_past_the_burst_wait_their_turn() -> None:
    clock = FakeClock()
    bucket: BucketRateLimiter[str] = BucketRateLimiter(qps=10, burst=2, clock=clock)
    waits = [bucket.when(k) for k in "abcd"]
    assert waits == pytest.approx([0, 0, 0.1, 0.2])


def test_bucket_refills_at_qps() -> None:
    clock = FakeClock()
    bucket: BucketRateLimiter[str] = BucketRateLimiter(qps=10, burst=1, clock=clock)
    assert bucket.when("a") == 0
    clock.advance(0.1)
    assert bucket.when("b") == pytest.approx(0)
    clock.advance(0.05)
    assert bucket.when("c") == pytest.approx(0.05)


def test_bucket_never_holds_more_than_burst_after_idling() -> None:
    clock = FakeClock()
    bucket: BucketRateLimiter[str] = BucketRateLimiter(qps=10, burst=2, clock=clock)
    clock.advance(3600)
    waits = [bucket.when(k) for k in "abc"]
    assert waits == pytest.approx([0, 0, 0.1])


def test_bucket_clock_stepping_back_refills_nothing() -> None:
    clock = FakeClock()
    bucket: BucketRateLimiter[str] = BucketRateLimiter(qps=1, burst=1, clock=clock)
    bucket.when("a")
    clock.advance(-100)
    assert bucket.when("b") == pytest.approx(1)


def test_bucket_keeps_no_per_key_history() -> None:
    bucket: BucketRateLimiter[str] = BucketRateLimiter(qps=1, burst=1, clock=FakeClock())
    bucket.when("a")
    bucket.when("a")
    bucket.forget("a")
    assert bucket.num_requeues("a") == 0


@pytest.mark.parametrize(("qps", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bucket_rejects_bad_parameters(qps: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"qps|burst"):
        BucketRateLimiter(qps, burst, FakeClock())


@given(qps=st.floats(0.5, 100), burst=st.integers(1, 20),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=60))
def test_bucket_never_releases_more_than_burst_plus_qps_times_window(
        qps: float, burst: int, gaps: list[float]) -> None:
    clock = FakeClock(0.0)
    bucket: BucketRateLimiter[int] = BucketRateLimiter(qps, burst, clock)
    ready = []
    for i, gap in enumerate(gaps):
        clock.advance(gap)
        ready.append(clock.now + bucket.when(i))
    assert ready == sorted(ready)
    for i in range(len(ready)):
        for j in range(i, len(ready)):
            assert j - i + 1 <= burst + (ready[j] - ready[i]) * qps + 1e-6


# --- MaxOfRateLimiter and the default -----------------------------------------------------


class Fixed:
    def __init__(self, delay: float, requeues: int = 0) -> None:
        self.delay = delay
        self.requeues = requeues
        self.calls: list[str] = []
        self.forgotten: list[str] = []

    def when(self, key: str) -> float:
        self.calls.append(key)
        return self.delay

    def forget(self, key: str) -> None:
        self.forgotten.append(key)

    def num_requeues(self, key: str) -> int:
        return self.requeues


def test_max_of_returns_the_longest_wait_and_every_limiter_counts_the_attempt() -> None:
    short, long_ = Fixed(0.1), Fixed(2.0)
    limiter: MaxOfRateLimiter[str] = MaxOfRateLimiter(short, long_)
    assert limiter.when("a") == 2.0
    assert short.calls == long_.calls == ["a"]


def test_max_of_forgets_in_every_limiter_and_reports_the_most_requeues() -> None:
    one, other = Fixed(0, requeues=1), Fixed(0, requeues=4)
    limiter: MaxOfRateLimiter[str] = MaxOfRateLimiter(one, other)
    limiter.forget("a")
    assert one.forgotten == other.forgotten == ["a"]
    assert limiter.num_requeues("a") == 4


def test_max_of_needs_a_limiter() -> None:
    with pytest.raises(ValueError, match="at least one"):
        MaxOfRateLimiter()


def test_default_controller_limiter_backs_off_per_key_under_an_overall_bucket() -> None:
    clock = FakeClock()
    limiter: RateLimiter[str] = default_controller_rate_limiter(clock=clock)
    assert [limiter.when("a") for _ in range(3)] == pytest.approx([0.005, 0.01, 0.02])
    for i in range(97):  # 100 tokens in the burst: 3 used above, 97 here
        assert limiter.when(f"k{i}") == pytest.approx(0.005)
    assert limiter.when("late") == pytest.approx(0.1)  # the bucket is empty: 10 qps
    assert limiter.num_requeues("a") == 3
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0
