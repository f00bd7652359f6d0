"""`sniffer reconcile`: one level-triggered pass, from settings to exit code.

Contract:
* `run_reconcile(settings, stop, *, dry_run, only, output)` connects, runs one pass,
  prints the report on stdout (`output` "table" or "json") and returns its exit code
  (the rule is in `reconcile.report`). An invalid ``--only`` run id is refused before
  anything connects: one message on stderr, exit 2, like any configuration error;
  unusable Kubernetes credentials raise `CredentialsError` for the CLI (exit 2 too).
* `Reconciler.run_pass` is one pass on clients it does not own: snapshot → diff →
  repair → report, in the span "sniffer.reconcile.pass" whose children are
  "sniffer.reconcile.list_pods", "sniffer.reconcile.list_jobs" (when Jobs are watched),
  "sniffer.reconcile.list_runs", "sniffer.reconcile.diff"
  and one "sniffer.reconcile.repair" per repair. Every count lands in the returned
  `PassReport`, so telemetry records a pass from it.
* Each pass is a fresh process (a CronJob run): memory is the pod projections plus one
  LIST page (`reconcile.snapshot`), time is two paginated lists plus one re-read and one
  write per repair, `reconcile.concurrency` at once.
* Shutdown order, once `stop` is set (SIGTERM/SIGINT): while listing, the listing is
  cancelled at once (nothing was written yet); while repairing, no new repair starts,
  in-flight ones get `shutdown.drain_timeout_s`, then are cancelled. The partial report
  is printed and the exit code is 3. Closing the clients is shielded and bounded;
  `CancelledError` is always re-raised.

Two passes at once (the CronJob and an ad-hoc Job, or two ad-hoc Jobs) need no lock:
concurrent passes are provably safe, so the reconciler takes no Lease.

1. Every run write is a compare-and-set: it carries ``expected_state``, the state read
   just before it, and the platform applies it atomically iff the run still has that
   state (else 412). A write is only ever applied to the very state it was decided on.
2. Every applied write moves the run strictly forward (the diff proposes nothing else,
   the platform answers 409 to anything else) and terminal states are final. Writers
   can therefore never undo each other: whatever the interleaving, a run's history is
   a chain queued → running → one terminal state.
3. Two passes that decide the same repair: one applies it, the other gets "already in
   that state" or 409/412 and, judging again, finds nothing to do. Two passes (or a pass
   and the watcher) that decide different repairs from the same reading: the
   compare-and-set admits exactly one, and the loser re-reads before it writes again.
4. A finalizer is released only when the run is terminal, a condition that once true
   stays true for every reader; the release is idempotent and carries the pod's uid, so
   a second release is a no-op and a new pod that took the name is never touched.
5. Orphans, underivable pods and uid mismatches are never acted on.

So any set of concurrent passes ends in a state some sequence of single passes could
have produced (each with fresher data); the only cost of an overlap is duplicated reads,
bounded by `reconcile.concurrency` per pass. A Lease would add nothing to safety — the
watcher writes concurrently with every pass anyway, and the preconditions that make that
safe make a second pass safe — but it would add failure modes: a pass killed by SIGKILL,
OOM or node loss holds the Lease until it expires, blocking exactly the ad-hoc run
on-call starts during an incident; long passes must renew it; it needs RBAC on
coordination.k8s.io. The CronJob still uses ``concurrencyPolicy: Forbid``, so scheduled
passes do not pile up behind a slow one: that is load management, not safety.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Protocol

from opentelemetry import trace

from config.settings import Settings
from reconcile.batch import repair_all, until_stopped
from reconcile.diff import diff
from reconcile.repair import PodAccess, Repairer, RepairHooks, RepairOutcome, RunWriter
from reconcile.report import PassReport, render_json, render_table
from reconcile.snapshot import PodLister, RunReader, Snapshot, take
from sniffer.cleanup import bounded
from sniffer.kube import KubeClient
from sniffer.kubecredentials import CredentialsError
from sniffer.kubedecode import KubeError
from sniffer.platform import PlatformClient, PlatformMetrics
from sniffer.platform_model import PlatformError
from sniffer.podview import RUN_ID_PATTERN
from sniffer.states import StatePolicy

log = logging.getLogger(__name__)
tracer = trace.get_tracer("sniffer.reconcile")
_UNFINISHED = (RepairOutcome.NOT_ATTEMPTED, RepairOutcome.INTERRUPTED)


class KubeAccess(PodLister, PodAccess, Protocol):
    """What a pass needs from Kubernetes (`sniffer.kube.KubeClient` provides it)."""


class PlatformAccess(RunReader, RunWriter, Protocol):
    """What a pass needs from the platform (`sniffer.platform.PlatformClient`)."""


def state_policy(settings: Settings) -> StatePolicy:
    """The watcher's derivation policy: each `StatePolicy` field takes the `states.*`
    setting of the same name; a field with no such setting keeps its default, and a
    setting that is no `StatePolicy` field is not read here."""
    s = settings.states
    return StatePolicy(**{f.name: getattr(s, f.name) for f in dataclasses.fields(StatePolicy)
                          if hasattr(s, f.name)})


class Reconciler:
    """Runs reconcile passes. Constructing starts nothing; each `run_pass` is independent."""

    def __init__(self, settings: Settings, *, kube: KubeAccess, platform: PlatformAccess,
                 clock: Callable[[], float] = time.time,
                 hooks: RepairHooks | None = None,
                 retry_delay_s: float = 0.5) -> None:
        self._settings = settings
        self._kube = kube
        self._platform = platform
        self._clock = clock
        self._hooks = hooks
        self._retry_delay_s = retry_delay_s
        self.snapshot: Snapshot | None = None
        """The last pass's snapshot (for tests and measurements); None before a pass."""

    async def run_pass(self, stop: asyncio.Event, *, dry_run: bool = False,
                       only: tuple[str, ...] = ()) -> PassReport:
        s = self._settings
        scope = s.kube.namespaces
        started_at, started = self._clock(), time.monotonic()
        base = PassReport(started_at=started_at, duration_s=0.0, dry_run=dry_run, only=only,
                          scope=scope)
        log.info("reconcile pass starting", extra={
            "dry_run": dry_run, "only": list(only), "namespaces": list(scope) or "all"})
        with tracer.start_as_current_span(
                "sniffer.reconcile.pass",
                attributes={"sniffer.dry_run": dry_run, "sniffer.only": len(only)}) as span:
            self.snapshot = None
            try:
                snapshot = await until_stopped(take(
                    self._kube, self._platform, scope=scope,
                    label_selector=s.kube.label_selector, page_size=s.kube.page_size,
                    concurrency=s.reconcile.concurrency, only=only, kinds=s.kube.kinds,
                    on_phase=lambda phase: log.info("listing", extra={"phase": phase})),
                    stop)
            except (KubeError, PlatformError) as exc:
                log.error("reconcile pass failed: cannot list", extra={"error": str(exc)})
                report = dataclasses.replace(base, duration_s=time.monotonic() - started,
                                             error=f"{type(exc).__name__}: {exc}")
                return _finish(span, report)
            if snapshot is None:
                report = dataclasses.replace(base, duration_s=time.monotonic() - started,
                                             interrupted=True)
                return _finish(span, report)
            self.snapshot = snapshot
            policy = state_policy(s)
            with tracer.start_as_current_span("sniffer.reconcile.diff") as diff_span:
                mismatches = diff(snapshot, now=self._clock(), policy=policy,
                                  grace_period_s=s.reconcile.grace_period_s)
                diff_span.set_attribute("sniffer.mismatches", len(mismatches))
            repairer = Repairer(
                self._kube, self._platform, policy=policy,
                grace_period_s=s.reconcile.grace_period_s, scope=scope,
                label_selector=s.kube.label_selector, clock=self._clock,
                hooks=self._hooks, retry_delay_s=self._retry_delay_s, kinds=s.kube.kinds)
            results = await repair_all(
                repairer, mismatches, stop, concurrency=s.reconcile.concurrency,
                drain_timeout_s=s.shutdown.drain_timeout_s, dry_run=dry_run)
            report = dataclasses.replace(
                base, duration_s=time.monotonic() - started,
                pods_listed=len(snapshot.pods) + len(snapshot.bad_pods),
                malformed_pods=len(snapshot.bad_pods), runs_listed=snapshot.runs_listed,
                runs_looked_up=snapshot.runs_looked_up, results=tuple(results),
                lookup_errors=snapshot.lookup_errors,
                interrupted=any(r.outcome in _UNFINISHED for r in results))
            return _finish(span, report)


