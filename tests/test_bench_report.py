"""bench.report: one row per system and load, each figure the median of the row's trials
with their min-max, the number of trials beside it; every trial kept in the JSON."""

from __future__ import annotations

import json
from typing import Any

from bench import report


def steady(trial: int, p99: float, throughput: float, api: float, wrong: int = 0,
           late: int = 0) -> dict[str, Any]:
    return {"scenario": "steady", "system": "sniffer", "params": {"rate_jobs_per_s": 10},
            "trial": trial,
            "latency_s": {"p50": 0.002, "p90": 0.01, "p99": p99, "max": 0.1},
            "throughput_per_s": throughput, "offered_per_s": 20.0, "cpu_s_per_1000": 1.5,
            "apiserver_cpu_s_per_1000": api, "peak_rss": 64 * 2**20, "wrong": wrong,
            "missing": 0, "not_acknowledged_at_end": late, "platform_requests": 300,
            "cpu_cores": {"system": 0.1, "apiserver": 0.5, "others": 0.0}}


def doc(results: list[dict[str, Any]], trials: int = 3) -> dict[str, Any]:
    return {"stamp": "x", "quick": False, "commit": "abc", "duration_s": 1.0, "trials": trials,
            "ceiling": {"jobs_per_s": 100, "state_changes_per_s": 200, "writes_per_s": 450,
                        "apiserver_cores": 1.5, "status_updates_per_s": 600,
                        "apiserver_cpu_s_per_1000": 7.5},
            "scenario_s": {"ceiling": 12.0, "steady": 300.0},
            "machine": {"cores": 2, "memory_gib": 24.0, "loadavg_start": 1.0,
                        "loadavg_end": 1.0},
            "results": results}


def test_a_row_shows_each_figures_median_and_range_over_its_trials():
    text = report.markdown(doc([steady(0, 0.05, 19.5, 4.0), steady(1, 0.03, 20.0, 4.4),
                                steady(2, 0.09, 19.0, 5.0, wrong=2, late=1)]), [])
    rows = [line for line in text.splitlines() if line.startswith("| sniffer |")]
    assert rows == ["| sniffer | 10 jobs/s | 3 | 2.0 | 10 | 50 (30-90) | 100 | 20 (19-20) | 20 "
                    "| 1.50 | 4.40 (4.00-5.00) | 64 | 0 (0-2) (0 (0-1) late) | 300 "
                    "| 0.10 / 0.50 / 0.00 |"]
    assert "Trials: 3 of each system per row, interleaved" in text
    assert "7.50 CPU s per 1k changes" in text, "the ceiling's API server CPU, for comparison"
    assert "Wall time by scenario: ceiling 12 s, steady 300 s." in text


def test_one_trial_shows_each_figure_alone_and_old_results_without_new_figures_render():
    old = steady(0, 0.05, 19.5, 4.0)
    del old["apiserver_cpu_s_per_1000"], old["trial"]
    text = report.markdown(doc([old], trials=1), [])
    assert ("| sniffer | 10 jobs/s | 1 | 2.0 | 10 | 50 | 100 | 20 | 20 | 1.50 | - | 64 | 0 "
            "| 300 |") in text


def cold(trial: int, system: str, done: bool, ready: float | None, api: float) -> dict[str, Any]:
    return {"scenario": "cold", "system": system, "pods": 10000, "trial": trial,
            "params": {"pods": 10000, "finished": 0.9, "wrong_runs": 82}, "done": done,
            "timeout_s": 60.0, "ready_s": ready, "repaired_s": 1.4 if done else None,
            "quiet_s": 1.5 if done else None, "platform_requests": 1000,
            "platform_updates_applied": 82, "cpu_s": 1.1, "apiserver_cpu_s": api,
            "rss_end": 82 * 2**20, "bytes_per_pod": 1548.0 if done else None, "wrong": 0}


def test_cold_rows_count_the_trials_not_done_and_show_the_api_servers_cpu():
    text = report.markdown(doc([cold(0, "sniffer", True, 1.3, 2.0),
                                cold(1, "sniffer", False, 1.9, 3.0),
                                cold(2, "sniffer", True, 1.2, 2.5),
                                cold(0, "kopf", True, None, 9.0)]), [])
    rows = [line for line in text.splitlines() if line.startswith(("| sniffer", "| kopf"))]
    assert rows == [
        "| sniffer (1 of 3 not done in 60 s) | 10000 | 3 | 1.3 (1.2-1.9) | 1.4 | 1.5 | 1000 | 82 "
        "| 1.1 | 2.5 (2.0-3.0) | 82 | 1548 | 0 |",
        "| kopf | 10000 | 1 | - | 1.4 | 1.5 | 1000 | 82 | 1.1 | 9.0 | 82 | 1548 | 0 |"]


def test_write_keeps_every_trials_raw_figures_in_the_json(tmp_path):
    results = [steady(0, 0.05, 19.5, 4.0), steady(1, 0.03, 20.0, 4.4)]
    paths = report.write(doc(results, trials=2), tmp_path)
    saved = json.loads((tmp_path / "x.json").read_text())
    assert saved["trials"] == 2
    assert [r["trial"] for r in saved["results"]] == [0, 1]
    assert [r["latency_s"]["p99"] for r in saved["results"]] == [0.05, 0.03]
    assert tmp_path / "x.md" in paths
