"""bench.trials: repeated trials run interleaved across systems, and each figure of a row
combines into its median and min-max."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.trials import cell, each, figure, group, pointwise, spread


def test_spread_is_the_median_and_the_range_of_the_figures_present():
    assert spread([3.0, 1.0, 2.0]) == (s := spread([2.0, 3.0, 1.0]))
    assert s is not None
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    even = spread([4.0, 1.0, None, 2.0, 10.0])
    assert even is not None
    assert (even.median, even.lo, even.hi, even.n) == (3.0, 1.0, 10.0, 4)
    assert spread([None, None]) is None
    assert spread([]) is None


def test_a_cell_shows_the_median_with_the_range_or_alone_when_the_trials_agree():
    assert cell([12.0, 30.0, 9.6]) == "12 (10-30)"
    assert cell([0.4, 0.41, 0.43], ".2f") == "0.41 (0.40-0.43)"
    assert cell([5.01, 4.99, 5.0], ".1f") == "5.0", "equal to the digits shown: no range"
    assert cell([7.0]) == "7"
    assert cell([None, None]) == "-"
    assert cell([1.5, 25.0], lambda v: f"{v:.0f}" if v >= 10 else f"{v:.1f}") == "13 (1.5-25)"


def test_figure_reads_a_dotted_path_of_every_trial_and_none_where_it_is_missing():
    trials: list[dict[str, Any]] = [{"latency_s": {"p99": 0.1}}, {"latency_s": {"p99": None}},
                                    {"cpu_s": 1.0}]
    assert figure(trials, "latency_s.p99") == [0.1, None, None]
    assert figure(trials, "cpu_s") == [None, None, 1.0]


def test_group_holds_one_rows_trials_together_in_the_order_they_ran():
    def t(system: str, rate: float, trial: int) -> dict[str, object]:
        return {"scenario": "steady", "system": system, "trial": trial,
                "params": {"rate_jobs_per_s": rate}}

    results = [t("a", 10, 0), t("b", 10, 0), t("a", 10, 1), t("b", 10, 1), t("a", 20, 0),
               {"scenario": "election", "system": "a", "params": {"jobs": 10}, "trial": 0}]
    rows = group(results)
    assert [[(r["system"], r["params"].get("rate_jobs_per_s"), r["trial"]) for r in row]
            for row in rows] == [[("a", 10, 0), ("a", 10, 1)], [("b", 10, 0), ("b", 10, 1)],
                                 [("a", 20, 0)], [("a", None, 0)]]


def test_pointwise_gives_the_median_curve_and_its_band():
    med, lo, hi = pointwise([[1.0, 2.0, 9.0], [3.0, 4.0, 5.0], [2.0, 3.0, 4.0], []])
    assert (med, lo, hi) == ([2.0, 3.0, 5.0], [1.0, 2.0, 4.0], [3.0, 4.0, 9.0])
    assert pointwise([[], []]) == ([], [], [])


def run(coro):
    return asyncio.run(coro)


def test_trials_are_interleaved_across_systems_round_by_round():
    order: list[tuple[str, int]] = []

    async def fn(system: str, trial: int) -> None:
        order.append((system, trial))

    run(each(["a", "b", "c"], fn, trials=3))
    assert order == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1),
                     ("a", 2), ("b", 2), ("c", 2)]


def test_systems_run_once_only_in_the_first_round():
    order: list[tuple[str, int]] = []

    async def fn(system: str, trial: int) -> None:
        order.append((system, trial))

    run(each(["a", "slow", "b"], fn, trials=2, once=("slow",)))
    assert order == [("a", 0), ("slow", 0), ("b", 0), ("a", 1), ("b", 1)]


def test_a_parallel_round_runs_its_systems_at_once_and_rounds_in_turn():
    running: set[str] = set()
    seen: list[tuple[int, frozenset[str]]] = []

    async def fn(system: str, trial: int) -> None:
        running.add(system)
        await asyncio.sleep(0.01)
        seen.append((trial, frozenset(running)))
        await asyncio.sleep(0)
        running.discard(system)

    run(each(["a", "b"], fn, trials=2, parallel=True))
    assert [trial for trial, _ in seen] == [0, 0, 1, 1]
    assert all(both == {"a", "b"} for _, both in seen)


@pytest.mark.parametrize("trials", [0, -1])
def test_no_trials_run_nothing(trials):
    calls: list[str] = []

    async def fn(system: str, trial: int) -> None:
        calls.append(system)

    run(each(["a"], fn, trials=trials))
    assert calls == []
