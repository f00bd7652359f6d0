"""Both sides of one reconcile pass, listed page by page and kept small.

Contract:
* `take()` lists the tracked pods first, then the platform's non-terminal runs. Pods first:
  a run listed after its pod can only be *further* along than the pod's view, which the
  diff never mistakes for a mismatch; a run created after the pod listing began has no
  pod in the snapshot, which the grace period (and the re-read before any write) covers.
* Memory is the projections, never the raw pages: each LIST page (`kube.page_size` pods)
  is decoded slim (only what `project` reads, `sniffer.podwire`), projected to `PodView`s
  (about 1 KiB each) and dropped before the next page is requested, so a pass holds one
  slim page at a time plus the projections.
* A pod that cannot be projected is kept as a small `BadPod` (it is reported as
  underivable); it never stops the pass.
* With `kinds` including "jobs", the tracked batch/v1 Jobs are listed the same way
  (same namespaces, label selector and pagination) right before the pods (a Job counts
  an attempt's end only after the pod shows it, so the pods listed later show every end
  the listed Jobs count), projected to `JobView`s; a Job that cannot be projected is a `BadPod` in
  `bad_jobs`. Without it, `jobs_listed` is False and the diff judges a Job's pods as
  bare pods.
* Runs the non-terminal listing did not return are read one by one (`runs_looked_up`)
  only where the answer can change what the pass does: for pods that carry Sniffer's
  finalizer (is the run terminal? then the finalizer is left over) or that have not
  finished (is the run known at all? else the pod is an orphan). Finished pods without
  the finalizer whose runs are not open are the bulk of a big cluster and need nothing,
  whatever their run says, so they cost no request.
* With `only` (targeted repair), pods are listed by a ``run-id in (...)`` label selector
  and exactly those runs are read one by one, whatever their state.
* An expired continue token (410 Gone: the pass was slower than etcd's compaction)
  restarts that namespace's listing, at most `_GONE_RESTARTS` times.
* A failed LIST raises (`KubeError`, `PlatformError`): without both sides there is
  nothing to diff. A failed single-run read is kept in `lookup_errors` and the pass goes
  on without that run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace

from sniffer.jobview import JobView, project_job
from sniffer.kubedecode import Gone, Page
from sniffer.platform_model import PlatformError, Run
from sniffer.pods import list_job_pages, list_pages
from sniffer.podview import (
    OUTCOME_FINALIZER,
    RUN_ID_LABEL,
    RUN_ID_PATTERN,
    MalformedPod,
    PodView,
    project,
)

tracer = trace.get_tracer("sniffer.reconcile")

NON_TERMINAL = ("queued", "running")
RUN_PAGE_SIZE = 1000
_GONE_RESTARTS = 3
_ONLY_CHUNK = 50  # run ids per label selector, to keep request URLs short


class PodLister(Protocol):
    """The part of `sniffer.kube.KubeClient` a snapshot needs."""

    async def list_pods(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None, slim: bool = False) -> Page: ...

    async def list_jobs(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None) -> Page: ...


class RunReader(Protocol):
    """The part of `sniffer.platform.PlatformClient` a snapshot needs."""

    def list_runs(self, states: Iterable[str], *, page_size: int = 500,
                  ) -> AsyncIterator[Run]: ...

    async def get_run(self, run_id: str) -> Run | None: ...


@dataclass(frozen=True, slots=True)
class BadPod:
    """A tracked pod (or Job) whose object could not be projected (`error` names the
    field)."""

    namespace: str
    name: str
    uid: str
    run_id: str | None
    error: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one pass saw. The diff reads nothing else.

    Invariants: a run id is in `runs` or in `unknown_run_ids`, never both; `runs` holds
    every non-terminal run listed plus every run read one by one (any state). A pod whose
    run id is in neither was not worth a read (finished, no finalizer, run not open)."""

    pods: tuple[PodView, ...]
    bad_pods: tuple[BadPod, ...]
    runs: Mapping[str, Run]
    unknown_run_ids: frozenset[str]
    scope: tuple[str, ...]
    """Namespaces listed; empty means all. A run whose pod would live outside the scope
    is never judged lost."""
    runs_listed: int = 0
    runs_looked_up: int = 0
    lookup_errors: Mapping[str, str] = field(default_factory=dict)
    """run id → why it could not be read."""
    jobs: tuple[JobView, ...] = ()
    bad_jobs: tuple[BadPod, ...] = ()
    """Tracked Jobs that could not be projected (a `BadPod` names any object)."""
    jobs_listed: bool = False
    """True iff Jobs were listed: runs backed by a Job are judged by the Job."""


