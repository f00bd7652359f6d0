"""bench.jobcost's table: one row per kind, the median with the range of the trials."""

from __future__ import annotations

from typing import Any

from bench.jobcost import table


def result(kind: str, cpu_ms: float, rss: float) -> dict[str, Any]:
    writes = 3 if kind == "pod" else 10
    return {"kind": kind, "cpu_ms_per_run": cpu_ms, "cpu_us_per_write": 1000 * cpu_ms / writes,
            "platform_calls_per_run": 3.0, "rss_bytes_per_run": rss}


def test_each_kind_shows_the_median_of_its_trials_and_their_range() -> None:
    rows = table([result("pod", 2.0, 700), result("job", 6.0, 2000),
                  result("pod", 3.0, 900), result("job", 5.0, 2100),
                  result("pod", 2.5, 800), result("job", 7.0, 1900)]).splitlines()
    assert rows[2] == ("| a bare pod | 3 | 2.50 (2.00-3.00) ms | 833 (667-1000) µs | 3.00 "
                       "| 800 (700-900) B |"), "equal trials show no range"
    assert rows[3].startswith("| a Job (2 attempts) | 10 | 6.00 (5.00-7.00) ms |")
    assert rows[3].endswith("| 2,000 (1,900-2,100) B |")


def test_one_trial_shows_its_figure_alone() -> None:
    rows = table([result("pod", 2.0, 700)]).splitlines()
    assert rows[2:] == ["| a bare pod | 3 | 2.00 ms | 667 µs | 3.00 | 700 B |"]
