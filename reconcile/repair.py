"""One repair: re-read, judge again, write conditionally (many at once: `reconcile.batch`).

Contract:
* `Repairer.repair(mismatch)` repairs one repairable mismatch and returns its
  `RepairResult`; it never raises for the repair's own errors: every error becomes a
  FAILED result naming it, so one repair's failure never stops the others.
* Never makes things worse. Right before a write, the pod and then the run are read
  again and judged again with the same pure `diff`; only what that fresh judgement asks
  for is written, with ``expected_state`` = the state just read. A change made after the
  snapshot (by the watcher, another pass, a user) is never overwritten or regressed, and
  a terminal run is never written (the diff never proposes it; the platform refuses it).
* 409/412 (or an "already had that state" answer) mean someone else moved the run
  between our read and our write: read and judge once more, and write once more if still
  needed; if nothing is left to do, or the second write is refused too, the result is
  SKIPPED_RACE.
* A fresh judgement of a *different* kind than planned is not acted on (except a left
  finalizer, which is always safe to release): the pod or the run changed meaningfully
  since the snapshot, and the next pass judges it with a full re-read.
* Pod lost: the re-read lists the run's pods by label in its namespace (a new pod may
  have appeared under another name), not just a GET of the name the run records. Pods
  are projected as the snapshot projects them (`reconcile.snapshot.project_into`), so a
  pod found there that cannot be read keeps the run from being judged lost.
* Job-backed runs (job_ahead, job_lost), and pod lost when Jobs are watched: the re-read
  lists the run's pods *and* Jobs by label in the namespace (a Job may have appeared
  since the snapshot, or its attempts changed), so a run is never judged by a stale
  Job; the write carries the Job's attempts and binds the run to the Job.
* App-controller-backed runs (app_ahead, app_lost; pod lost with apps watched): the same,
  listing the run's Deployments / StatefulSets (the kinds watched) beside its pods.
* Finalizer release (finalizer_left, and after a terminal write for a pod that carries
  it): a strategic-merge patch with the pod's uid as precondition; idempotent, and a pod
  that is gone or was replaced under the same name is left alone
  (`sniffer.pods.release_finalizer`; a 409 is an error, the finalizer is still there).
* Transient errors (platform 408/429/5xx and transport errors, Kubernetes transport
  errors, 429 and 5xx) are retried `retries` times with doubling backoff from
  `retry_delay_s` (a Retry-After is honoured up to `max_retry_delay_s`), then FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from opentelemetry import trace

from reconcile.diff import diff
from reconcile.mismatch import Mismatch, MismatchKind, PodRef
from reconcile.snapshot import (
    BadPod,
    Snapshot,
    list_apps_into,
    project_into,
    project_job_into,
)
from sniffer.appview import APP_CONTROLLERS, AppView
from sniffer.backoff import backoff_delay
from sniffer.jobview import JobView
from sniffer.kubedecode import JSON, KubeError, NotFound, Page
from sniffer.platform_model import (
    Outcome,
    PlatformError,
    PlatformUnavailable,
    Run,
    StateUpdate,
    UpdateResult,
)
from sniffer.pods import (
    list_job_pages,
    list_pages,
    release_app_finalizer,
    release_finalizer,
    release_job_finalizer,
)
from sniffer.podview import OUTCOME_FINALIZER, RUN_ID_LABEL, PodView
from sniffer.states import StatePolicy

log = logging.getLogger(__name__)
tracer = trace.get_tracer("sniffer.reconcile")


class RepairOutcome(StrEnum):
    REPAIRED = "repaired"
    """A write landed: the run was moved forward and/or a finalizer was removed."""
    ALREADY_CONSISTENT = "already_consistent"
    """The re-read showed nothing left to do (or something else, for the next pass)."""
    SKIPPED_RACE = "skipped_race"
    """Someone else moved the run between our read and our write; we did not write."""
    FAILED = "failed"
    REPORTED = "reported"
    """A report-only kind: nothing is ever done about it automatically."""
    PLANNED = "planned"
    """Dry run: what would have been done."""
    NOT_ATTEMPTED = "not_attempted"
    """The pass was stopped before this repair started."""
    INTERRUPTED = "interrupted"
    """The pass was stopped while this repair was in flight."""


SKIPPED = frozenset({RepairOutcome.ALREADY_CONSISTENT, RepairOutcome.SKIPPED_RACE})


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What became of one mismatch. `action` says, for a human, what was (or would be)
    done; `error` is set iff FAILED."""

    mismatch: Mismatch
    outcome: RepairOutcome
    action: str
    error: str | None = None


