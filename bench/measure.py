"""Figures of one system on one load: latency, throughput, correctness. Pure functions.

Contract:

* A change's latency is the platform's ``received_at`` of the update that moved its run to
  the change's state, minus the change's `accepted_at` (the API server's answer to the
  load). A change with no such update was either *superseded* (a later state of the same
  run was acknowledged, so the intermediate one was legitimately coalesced) or *missing*.
* `verify` compares each run the load expects with the platform's record: state, and for
  terminal runs the reason and exit code the oracle determines (None: not determined).
  A run whose final record is not reached is *wrong*; the list of the first few says why.
* `percentiles` uses the nearest-rank method; empty input gives None for every figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.load import Change
from testbed.simulator.lifecycles import Expectation

_ORDER = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "cancelled": 2}


@dataclass(frozen=True)
class Matched:
    latencies: list[float]
    """Seconds, one per acknowledged change, in the order of the load's changes."""
    superseded: int
    missing: int
    first_ack: float | None
    last_ack: float | None


def match(changes: Sequence[Change], updates: Iterable[Mapping[str, Any]]) -> Matched:
    acked: dict[tuple[str, str], float] = {}
    furthest: dict[str, int] = {}
    for u in updates:
        key = (u["run_id"], u["to_state"])
        acked.setdefault(key, float(u["received_at"]))
        rank = _ORDER.get(u["to_state"], 0)
        furthest[u["run_id"]] = max(furthest.get(u["run_id"], -1), rank)
    latencies, superseded, missing = [], 0, 0
    first = last = None
    for c in changes:
        at = acked.get((c.run_id, c.state))
        if at is None:
            if furthest.get(c.run_id, -1) > _ORDER.get(c.state, 0):
                superseded += 1
            else:
                missing += 1
            continue
        latencies.append(at - c.accepted_at)
        first = at if first is None else min(first, at)
        last = at if last is None else max(last, at)
    return Matched(latencies, superseded, missing, first, last)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1]}


def verify(expect: Mapping[str, Expectation], runs: Iterable[Mapping[str, Any]]
           ) -> tuple[int, list[str]]:
    """(number of wrong runs, a few descriptions)."""
    by_id = {r["id"]: r for r in runs}
    wrong: list[str] = []
    count = 0
    for run_id, e in expect.items():
        run = by_id.get(run_id)
        problem = None
        if run is None:
            problem = "no such run"
        elif run["state"] != e.state.value:
            problem = f"state {run['state']} (want {e.state.value})"
        elif e.reason is not None and run.get("reason") != e.reason:
            problem = f"reason {run.get('reason')!r} (want {e.reason!r})"
        elif e.exit_code is not None and run.get("exit_code") != e.exit_code:
            problem = f"exit_code {run.get('exit_code')} (want {e.exit_code})"
        if problem is not None:
            count += 1
            if len(wrong) < 5:
                wrong.append(f"{run_id}: {problem}")
    return count, wrong


def settled(expect: Mapping[str, Expectation], updates: Iterable[Mapping[str, Any]],
            baseline: Mapping[str, str] | None = None) -> int:
    """How many expected runs have not yet been acknowledged in their expected state
    (from the update log; `baseline` holds states runs had before the log's window)."""
    reached = dict(baseline or {})
    for u in updates:
        reached[u["run_id"]] = u["to_state"]
    return sum(1 for run_id, e in expect.items() if reached.get(run_id) != e.state.value)
