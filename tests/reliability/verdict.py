"""The end-of-scenario checks, as functions of what the scenario recorded.

* `judge`: mismatches with the simulator's expectations after the honest adjustments of
  `gap_alternatives` (see tests/reliability/harness.py's docstring for what they are).
* `finalizers_left`: pods that still carry Sniffer's finalizer and should not.
* `scan_logs`: tracebacks and notable messages in the watcher logs.
* `timing`: time to consistency and latency percentiles from the platform's update log.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sniffer.podview import OUTCOME_FINALIZER, RUN_ID_LABEL
from testbed.simulator.lifecycles import Expectation, State
from testbed.verdict import latencies, mismatches, percentile
from tests.reliability.context import Ctx
from tests.reliability.model import Result


def _live(pod: Mapping[str, Any]) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return (not meta.get("deletionTimestamp")
            and status.get("phase") not in ("Succeeded", "Failed"))


def finalizers_left(pods: Iterable[Mapping[str, Any]], unfinished: set[str]) -> list[str]:
    """Pods holding Sniffer's finalizer that should not: all but live pods of runs the
    simulator could not finish (`unfinished`)."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if OUTCOME_FINALIZER not in (meta.get("finalizers") or ()):
            continue
        run_id = (meta.get("labels") or {}).get(RUN_ID_LABEL)
        if run_id in unfinished and _live(pod):
            continue
        out.append(f"{meta.get('name')} (phase {(pod.get('status') or {}).get('phase')}, "
                   f"{'terminating' if meta.get('deletionTimestamp') else 'not deleted'})")
    return out


@dataclass
class Judgement:
    wrong: list[str]
    pod_lost: int
    """Runs accepted as "pod lost": created and deleted unseen during a watcher gap."""
    reason_unknowable: int = 0
    """Runs in the right state whose reason was accepted unchecked: their pod's deletion
    was requested and completed within a watcher gap (see `gap_alternatives`)."""
    awaiting_reconcile: int = 0
    """Runs of pods deleted unseen that are still open: only the reconciler can tell."""
    failed_while_pending: int = 0
    """Runs accepted as failed with a pending reason: a scenario's alternative for a pod
    the API server held Pending past the pending rule's threshold."""


def judge(expected: Mapping[str, Expectation],
          alternatives: Mapping[str, Sequence[Expectation]],
          allowed_reasons: Mapping[str, frozenset[str]],
          runs: Mapping[str, Mapping[str, Any]], *, before_reconcile: bool = False,
          ) -> Judgement:
    """Mismatches after the honest adjustments (see the module docstring). With
    `before_reconcile`, open runs of pods deleted unseen are counted apart, not wrong."""
    wrong: list[str] = []
    pod_lost = unknowable = awaiting = pending = 0
    for m in mismatches(expected, runs):
        alts = alternatives.get(m.run_id, ())
        fits = [alt for alt in alts if not mismatches({m.run_id: alt}, runs)]
        if fits:
            if any(alt.reason in LOST_REASONS for alt in fits):
                pod_lost += 1
            elif any(alt.state is State.FAILED and alt.reason in PENDING_REASONS
                     for alt in fits):
                pending += 1
            else:
                unknowable += 1
            continue
        if (any(alt.reason in LOST_REASONS for alt in alts) and before_reconcile
                and (runs.get(m.run_id) or {}).get("state") in ("queued", "running")):
            awaiting += 1
            continue
        wrong.append(f"{m.run_id}: expected {m.expected}, platform has {m.actual}")
    for run_id, reasons in allowed_reasons.items():
        run = runs.get(run_id)
        if run is not None and run.get("reason") not in reasons:
            wrong.append(f"{run_id}: reason {run.get('reason')!r} not in {sorted(reasons)}")
    return Judgement(wrong, pod_lost, unknowable, awaiting, pending)


LOST_REASONS = frozenset({"PodLost", "Cancelled"})
PENDING_REASONS = frozenset({"Scheduling", "Unschedulable", "SchedulingGated", "Initializing",
                             "PodInitializing", "ContainerCreating"})
"""The reasons `sniffer.states` gives a pod that is Pending with no container problem."""
DELETION_SHAPES = frozenset({"terminating", "evicting", "deleted", "deleted-when-finished"})
GONE_SHAPES = frozenset({"deleted", "deleted-when-finished"})