def needs_run_lookup(pod: PodView) -> bool:
    """True iff the state of this pod's run matters although the run is not open."""
    return OUTCOME_FINALIZER in pod.finalizers or pod.phase not in ("Succeeded", "Failed")


_JOB_ENDS = ("Complete", "SuccessCriteriaMet", "Failed", "FailureTarget")


def job_needs_run_lookup(job: JobView) -> bool:
    """As `needs_run_lookup`, for a Job: it carries Sniffer's finalizer or has not ended."""
    return (OUTCOME_FINALIZER in job.finalizers
            or not any(job.holds(type_) for type_ in _JOB_ENDS))


async def take(kube: PodLister, platform: RunReader, *, scope: tuple[str, ...],
               label_selector: str, page_size: int, concurrency: int,
               only: tuple[str, ...] = (), kinds: tuple[str, ...] = ("pods",),
               on_phase: Callable[[str], None] | None = None) -> Snapshot:
    """List both sides (see the module docstring). `on_phase` is told "jobs"
    (with "jobs" in `kinds`), "pods", "runs" and "lookups" as each phase begins (progress
    logging)."""
    pods: list[PodView] = []
    bad: list[BadPod] = []
    jobs: list[JobView] = []
    bad_jobs: list[BadPod] = []
    selectors = ([label_selector] if not only else
                 [_only_selector(label_selector, only[i:i + _ONLY_CHUNK])
                  for i in range(0, len(only), _ONLY_CHUNK)])
    # Jobs before pods: a Job counts an attempt's end only after the pod shows it, so pods
    # listed later show every end the listed Jobs count (`sniffer.jobs.attempts_behind`).
    with_jobs = "jobs" in kinds
    if with_jobs:
        if on_phase:
            on_phase("jobs")
        await _list_all_jobs(kube, scope, selectors, page_size, jobs, bad_jobs)
    if on_phase:
        on_phase("pods")
    with tracer.start_as_current_span("sniffer.reconcile.list_pods") as span:
        for namespace in scope or (None,):
            for selector in selectors:
                await _list_namespace(kube, namespace, selector, page_size, pods, bad)
        span.set_attribute("sniffer.pods", len(pods) + len(bad))
    if on_phase:
        on_phase("runs")
    runs: dict[str, Run] = {}
    unknown: set[str] = set()
    errors: dict[str, str] = {}
    listed = 0
    with tracer.start_as_current_span("sniffer.reconcile.list_runs") as span:
        if only:
            wanted = list(dict.fromkeys(only))
        else:
            async for run in platform.list_runs(NON_TERMINAL, page_size=RUN_PAGE_SIZE):
                runs[run.id] = run
                listed += 1
            wanted = _worth_a_read(pods, jobs, runs)
        if on_phase:
            on_phase("lookups")
        await _look_up(platform, wanted, concurrency, runs, unknown, errors)
        span.set_attribute("sniffer.runs_listed", listed)
        span.set_attribute("sniffer.runs_looked_up", len(wanted))
    return Snapshot(pods=tuple(pods), bad_pods=tuple(bad), runs=runs,
                    unknown_run_ids=frozenset(unknown), scope=scope, runs_listed=listed,
                    runs_looked_up=len(wanted), lookup_errors=errors, jobs=tuple(jobs),
                    bad_jobs=tuple(bad_jobs), jobs_listed=with_jobs)


async def _list_all_jobs(kube: PodLister, scope: tuple[str, ...], selectors: list[str],
                         page_size: int, jobs: list[JobView], bad: list[BadPod]) -> None:
    with tracer.start_as_current_span("sniffer.reconcile.list_jobs") as span:
        for namespace in scope or (None,):
            for selector in selectors:
                await _list_jobs(kube, namespace, selector, page_size, jobs, bad)
        span.set_attribute("sniffer.jobs", len(jobs) + len(bad))


