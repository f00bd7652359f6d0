"""The Job path: what the watcher runs for runs backed by batch/v1 Jobs, as one unit.

It wires the Job cache (`watch.store.JobStore`), its reflector (`watch.reflector` over
`watch.jobsource.JobSource`), the index of attempt pods (`watch.jobindex`), the Job
handler (`watch.jobhandler`) and its worker pool over its own queue: one key per Job,
so one per run, with the pod queue's semantics (stingy, coalescing, per-key backoff).

Contract:
* `on_pod_change(key)` goes beside the pod pool's `on_change` on the pod reflector's
  callback: a change of an attempt pod wakes its Job's key.
* `reflect()` (the reflector) fills the Job cache on every replica (a warm standby);
  with Jobs not among `kube.kinds` it does nothing and the cache is empty. `run()` (the
  leader's, once the caches are synced) accepts changes, enqueues every cached Job and
  runs the workers until the queue is shut down. Call once.
* The run ledger is the pod path's (one record of what the platform acknowledged).
* `owns(pod)`: the pod is an attempt this path reports (Jobs watched); the pod path and
  the finalizer loop leave such pods to it. With Jobs not watched it owns none: the pod
  path judges a Job's pods as bare pods, as the reconciler does then.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sniffer.jobs import owned_by_job
from sniffer.jobview import JobView
from sniffer.kube import KubeClient
from sniffer.nullmetrics import NULL_METRICS
from sniffer.platform import PlatformClient
from sniffer.podview import PodView
from sniffer.states import StatePolicy
from watch.handler import HandlerMetrics
from watch.jobhandler import JobHandler
from watch.jobindex import JobIndex
from watch.jobsource import JobSource, KubeJobFinalizers
from watch.ledger import RunLedger
from watch.reflector import Reflector, ReflectorMetrics
from watch.store import JobStore, PodStore, TombstonePolicy
from watch.workers import WorkerPool
from watch.workqueue import Priority, WorkQueue


class JobPath:
    """Turns Job changes into platform updates. Constructing starts nothing."""

    def __init__(self, *, kube: KubeClient, pods: PodStore, ledger: RunLedger,
                 queue: WorkQueue[str], platform: PlatformClient, policy: StatePolicy,
                 namespaces: tuple[str, ...], label_selector: str, page_size: int,
                 watch_timeout_s: tuple[int, int], read_timeout_s: float,
                 workers: int, watch_list: bool = False, max_retries: int, finalizers_enabled: bool,
                 enabled: bool = True,
                 tombstones: TombstonePolicy | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 metrics: HandlerMetrics | None = None,
                 reflector_metrics: ReflectorMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        sink: HandlerMetrics = metrics or NULL_METRICS
        self.queue = queue
        self.enabled = enabled
        """False (`kube.kinds` without jobs): no Job is listed or watched (the cache is
        empty and synced at once), so no Job RBAC is needed."""
        self.store = store = JobStore((namespaces or (None,)) if enabled else (),
                                      tombstones=tombstones)
        # The index wakes Job keys through the pool, which needs the handler, which
        # needs the index: the index reaches the pool late.
        self.index = JobIndex(pods=pods, jobs=store, on_job=self._changed)
        self.handler = JobHandler(
            store=store, index=self.index, ledger=ledger, platform=platform,
            finalizers=KubeJobFinalizers(kube), enabled=finalizers_enabled, policy=policy,
            is_leader=is_leader, metrics=sink, clock=clock)
        self.pool = WorkerPool(name="job-worker", queue=queue, handler=self.handler,
                               workers=workers, store=store, metrics=sink,
                               max_retries=max_retries, clock=clock)
        self.reflector: Reflector[JobView] = Reflector(
            kube, store, self.index.job_changed, namespaces=namespaces,
            label_selector=label_selector, page_size=page_size,
            watch_timeout_s=watch_timeout_s, read_timeout_s=read_timeout_s,
            metrics=reflector_metrics, source=JobSource(kube), watch_list=watch_list)
        self.on_pod_change = self.index.pod_changed
        self._started = False

    def owns(self, pod: PodView) -> bool:
        """Whether this path reports `pod`'s run: an attempt of a Job, Jobs watched."""
        return self.enabled and owned_by_job(pod)

    def _changed(self, key: str, priority: Priority) -> None:
        self.pool.on_change(key, priority)

    async def reflect(self) -> None:
        """Run the Job reflector until cancelled (returns at once if not `enabled`)."""
        if self.enabled:
            await self.reflector.run()

    @property
    def running(self) -> bool:
        return self._started

    async def run(self) -> None:
        """Accept changes, enqueue every cached Job, run the workers until the queue is
        shut down. Caller duty: both caches synced and this replica elected. Call once."""
        if self._started:
            raise RuntimeError("JobPath.run() called twice")
        self._started = True
        self.pool.accept()
        for key in self.store.all_keys():
            self.index.job_changed(key, Priority.LIST)
        await self.pool.run()