def _finish(span: trace.Span, report: PassReport) -> PassReport:
    span.set_attributes({
        "sniffer.pods_listed": report.pods_listed, "sniffer.runs_listed": report.runs_listed,
        "sniffer.runs_looked_up": report.runs_looked_up,
        "sniffer.mismatches": report.mismatches, "sniffer.repaired": report.repaired,
        "sniffer.failed": report.failed, "sniffer.skipped": report.skipped,
        "sniffer.interrupted": report.interrupted, "sniffer.exit_code": report.exit_code})
    if report.exit_code == 1:
        span.set_status(trace.StatusCode.ERROR, report.error or "a repair failed")
    log.info("reconcile pass finished", extra={
        "duration_s": round(report.duration_s, 3), "pods_listed": report.pods_listed,
        "runs_listed": report.runs_listed, "runs_looked_up": report.runs_looked_up,
        "mismatches": report.mismatches_by_kind, "outcomes": report.outcomes,
        "exit_code": report.exit_code})
    return report


class PassMetrics(Protocol):
    """What `run_reconcile` reports; `sniffer.telemetry.ReconcileTelemetry` implements it."""

    @property
    def platform(self) -> PlatformMetrics: ...

    def record_pass(self, report: PassReport) -> None: ...


async def run_reconcile(settings: Settings, stop: asyncio.Event, *, dry_run: bool,
                        only: tuple[str, ...], output: str,
                        metrics: PassMetrics | None = None) -> int:
    """One pass for `sniffer reconcile`; returns the process exit code. The pass's report
    (and each platform call) goes to `metrics` too."""
    for run_id in only:
        if RUN_ID_PATTERN.fullmatch(run_id) is None:
            print(f"sniffer: --only: not a valid run id: {run_id[:80]!r}", file=sys.stderr)
            return 2
    s = settings
    try:
        kube = await KubeClient.from_settings(s.kube, pool_size=s.reconcile.concurrency + 4)
    except CredentialsError:
        raise  # a configuration error: the CLI says so once and exits 2, as for `watch`
    except Exception as exc:  # noqa: BLE001 - any failure to connect: one message, exit 1
        print(f"sniffer: cannot connect to Kubernetes: {exc}", file=sys.stderr)
        return 1
    platform = PlatformClient.from_settings(s.platform,
                                            metrics=metrics.platform if metrics else None)
    try:
        report = await Reconciler(s, kube=kube, platform=platform).run_pass(
            stop, dry_run=dry_run, only=only)
        if metrics is not None:
            try:
                metrics.record_pass(report)
            except Exception:  # telemetry must never cost the report or the exit code
                log.exception("could not record the pass's metrics")
    finally:
        await bounded(platform.close(), "closing the platform client")
        await bounded(kube.close(), "closing the Kubernetes client")
    print(render_json(report) if output == "json" else render_table(report), flush=True)
    return report.exit_code
