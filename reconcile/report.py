"""What one pass found and did: a table for on-call, JSON for automation, an exit code.

Contract:
* `PassReport` carries every count a dashboard needs (pods and runs listed, mismatches
  by kind, repairs by kind, outcomes, failures, duration), so telemetry records a pass
  from the report alone.
* `render_table` has one row per mismatch: the run, what was wrong, what was done, in
  the diff's order, then a summary; a consistent pass prints one line.
* `render_json` is one JSON object (schema below); counts by kind and by outcome list
  every kind and outcome, zeros included, so automation never meets a missing key.
* `PassReport.exit_code`, the one place the rule lives:

  - 0: consistent, or every repairable mismatch was repaired or turned out already
    repaired (report-only kinds and dry-run plans do not fail a pass);
  - 1: a repair failed, a run could not be read, or the pass itself failed (a listing
    error): the summary says which;
  - 3: the pass was stopped (SIGTERM/SIGINT) before it finished; rerun it.

JSON: ``{"ok", "exit_code", "dry_run", "only", "scope", "started_at", "duration_s",
"pods_listed", "malformed_pods", "runs_listed", "runs_looked_up", "mismatches": {kind: n},
"repaired": {kind: n}, "outcomes": {outcome: n}, "failed", "skipped", "interrupted",
"error", "lookup_errors": {run_id: error}, "items": [{"run_id", "kind", "pod", "run_state",
"detail", "outcome", "action", "error"}]}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconcile.mismatch import MismatchKind
from reconcile.repair import SKIPPED, RepairOutcome, RepairResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 3


@dataclass(frozen=True, slots=True)
class PassReport:
    started_at: float
    """Wall-clock start (epoch seconds)."""
    duration_s: float
    dry_run: bool
    only: tuple[str, ...]
    scope: tuple[str, ...]
    pods_listed: int = 0
    """Tracked pods seen, malformed ones included."""
    malformed_pods: int = 0
    runs_listed: int = 0
    """Non-terminal runs listed."""
    runs_looked_up: int = 0
    """Runs read one by one (their state mattered, see reconcile.snapshot)."""
    results: tuple[RepairResult, ...] = ()
    lookup_errors: Mapping[str, str] = field(default_factory=dict)
    interrupted: bool = False
    """The pass was stopped before it finished (no repair, or not all, was attempted)."""
    error: str | None = None
    """Why the pass itself failed (a listing error), else None."""

    @property
    def mismatches_by_kind(self) -> dict[str, int]:
        counts = {kind.value: 0 for kind in MismatchKind}
        for r in self.results:
            counts[r.mismatch.kind.value] += 1
        return counts

    @property
    def repaired_by_kind(self) -> dict[str, int]:
        counts = {kind.value: 0 for kind in MismatchKind if kind.repairable}
        for r in self.results:
            if r.outcome is RepairOutcome.REPAIRED:
                counts[r.mismatch.kind.value] += 1
        return counts

    @property
    def outcomes(self) -> dict[str, int]:
        counts = {outcome.value: 0 for outcome in RepairOutcome}
        for r in self.results:
            counts[r.outcome.value] += 1
        return counts

    @property
    def mismatches(self) -> int:
        return len(self.results)

    @property
    def repaired(self) -> int:
        return self.outcomes[RepairOutcome.REPAIRED.value]

    @property
    def failed(self) -> int:
        """Failed repairs plus runs that could not be read."""
        return self.outcomes[RepairOutcome.FAILED.value] + len(self.lookup_errors)

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.results if r.outcome in SKIPPED)

    @property
    def exit_code(self) -> int:
        if self.error is not None or self.failed:
            return EXIT_FAILED
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "dry_run": self.dry_run,
            "only": list(self.only),
            "scope": list(self.scope),
            "started_at": _iso(self.started_at),
            "duration_s": round(self.duration_s, 3),
            "pods_listed": self.pods_listed,
            "malformed_pods": self.malformed_pods,
            "runs_listed": self.runs_listed,
            "runs_looked_up": self.runs_looked_up,
            "mismatches": self.mismatches_by_kind,
            "repaired": self.repaired_by_kind,
            "outcomes": self.outcomes,
            "failed": self.failed,
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "error": self.error,
            "lookup_errors": dict(self.lookup_errors),
            "items": [_item(r) for r in self.results],
        }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _item(r: RepairResult) -> dict[str, Any]:
    m = r.mismatch
    return {"run_id": m.run_id, "kind": m.kind.value, "pod": m.pod.key if m.pod else None,
            "run_state": m.run_state.value if m.run_state else None, "detail": m.detail,
            "outcome": r.outcome.value, "action": r.action, "error": r.error}


def render_json(report: PassReport) -> str:
    return json.dumps(report.to_json(), indent=2)


_HEADERS = ("RUN", "MISMATCH", "POD", "WHAT WAS WRONG", "OUTCOME", "WHAT WAS DONE")
_WIDEST_DETAIL = 72


def render_table(report: PassReport) -> str:
    rows = [(r.mismatch.run_id or "-", r.mismatch.kind.value, _pod(r),
             _cut(r.mismatch.detail), r.outcome.value,
             r.action if r.error is None else f"{r.action}: {r.error}")
            for r in report.results]
    rows.extend((run_id, "-", "-", "could not read the run", "failed", _cut(error))
                for run_id, error in sorted(report.lookup_errors.items()))
    lines: list[str] = []
    if rows:
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(_HEADERS)]
        for row in (_HEADERS, *rows):
            lines.append("  ".join(cell.ljust(widths[i]) if i < len(row) - 1 else cell
                                   for i, cell in enumerate(row)).rstrip())
        lines.append("")
    lines.extend(_summary(report))
    return "\n".join(lines)


def _pod(r: RepairResult) -> str:
    m = r.mismatch
    if m.pod is None:
        return "-"
    return f"{m.pod.key} (missing)" if m.kind is MismatchKind.POD_LOST else m.pod.key


def _cut(text: str) -> str:
    return text if len(text) <= _WIDEST_DETAIL else text[:_WIDEST_DETAIL - 1] + "…"


def _summary(report: PassReport) -> list[str]:
    mode = " (dry run: nothing written)" if report.dry_run else ""
    only = f", only {len(report.only)} run(s)" if report.only else ""
    scope = ", ".join(report.scope) or "all namespaces"
    if report.error is not None or (report.interrupted and not report.results):
        out = [f"pass{mode} in {scope}{only}: no snapshot, {report.duration_s:.1f}s"]
    else:
        out = [f"pass{mode}: {report.pods_listed} tracked pods in {scope}{only}, "
               f"{report.runs_listed} open runs listed, {report.runs_looked_up} read one by "
               f"one, {report.duration_s:.1f}s"]
    if report.error is not None:
        out.append(f"PASS FAILED: {report.error}")
    kinds = ", ".join(f"{k} {n}" for k, n in report.mismatches_by_kind.items() if n)
    out.append(f"mismatches: {report.mismatches}" + (f" ({kinds})" if kinds else ""))
    outcomes = ", ".join(f"{k} {n}" for k, n in report.outcomes.items() if n)
    if outcomes:
        out.append(f"outcomes: {outcomes}")
    if report.lookup_errors:
        out.append(f"runs that could not be read: {len(report.lookup_errors)}")
    if report.interrupted:
        out.append("INTERRUPTED: the pass was stopped before it finished; run it again")
    reported = report.outcomes[RepairOutcome.REPORTED.value]
    verdict = {0: "consistent" if not report.results else "ok" + (
                   f", {reported} reported for a human" if reported else ""),
               1: "FAILED: see the rows marked failed", 3: "incomplete"}[report.exit_code]
    if report.error is not None:
        verdict = "FAILED: the pass could not list both sides"
    if report.exit_code == 0 and report.dry_run and any(
            r.outcome is RepairOutcome.PLANNED for r in report.results):
        verdict = "repairs planned (dry run)"
    out.append(f"result: {verdict} (exit {report.exit_code})")
    return out
