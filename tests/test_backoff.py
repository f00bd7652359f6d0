"""sniffer.backoff: doubling up to the cap, jitter only ever shortens, reset starts over."""

from __future__ import annotations

import random

import pytest

from sniffer.backoff import Backoff, backoff_delay


def test_without_jitter_the_delay_doubles_up_to_the_cap() -> None:
    delays = [backoff_delay(n, base=0.5, cap=3.0) for n in range(5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_any_number_of_failures_waits_the_cap() -> None:
    assert backoff_delay(10**6, base=0.5, cap=30.0) == 30.0


def test_jitter_keeps_each_delay_between_its_fraction_and_the_capped_value() -> None:
    rng = random.Random(3)
    for n in range(12):
        ceiling = min(0.5 * 2**n, 8.0)
        delay = backoff_delay(n, base=0.5, cap=8.0, jitter=0.25, rng=rng)
        assert 0.75 * ceiling <= delay <= ceiling


def test_jitter_spreads_callers_that_failed_together() -> None:
    rng = random.Random(5)
    delays = {backoff_delay(3, base=1.0, cap=60.0, jitter=0.5, rng=rng) for _ in range(20)}
    assert len(delays) == 20


def test_backoff_counts_failures_and_a_reset_starts_from_the_base_again() -> None:
    backoff = Backoff(1.0, 4.0, jitter=0.0)
    assert [backoff.next() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_backoff_defaults_to_equal_jitter() -> None:
    backoff = Backoff(2.0, 2.0, rng=random.Random(11))
    delays = [backoff.next() for _ in range(50)]
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert min(delays) < 1.5 < max(delays)


@pytest.mark.parametrize(("base", "cap", "jitter", "named"),
                         [(0.0, 1.0, 0.0, "base_delay"), (2.0, 1.0, 0.0, "base_delay"),
                          (1.0, 1.0, 1.0, "jitter"), (1.0, 1.0, -0.1, "jitter")])
def test_nonsense_arguments_are_refused_naming_the_argument(
        base: float, cap: float, jitter: float, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Backoff(base, cap, jitter=jitter)