class PodAccess(Protocol):
    """The part of `sniffer.kube.KubeClient` repairs need."""

    async def list_pods(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None, slim: bool = False) -> Page: ...

    async def get_pod(self, namespace: str, name: str, *, slim: bool = False) -> JSON: ...

    async def list_jobs(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None) -> Page: ...

    async def patch_job(self, namespace: str, name: str, patch: JSON, *,
                        content_type: str = ...) -> JSON: ...

    async def patch_pod(self, namespace: str, name: str, patch: JSON | list[JSON], *,
                        content_type: str = ...) -> JSON: ...

    async def list_apps(self, resource: str, namespace: str | None, *, label_selector: str,
                        limit: int, continue_token: str | None = None) -> Page: ...

    async def patch_app(self, resource: str, namespace: str, name: str, patch: JSON, *,
                        content_type: str = ...) -> JSON: ...


class RunWriter(Protocol):
    """The part of `sniffer.platform.PlatformClient` repairs need."""

    async def get_run(self, run_id: str) -> Run | None: ...

    async def update_state(self, update: StateUpdate, *, expected_state: str | None = None,
                           expected_version: int | None = None) -> UpdateResult: ...


Hook = Callable[[Mismatch], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RepairHooks:
    """Test seams: awaited at fixed points of every repair (None: nothing)."""

    before_reread: Hook | None = None
    """After the snapshot and diff, before the re-read (a change here must be seen)."""
    before_write: Hook | None = None
    """After the re-read, before the conditional write (a change here must be refused)."""


class _Race(Exception):
    """The platform refused our write because the run moved (409/412/unchanged)."""

    def __init__(self, run: Run | None) -> None:
        super().__init__("run moved")
        self.run = run


class Repairer:
    """Carries out the repairs one pass planned, one per `repair` call (safe to call
    concurrently: it keeps no state between calls). Constructing starts nothing."""

    def __init__(self, kube: PodAccess, platform: RunWriter, *, policy: StatePolicy,
                 grace_period_s: float, scope: tuple[str, ...], label_selector: str,
                 retries: int = 2, retry_delay_s: float = 0.5,
                 max_retry_delay_s: float = 5.0,
                 clock: Callable[[], float] = time.time,
                 hooks: RepairHooks | None = None,
                 kinds: tuple[str, ...] = ("pods",)) -> None:
        self._kube = kube
        self._platform = platform
        self._policy = policy
        self._grace = grace_period_s
        self._scope = scope
        self._selector = label_selector
        self._retries = retries
        self._retry_delay_s = retry_delay_s
        self._max_retry_delay_s = max_retry_delay_s
        self._clock = clock
        self._hooks = hooks or RepairHooks()
        self._jobs = "jobs" in kinds
        self._apps = tuple(c for c in APP_CONTROLLERS if f"{c.lower()}s" in kinds)

    async def repair(self, m: Mismatch) -> RepairResult:
        """Repair one repairable mismatch; never raises for the repair's own errors."""
        with tracer.start_as_current_span(
                "sniffer.reconcile.repair",
                attributes={"sniffer.run_id": m.run_id or "", "sniffer.mismatch": m.kind.value,
                            **({"k8s.namespace.name": m.pod.namespace,
                                "k8s.pod.name": m.pod.name} if m.pod else {})}) as span:
            result = await self._repair_with_retries(m)
            span.set_attribute("sniffer.repair.outcome", result.outcome.value)
            if result.error:
                span.set_status(trace.StatusCode.ERROR, result.error)
            log.log(logging.ERROR if result.outcome is RepairOutcome.FAILED else logging.INFO,
                    "repair %s", result.outcome.value,
                    extra={"run_id": m.run_id, "mismatch": m.kind.value,
                           "pod": m.pod.key if m.pod else None, "action": result.action,
                           "error": result.error})
        return result

    async def _repair_with_retries(self, m: Mismatch) -> RepairResult:
        for attempt in range(self._retries + 1):
            try:
                return await self._repair_once(m)
            except (PlatformUnavailable, KubeError) as exc:
                if not _transient(exc) or attempt == self._retries:
                    return _failed(m, exc)
                wait = backoff_delay(attempt, base=self._retry_delay_s,
                                     cap=self._max_retry_delay_s)
                if isinstance(exc, PlatformUnavailable) and exc.retry_after is not None:
                    wait = max(wait, exc.retry_after)
                await asyncio.sleep(min(wait, self._max_retry_delay_s))
            except PlatformError as exc:
                return _failed(m, exc)
            except Exception as exc:  # one bad object must never end the pass
                log.exception("repair failed unexpectedly", extra={"run_id": m.run_id})
                return _failed(m, exc)
        raise AssertionError("unreachable")

    async def _repair_once(self, m: Mismatch) -> RepairResult:
        assert m.run_id is not None
        for attempt in (1, 2):
            if self._hooks.before_reread is not None:
                await self._hooks.before_reread(m)
            run, fresh = await self._rejudge(m)
            now = _pick(m, fresh)
            if now is None:
                seen = _describe(run, fresh)
                if attempt == 1:
                    return RepairResult(m, RepairOutcome.ALREADY_CONSISTENT,
                                        f"none: re-read shows {seen}")
                return RepairResult(m, RepairOutcome.SKIPPED_RACE,
                                    f"none: moved by another writer; {seen}")
            assert run is not None
            if self._hooks.before_write is not None:
                await self._hooks.before_write(now)
            try:
                return await self._apply(now, run)
            except _Race as race:
                log.info("run moved between re-read and write; judging again",
                         extra={"run_id": m.run_id,
                                "state": race.run.state if race.run else None})
        return RepairResult(m, RepairOutcome.SKIPPED_RACE,
                            "none: refused twice, the run keeps moving; next pass")

    async def _apply(self, m: Mismatch, run: Run) -> RepairResult:
        done: list[str] = []
        if m.target is not None:
            assert m.run_id is not None
            t = m.target
            binds = (m.kind in (MismatchKind.POD_AHEAD, MismatchKind.JOB_AHEAD,
                                MismatchKind.APP_AHEAD) and m.pod is not None
                     and run.pod_uid in (None, m.pod.uid))  # never rebinds (adopted runs)
            update = StateUpdate.derived(m.run_id, t, m.pod if binds else None,
                                         attempts=m.attempts, attempt_pod=m.attempt_pod)
            result = await self._platform.update_state(update, expected_state=run.state)
            if result.outcome is Outcome.NOT_FOUND:
                return RepairResult(m, RepairOutcome.FAILED, "none",
                                    "the platform no longer knows the run")
            if result.outcome is not Outcome.APPLIED:
                raise _Race(result.run)
            because = f" ({t.reason})" if t.reason else ""
            done.append(f"set {t.state.value}{because}, was {run.state}")
        if m.release_finalizer and m.pod is not None and await self._release(m.pod):
            done.append(f"removed finalizer {OUTCOME_FINALIZER}"
                        + (f" from the {m.pod.kind.lower()}" if m.pod.kind != "Pod" else ""))
        if not done:
            return RepairResult(m, RepairOutcome.ALREADY_CONSISTENT,
                                "none: the pod is gone or was replaced")
        return RepairResult(m, RepairOutcome.REPAIRED, "; ".join(done))

    async def _release(self, ref: PodRef) -> bool:
        """Remove Sniffer's finalizer from this very pod or Job (uid precondition); True
        if a patch landed, False if it is gone or is another object now."""
        if ref.kind == "Job":
            return await release_job_finalizer(self._kube, ref.namespace, ref.name, ref.uid)
        if ref.kind in APP_CONTROLLERS:
            return await release_app_finalizer(self._kube, f"{ref.kind.lower()}s",
                                               ref.namespace, ref.name, ref.uid)
        return await release_finalizer(self._kube, ref.namespace, ref.name, ref.uid)

    # --- the re-read ------------------------------------------------------------------

    async def _rejudge(self, m: Mismatch) -> tuple[Run | None, list[Mismatch]]:
        """Read the pod(s), then the run, and judge them with the pass's own rules."""
        assert m.run_id is not None
        pods: list[PodView] = []
        bad: list[BadPod] = []
        jobs: list[JobView] = []
        bad_jobs: list[BadPod] = []
        apps: list[AppView] = []
        namespaces: tuple[str | None, ...] = ()
        if m.kind in _LISTED or (m.pod is not None and m.pod.kind != "Pod"):
            # A pod (or Job) may have appeared under any name: list by label, in the
            # namespace the run names (the diff only judges runs lost whose namespace is
            # in scope), or the Job's.
            namespaces = (m.pod.namespace,) if m.pod else (self._scope or (None,))
            for namespace in namespaces:  # Jobs and apps first, as the snapshot lists them
                if self._jobs:
                    await self._list_run_jobs(namespace, m.run_id, jobs, bad_jobs)
                for controller in self._apps:
                    await list_apps_into(self._kube, controller, namespace,
                                         self._run_selector(m.run_id), 100, apps, bad_jobs)
                await self._list_run_pods(namespace, m.run_id, pods, bad)
        elif m.pod is not None:
            await self._get_pod(m.pod.namespace, m.pod.name, m.pod.uid, pods, bad)
        run = await self._platform.get_run(m.run_id)
        if (run is not None and run.pod_namespace and None not in namespaces
                and namespaces and run.pod_namespace not in namespaces):
            return run, []  # the run names another namespace now; the next pass looks there
        snapshot = Snapshot(
            pods=tuple(pods), bad_pods=tuple(bad), runs={run.id: run} if run else {},
            unknown_run_ids=frozenset() if run else frozenset({m.run_id}), scope=self._scope,
            jobs=tuple(jobs), bad_jobs=tuple(bad_jobs), jobs_listed=self._jobs,
            apps=tuple(apps), apps_listed=self._apps)
        return run, diff(snapshot, now=self._clock(), policy=self._policy,
                         grace_period_s=self._grace)

    def _run_selector(self, run_id: str) -> str:
        return f"{self._selector},{RUN_ID_LABEL}={run_id}" if self._selector else (
            f"{RUN_ID_LABEL}={run_id}")

    async def _list_run_pods(self, namespace: str | None, run_id: str, pods: list[PodView],
                             bad: list[BadPod]) -> None:
        async with contextlib.aclosing(list_pages(self._kube, namespace,
                                                  label_selector=self._run_selector(run_id),
                                                  page_size=100)) as pages:
            async for page in pages:
                for obj in page.items:
                    project_into(obj, pods, bad)

    async def _list_run_jobs(self, namespace: str | None, run_id: str, jobs: list[JobView],
                             bad: list[BadPod]) -> None:
        async with contextlib.aclosing(list_job_pages(
                self._kube, namespace, label_selector=self._run_selector(run_id),
                page_size=100)) as pages:
            async for page in pages:
                for obj in page.items:
                    project_job_into(obj, jobs, bad)

    async def _get_pod(self, namespace: str, name: str, uid: str | None,
                       pods: list[PodView], bad: list[BadPod]) -> None:
        try:
            obj = await self._kube.get_pod(namespace, name, slim=True)
        except NotFound:
            return
        meta = obj.get("metadata")
        if uid and isinstance(meta, dict) and meta.get("uid") != uid:
            return  # the name belongs to another pod now
        project_into(obj, pods, bad)


_LISTED = (MismatchKind.POD_LOST, MismatchKind.JOB_AHEAD, MismatchKind.JOB_LOST,  # re-read
           MismatchKind.APP_AHEAD, MismatchKind.APP_LOST)  # by label: a new one may be there


def _pick(planned: Mismatch, fresh: list[Mismatch]) -> Mismatch | None:
    """The fresh mismatch to act on: same run, same pod, and the planned kind (or a left
    finalizer, always safe to release)."""
    allowed = (planned.kind, MismatchKind.FINALIZER_LEFT)
    for m in fresh:
        if m.run_id != planned.run_id or m.kind not in allowed:
            continue
        if planned.pod is not None and m.pod is not None and planned.kind not in (
                MismatchKind.POD_LOST, MismatchKind.JOB_LOST, MismatchKind.APP_LOST,
        ) and m.pod.uid != planned.pod.uid:
            continue
        return m
    return None


def _describe(run: Run | None, fresh: list[Mismatch]) -> str:
    what = "no run" if run is None else f"run {run.state}"
    others = [m.kind.value for m in fresh]
    return what + (f", now {', '.join(others)} (left for the next pass)" if others else "")


def _transient(exc: Exception) -> bool:
    if isinstance(exc, PlatformUnavailable):
        return True
    return isinstance(exc, KubeError) and (exc.status == 0 or exc.status == 429
                                           or exc.status >= 500)


def _failed(m: Mismatch, exc: Exception) -> RepairResult:
    return RepairResult(m, RepairOutcome.FAILED, "none", f"{type(exc).__name__}: {exc}")