def gap_alternatives(ctx: Ctx, finalized: set[str], present: set[str],
                     runs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Expectation]]:
    """What else the platform may honestly show for runs whose pod's end fell in a watcher
    gap (no watcher could see it):

    * the pod never carried the finalizer and was deleted in the gap, so it is gone
      unseen: `sniffer reconcile` reports it "pod lost" (cancelled if cancel was asked);
    * the pod's deletion was requested *and* completed in the gap: the first view anyone
      gets is the final object, whose deletionTimestamp the kubelet's grace-0 DELETE has
      moved past the containers' end, so it cannot tell "stopped by the deletion" from
      "ended, then deleted": the state is judged, the reason and exit code are not. The
      same holds for a terminal state `sniffer reconcile` wrote from a snapshot taken
      after the pod's deletion had completed: a snapshot has no history.
      A deletion accepted just before the gap began is in it too if no watcher had
      received it: its resourceVersion is past what the watchers' streams had delivered
      when they failed (`delivered_before`; on a loaded machine delivery lags seconds).
    """
    out: dict[str, list[Expectation]] = {}
    gaps = [(g.start, g.end if g.end is not None else time.time()) for g in ctx.gaps]
    if not gaps and not ctx.reconciler_wrote:
        return out
    logs = [w.log_path for w in ctx.watchers.values()]
    delivered = [delivered_before(logs, start) for start, _ in gaps]
    for sim in ctx.sims:
        requested: dict[str, float] = {}
        gone: dict[str, float] = {}
        for c in sim.changes:
            if c.shape in DELETION_SHAPES and c.run_id not in requested:
                requested[c.run_id] = c.accepted_at
                version = _version(c.resource_version)
                for (start, _), seen in zip(gaps, delivered, strict=True):
                    if c.accepted_at < start and version is not None and \
                            seen is not None and version > seen:
                        requested[c.run_id] = start  # unseen when the gap began
            if c.shape in GONE_SHAPES:
                gone[c.run_id] = max(gone.get(c.run_id, 0.0), c.accepted_at)
        for run_id, at in gone.items():
            expectation = sim.expected.get(run_id)
            if expectation is None:
                continue
            alts: list[Expectation] = []
            for start, end in gaps:
                if start <= at <= end and run_id not in finalized and run_id not in present:
                    alts.append(lost(runs.get(run_id)))
                if start <= requested.get(run_id, at) and at <= end:
                    alts.append(Expectation(expectation.state, None, None))
            snapshot = ctx.reconciler_wrote.get(run_id)
            if snapshot is not None and at <= snapshot:
                alts.append(Expectation(expectation.state, None, None))
            if alts:
                out[run_id] = alts
    return out


_RESUMING = ("list/watch failed, retrying", "watch stream stalled, reopening")


def _version(text: str | None) -> int | None:
    # The testbed's API server serves etcd revisions: integers, in commit order (an
    # oracle's shortcut; Sniffer itself treats versions as opaque).
    return int(text) if text is not None and text.isdigit() else None


def delivered_before(logs: Iterable[Path], start: float) -> int | None:
    """The least resourceVersion that the watchers' first failing streams at or after
    `start` had delivered (their `resume_from`), None if no watcher logged one."""
    seen: list[int] = []
    for path in logs:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict) or entry.get("message") not in _RESUMING:
                    continue
                at = _log_time(entry.get("time"))
                version = _version(entry.get("resume_from"))
                if at is not None and at >= start and version is not None:
                    seen.append(version)
                    break
    return min(seen, default=None)


def _log_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def scan_logs(paths: Iterable[Path]) -> tuple[int, Counter[str], list[str]]:
    """(tracebacks, counts of notable messages, first offending lines) over watcher logs."""
    tracebacks = 0
    counts: Counter[str] = Counter()
    bad: list[str] = []
    notable = {
        "watch stream stalled, reopening": "stalled",
        "resourceVersion expired, relisting": "expired",
        "list/watch failed, retrying": "watch_errors",
        "dropping change after retries; the reconciler will repair it": "dropped",
        "platform already has a newer or terminal state": "conflicts",
        "retrying": "retries",
        "listed pods": "lists",
        "skipping malformed pod": "malformed_pods",
        "skipping malformed watch line": "malformed_lines",
        "handler failed": "handler_failed",
        "pod's run is unknown to the platform; not reporting it": "orphans",
        "cannot derive the pod's state; leaving it to the reconciler": "underivable",
        "exiting after losing the lease; a restart rejoins as a standby": "lease_lost",
    }
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            record: dict[str, Any] | None = None
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
            if record is None:
                if "Traceback" in line or "Task exception was never retrieved" in line \
                        or "Unclosed" in line:
                    tracebacks += 1
                    if len(bad) < 5:
                        bad.append(f"{path.name}: {line[:300]}")
                continue
            message = str(record.get("message", ""))
            if message in notable:
                counts[notable[message]] += 1
            if record.get("level") in ("error", "critical"):
                counts["error_lines"] += 1
            if "exception" in record:
                tracebacks += 1
                if len(bad) < 5:
                    bad.append(f"{path.name}: {message[:200]}: "
                               f"{str(record['exception']).splitlines()[-1][:200]}")
    return tracebacks, counts, bad


def lost(run: Mapping[str, Any] | None) -> Expectation:
    if run is not None and run.get("cancel_requested"):
        return Expectation(State.CANCELLED, "Cancelled", None)
    return Expectation(State.FAILED, "PodLost", None)


def timing(ctx: Ctx, result: Result, expected: Mapping[str, Expectation],
            updates: list[dict[str, Any]]) -> None:
    last_update: dict[str, float] = {}
    for u in updates:
        if u["run_id"] in expected:
            last_update[u["run_id"]] = float(u["received_at"])
    if last_update:
        result.consistent_at = max(last_update.values())
    ends = [w.end for w in ctx.windows + ctx.gaps if w.end is not None]
    result.last_fault_end = max(ends) if ends else None
    decided = [o.decided_at for sim in ctx.sims for o in sim.outcomes]
    result.last_pod_change = max(decided) if decided else None
    if result.consistent_at is not None:
        if result.last_fault_end is not None:
            result.time_to_consistency_s = round(
                max(0.0, result.consistent_at - result.last_fault_end), 2)
        anchors = [x for x in (result.last_fault_end, result.last_pod_change) if x is not None]
        if anchors:
            anchor = max(anchors)
            result.lag_after_last_change_s = round(max(0.0, result.consistent_at - anchor), 2)
    e2e = latencies([c for sim in ctx.sims for c in sim.changes], updates)
    if e2e:
        result.latency_ms = {"p50": round(percentile(e2e, 50) * 1000, 1),
                             "p99": round(percentile(e2e, 99) * 1000, 1),
                             "max": round(max(e2e) * 1000, 1), "updates": len(e2e)}