def _worth_a_read(pods: list[PodView], jobs: list[JobView],
                  runs: Mapping[str, Run]) -> list[str]:
    """Run ids not listed whose state matters (`needs_run_lookup`), in first-seen order."""
    wanted = [pod.run_id for pod in pods
              if pod.run_id is not None and pod.run_id not in runs and needs_run_lookup(pod)]
    wanted += [job.run_id for job in jobs
               if job.run_id is not None and job.run_id not in runs
               and job_needs_run_lookup(job)]
    return list(dict.fromkeys(wanted))


def _only_selector(base: str, run_ids: tuple[str, ...]) -> str:
    for run_id in run_ids:
        if RUN_ID_PATTERN.fullmatch(run_id) is None:
            raise ValueError(f"not a valid run id: {run_id[:80]!r}")
    wanted = f"{RUN_ID_LABEL} in ({','.join(run_ids)})"
    return f"{base},{wanted}" if base else wanted


async def _list_namespace(kube: PodLister, namespace: str | None, selector: str,
                          page_size: int, pods: list[PodView], bad: list[BadPod]) -> None:
    """Append the projections of every pod of one paginated LIST."""
    start_pods, start_bad = len(pods), len(bad)
    for attempt in range(_GONE_RESTARTS + 1):
        try:
            async with contextlib.aclosing(list_pages(kube, namespace, label_selector=selector,
                                                      page_size=page_size)) as pages:
                async for page in pages:
                    items = page.items
                    del page
                    items.reverse()
                    while items:  # each raw object is dropped as soon as it is projected
                        project_into(items.pop(), pods, bad)
                    del items
            return
        except Gone:
            if attempt == _GONE_RESTARTS:
                raise
            del pods[start_pods:]
            del bad[start_bad:]


async def _list_jobs(kube: PodLister, namespace: str | None, selector: str, page_size: int,
                     jobs: list[JobView], bad: list[BadPod]) -> None:
    """Append the projections of every Job of one paginated LIST (as `_list_namespace`)."""
    start_jobs, start_bad = len(jobs), len(bad)
    for attempt in range(_GONE_RESTARTS + 1):
        try:
            async with contextlib.aclosing(list_job_pages(
                    kube, namespace, label_selector=selector, page_size=page_size)) as pages:
                async for page in pages:
                    for obj in page.items:
                        project_job_into(obj, jobs, bad)
            return
        except Gone:
            if attempt == _GONE_RESTARTS:
                raise
            del jobs[start_jobs:]
            del bad[start_bad:]


def project_job_into(obj: object, jobs: list[JobView], bad: list[BadPod]) -> None:
    """As `project_into`, for a Job object."""
    try:
        jobs.append(project_job(obj))
    except MalformedPod as exc:
        bad.append(_bad_object(obj, exc))


def _bad_object(obj: object, exc: MalformedPod) -> BadPod:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    labels = meta.get("labels")
    run_id = labels.get(RUN_ID_LABEL) if isinstance(labels, dict) else None
    return BadPod(namespace=str(meta.get("namespace") or ""),
                  name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""),
                  run_id=run_id if isinstance(run_id, str) else None, error=exc.reason)


def project_into(obj: object, pods: list[PodView], bad: list[BadPod]) -> None:
    """Project `obj` onto `pods`, or, if it cannot be, keep it as a `BadPod` in `bad`
    (with its run id when the label is readable, so the diff never judges that run lost).
    The one projection of a pass: the listing and the repairs' re-read both use it.
    `obj` may be slim (`sniffer.podwire` keeps every field read here)."""
    try:
        pods.append(project(obj))
    except MalformedPod as exc:
        bad.append(_bad_object(obj, exc))


async def _look_up(platform: RunReader, run_ids: list[str], concurrency: int,
                   runs: dict[str, Run], unknown: set[str], errors: dict[str, str]) -> None:
    """Read runs one by one, at most `concurrency` at once."""
    pending = iter(run_ids)

    async def reader() -> None:
        for run_id in pending:  # a shared iterator: each id is taken by one reader
            try:
                run = await platform.get_run(run_id)
            except PlatformError as exc:
                errors[run_id] = str(exc)
                continue
            if run is None:
                unknown.add(run_id)
            else:
                runs[run_id] = run

    async with asyncio.TaskGroup() as group:
        for i in range(min(concurrency, len(run_ids))):
            group.create_task(reader(), name=f"reconcile-lookup-{i}")
