"""The Job-backed runs' oracle over the platform's update log: pure functions.

A run backed by a Job ends when its Job does, never when one attempt does. The
simulator's records say, for each run, which change decided its end (the Job controller's
terminal condition, sent no earlier than the last attempt's end, or the Job's DELETE
after a cancel: the first change whose ``expect`` is terminal) and what that end is.
Every other change of a Job-backed run keeps it open, however its attempt ended.

Contract:
* `premature_ends(changes, updates)` lists, one line each, the updates that put a run of
  `changes` in a terminal state it should not show, or too early:
  - a terminal state other than the run's final one (a retried attempt's failure
    reported as the run's, a run ended while its Job went on);
  - a terminal state received before its deciding change was even *sent* (so no reading
    of the cluster could justify it yet: the deciding change's send time is a strict
    lower bound, whatever the watcher's lag or the simulator's own);
  - a terminal state for a run whose records decide no end at all.
  Updates of runs not in `changes` are ignored. Both clocks are this machine's wall clock
  (the simulator's records and the platform's ``received_at``).
* `wrong_attempts(changes, runs)` lists the runs of `changes` whose platform record
  (`runs`: run id → the platform's run) shows another attempt count than the attempt
  pods that ran (one ``attempt-running`` change each); a run the platform lacks is
  listed too.
* `retried(changes)` counts the runs whose records show an attempt that failed and was
  retried (another attempt ran after it): the evidence that the scenario exercised
  retries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from testbed.simulator.records import Change

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
FAILED_ATTEMPT, RUNNING_ATTEMPT = "attempt-failed", "attempt-running"
"""The shapes of an attempt pod's failure and start (`testbed.simulator.jobdriver`)."""


@dataclass(frozen=True, slots=True)
class End:
    """A run's decided end: its final state, and when the deciding change was sent."""

    state: str
    not_before: float


def ends(changes: Iterable[Change]) -> tuple[set[str], dict[str, End]]:
    """(every run id in `changes`, run id → its decided `End` for runs that have one)."""
    runs: set[str] = set()
    decided: dict[str, End] = {}
    for c in changes:
        runs.add(c.run_id)
        if c.expect in TERMINAL:
            known = decided.get(c.run_id)
            if known is None or c.sent_at < known.not_before:
                decided[c.run_id] = End(c.expect, c.sent_at)
    return runs, decided


def premature_ends(changes: Iterable[Change],
                   updates: Iterable[Mapping[str, Any]]) -> list[str]:
    """The updates that ended a Job-backed run wrongly or early (see the module docstring)."""
    runs, decided = ends(changes)
    out: list[str] = []
    for u in updates:
        run_id, to = str(u.get("run_id")), u.get("to_state")
        if run_id not in runs or to not in TERMINAL:
            continue
        end = decided.get(run_id)
        received = float(u.get("received_at") or 0.0)
        if end is None:
            out.append(f"{run_id}: {to} while its Job never ended")
        elif to != end.state:
            out.append(f"{run_id}: {to}, but its Job ended {end.state}")
        elif received < end.not_before:
            out.append(f"{run_id}: {to} {end.not_before - received:.2f}s before the change "
                       "that ended its Job was sent")
    return out


def retried(changes: Iterable[Change]) -> int:
    """Runs with a failed attempt that their Job retried (another attempt ran after it)."""
    failed: set[str] = set()
    again: set[str] = set()
    for c in sorted(changes, key=lambda c: c.accepted_at):
        if c.shape == FAILED_ATTEMPT:
            failed.add(c.run_id)
        elif c.shape == RUNNING_ATTEMPT and c.run_id in failed:
            again.add(c.run_id)
    return len(again)


def wrong_attempts(changes: Iterable[Change],
                   runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Runs whose platform attempt count differs from the attempts that ran."""
    ran: dict[str, int] = {}
    for c in changes:
        ran.setdefault(c.run_id, 0)
        if c.shape == RUNNING_ATTEMPT:
            ran[c.run_id] += 1
    out = []
    for run_id, n in sorted(ran.items()):
        run = runs.get(run_id)
        shown = None if run is None else run.get("attempts")
        if shown != n:
            out.append(f"{run_id}: {n} attempt(s) ran, the platform shows {shown}")
    return out
