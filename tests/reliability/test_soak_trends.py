"""The soak's verdict on resource trends (`tests.reliability.soak.trends`): pure logic."""

from __future__ import annotations

from typing import Any

from tests.reliability.soak import trends


def samples(fds: list[int]) -> list[dict[str, Any]]:
    """One watcher sampled every 10 s from t=0, with these open file descriptor counts."""
    return [{"t": 10.0 * i, "watcher": "w", "pid": 1, "fds": n} for i, n in enumerate(fds)]


def verdict(found: list[dict[str, Any]]) -> str:
    return next(t["verdict"] for t in found if t["measure"] == "fds")


# A pool that grows while faults tie up connections and shrinks once they are over.
POOL = [20] * 8 + [50] * 12 + [42] * 8 + [20] * 4


def test_connections_a_fault_held_and_gave_back_are_flat_once_the_faults_are_over():
    assert verdict(trends(samples(POOL), 0.0, quiet_from=280.0)) == "flat"


def test_without_a_quiet_tail_the_last_quarter_is_judged():
    assert verdict(trends(samples(POOL), 0.0, quiet_from=None)) == "GROWS"


def test_descriptors_still_open_after_the_faults_are_a_leak():
    leak = [20] * 8 + [30] * 8 + [40] * 8 + [50] * 8
    assert verdict(trends(samples(leak), 0.0, quiet_from=280.0)) == "GROWS"


def test_a_quiet_tail_of_fewer_than_three_samples_falls_back_to_the_last_quarter():
    assert verdict(trends(samples(POOL[:-2]), 0.0, quiet_from=290.0)) == "GROWS"
