"""bench.__main__: a quick run fails when any trial of any system ended with a run wrong,
missing or late, whichever trial it was."""

from __future__ import annotations

from typing import Any

import pytest

from bench.__main__ import DEFAULT_SYSTEMS, _failures, parse_args


def trial(system: str, n: int, **bad: int) -> dict[str, Any]:
    return {"scenario": "steady", "system": system, "params": {}, "trial": n, "wrong": 0,
            "missing": 0, "not_acknowledged_at_end": 0, "load_errors": 0,
            "wrong_examples": [], "load_error_examples": [], **bad}


def cold(system: str, n: int, done: bool, wrong: int) -> dict[str, Any]:
    return {"scenario": "cold", "system": system, "params": {}, "trial": n, "done": done,
            "wrong": wrong, "wrong_examples": []}


def test_every_trial_right_is_no_failure():
    results = [trial(s, n) for n in range(3) for s in ("sniffer", "kopf")]
    results += [cold("sniffer", n, True, 0) for n in range(3)]
    results.append({"scenario": "idle", "system": "sniffer", "params": {}, "rss_idle": 1})
    assert _failures({"results": results}) == []


@pytest.mark.parametrize("bad", [{"wrong": 1}, {"missing": 2}, {"not_acknowledged_at_end": 1},
                                 {"load_errors": 1}])
def test_one_bad_trial_among_good_ones_fails_the_run(bad):
    results = [trial("sniffer", 0), trial("sniffer", 1, **bad), trial("sniffer", 2)]
    problems = _failures({"results": results})
    assert len(problems) == 1
    assert "#2" in problems[0], "the failure names the trial"


def test_a_cold_trial_not_done_or_wrong_fails_the_run():
    results = [cold("sniffer", 0, True, 0), cold("sniffer", 1, False, 0),
               cold("client-go", 0, True, 3)]
    assert len(_failures({"results": results})) == 2


def test_trials_default_to_the_sizes_and_the_default_systems_include_the_new_peers():
    assert parse_args([]).trials is None  # Sizes: 3 for the full run, 1 for --quick
    assert parse_args(["--trials", "2"]).trials == 2
    assert {"client-go-json", "sniffer-defaults"} <= set(DEFAULT_SYSTEMS)
