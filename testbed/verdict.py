"""Judging a run of Sniffer on the testbed: what the platform should show, what it shows.

Contract (pure functions over the simulator's records and the platform's update log):
* `mismatches(expected, runs)` lists every run whose platform state, reason or exit code
  differs from the simulator's expectation (reason and exit code only where the
  expectation fixes them).
* `regressions(updates)` lists every update that moved a run backwards or changed a
  terminal state (the platform should refuse those; this double-checks its log).
* `latencies(changes, updates)` pairs each platform update with the simulator change
  that first made that state due, and returns the end-to-end latencies in seconds (the
  API server accepting the change → the platform receiving the update).
* `percentile(values, q)` is nearest-rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from testbed.simulator.lifecycles import Expectation
from testbed.simulator.records import Change

_RANK = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "cancelled": 2}


@dataclass(frozen=True, slots=True)
class Mismatch:
    run_id: str
    expected: str
    actual: str


def mismatches(expected: Mapping[str, Expectation],
               runs: Mapping[str, Mapping[str, Any]]) -> list[Mismatch]:
    out: list[Mismatch] = []
    for run_id, want in expected.items():
        run = runs.get(run_id)
        if run is None:
            out.append(Mismatch(run_id, str(want.state), "missing on the platform"))
            continue
        want_s = str(want.state)
        got = (run.get("state"), run.get("reason"), run.get("exit_code"))
        if got[0] != want_s:
            out.append(Mismatch(run_id, want_s, f"{got[0]} ({got[1]})"))
        elif want.reason is not None and got[1] != want.reason:
            out.append(Mismatch(run_id, f"{want_s} reason {want.reason}",
                                f"{got[0]} reason {got[1]}"))
        elif want.exit_code is not None and got[2] != want.exit_code:
            out.append(Mismatch(run_id, f"{want_s} exit {want.exit_code}",
                                f"{got[0]} exit {got[2]}"))
    return out


def regressions(updates: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    bad = []
    for u in updates:
        before, after = u.get("from_state"), u.get("to_state")
        if before in _RANK and after in _RANK and (
                _RANK[after] < _RANK[before] or (_RANK[before] == 2 and after != before)):
            bad.append(u)
    return bad


def latencies(changes: Sequence[Change], updates: Iterable[Mapping[str, Any]]) -> list[float]:
    due: dict[tuple[str, str], float] = {}
    for c in changes:
        key = (c.run_id, c.expect)
        if key not in due or c.accepted_at < due[key]:
            due[key] = c.accepted_at
    out = []
    for u in updates:
        at = due.get((str(u["run_id"]), str(u["to_state"])))
        received = u.get("received_at")
        if at is not None and isinstance(received, (int, float)):
            out.append(max(0.0, float(received) - at))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
