"""`sniffer watch`: wires the watcher together and owns its lifecycle.

Contract:
* Start order: health server → the run ledger's seed (`watch.ledger`: one listing of
  the platform's open runs, so the cache keeps finished, acknowledged pods as small
  records from the first LIST on) → reflector (every replica keeps a warm cache), and
  leader election → once synced *and* elected: seed afresh, enqueue every cached pod,
  start the platform workers and the finalizer workers (`watch.finalizer_loop`), and
  the Job and app paths (`watch.jobpath`, `watch.apppath`: one per controller kind,
  listing and watching only the kinds among `kube.kinds`).
  `/readyz` turns ready when the cache is synced, on leader and standby alike.
* Shutdown order, on `stop` (SIGTERM): stop taking work (shut the platform queue, then
  the Job and app paths' queues, each drained in turn) → let in-flight updates finish →
  then shut the finalizer queue and let its waiting and
  in-flight patches finish (so a release enqueued by the last acknowledgements still
  goes out), both drains within one `shutdown.drain_timeout_s` (`drain_in_order`) →
  cancel workers, reflector and elector → release the lease (a standby takes over at
  once) → close the health server and the clients. A finalizer patch left undone is
  re-derived by the next leader from its cache. Cleanup awaits are shielded and
  bounded, so a second signal or a hung server cannot skip the lease release or hang
  the exit.
* A standby keeps a warm cache but queues nothing; it keeps tombstones only of pods
  deleted before a leader finalized them, and only until the live leader has been seen
  renewing its lease for a few lease durations after the deletion (watch.leader's
  observation, read by the store's tombstone policy, `LeaderTombstones`). `/healthz`
  reports the tombstones kept.
* Losing the lease stops all writes at once (the elector fences them) and ends `run`
  with `LeadershipLost`; the process exits non-zero and its Deployment restarts it as a
  standby, as client-go controllers do.
* `run` returns 0 after a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from config.loader import ConfigError
from config.settings import Settings
from sniffer.appview import APP_CONTROLLERS
from sniffer.cleanup import bounded
from sniffer.kube import KubeClient
from sniffer.platform import PlatformClient, PlatformMetrics
from sniffer.states import StatePolicy
from watch.apppath import AppPath
from watch.appsource import RESOURCES
from watch.controller import Controller, ControllerMetrics
from watch.finalizer_patch import Finalizers
from watch.health import HealthServer
from watch.jobpath import JobPath
from watch.leader import LeaderElector, LeaderTombstones
from watch.ledger import SEED_MARGIN_S, RunLedger
from watch.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
)
from watch.reflector import Reflector, ReflectorMetrics
from watch.store import Cached, PodStore
from watch.workqueue import Priority, QueueMetrics, WorkQueue

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WatchMetrics:
    """The metric sinks the watcher reports to (all optional; telemetry provides them)."""

    reflector: ReflectorMetrics | None = None
    controller: ControllerMetrics | None = None
    queue: QueueMetrics | None = None
    platform: PlatformMetrics | None = None
    finalizer_queue: QueueMetrics | None = None
    job_queue: QueueMetrics | None = None
    job_controller: ControllerMetrics | None = None
    job_reflector: ReflectorMetrics | None = None
    """The Job path's sinks: the pod path's series with ``sniffer.queue.name`` = jobs and
    ``sniffer.workload.kind`` = Job."""
    app_queues: Mapping[str, QueueMetrics] = field(default_factory=dict)
    app_controllers: Mapping[str, ControllerMetrics] = field(default_factory=dict)
    app_reflectors: Mapping[str, ReflectorMetrics] = field(default_factory=dict)
    """The app paths' sinks by controller kind: ``sniffer.queue.name`` = deployments or
    statefulsets, ``sniffer.workload.kind`` = Deployment or StatefulSet."""


LEASE_POOL_SIZE = 2
"""The Lease's own connections: renewals must never queue behind a burst of finalizer
patches, or a busy leader would lose its lease."""


def kube_pool_size(settings: Settings) -> int:
    """The main API client's most connections: one per finalizer worker (patches) plus one
    per watch stream (each watched kind in each namespace)."""
    streams = len(settings.kube.kinds) * max(1, len(settings.kube.namespaces))
    return settings.finalizers.workers + streams + 4


def identity(settings: Settings) -> str:
    return (settings.leader.identity or os.environ.get("POD_NAME")
            or f"{socket.gethostname()}-{secrets.token_hex(3)}")


def state_policy(settings: Settings) -> StatePolicy:
    s = settings.states
    return StatePolicy(image_pull_failure_after_s=s.image_pull_failure_after_s,
                       crashloop_failure_restarts=s.crashloop_failure_restarts,
                       crashloop_failure_after_s=s.crashloop_failure_after_s,
                       pending_failure_after_s=s.pending_failure_after_s)


class Watcher:
    """One `sniffer watch` process. Constructing starts nothing; `run()` does, once."""

    def __init__(self, settings: Settings, *, metrics: WatchMetrics | None = None,
                 on_leader_change: Callable[[bool], None] | None = None,
                 observe: Callable[[Watcher], None] | None = None,
                 seed_margin_s: float = SEED_MARGIN_S) -> None:
        """`seed_margin_s` is the run ledger's (`watch.ledger.RunLedger`); tests shorten
        it instead of waiting it out."""
        self.settings = settings
        self._seed_margin_s = seed_margin_s
        self._metrics = metrics or WatchMetrics()
        self._on_leader_change = on_leader_change
        self._observe = observe
        self.health_port: int | None = None
        self.store: PodStore | None = None
        self.controller: Controller | None = None
        self.queue: WorkQueue[str] | None = None
        self.finalizer_queue: WorkQueue[str] | None = None
        self.job_queue: WorkQueue[str] | None = None
        self.jobs: JobPath | None = None
        self.apps: list[AppPath] = []  # one per controller kind, watched or not
        self.deployment_queue: WorkQueue[str] | None = None
        self.statefulset_queue: WorkQueue[str] | None = None
        self.elector: LeaderElector | None = None
        self._started = False

    async def run(self, stop: asyncio.Event) -> int:
        if self._started:
            raise RuntimeError("Watcher.run() called twice")
        self._started = True
        s = self.settings
        if not s.platform.verify_tls:
            log.warning("TLS verification of the platform is OFF (platform.verify_tls=false)")
        kube = await KubeClient.from_settings(s.kube, pool_size=kube_pool_size(s))
        lease_kube = await KubeClient.from_settings(s.kube, pool_size=LEASE_POOL_SIZE)
        platform = PlatformClient.from_settings(s.platform, metrics=self._metrics.platform)
        try:
            return await self._run(stop, kube, lease_kube, platform)
        finally:
            await bounded(platform.close(), "closing the platform client")
            await bounded(kube.close(), "closing the Kubernetes client")
            await bounded(lease_kube.close(), "closing the lease client")

    async def _run(self, stop: asyncio.Event, kube: KubeClient, lease_kube: KubeClient,
                   platform: PlatformClient) -> int:
        s = self.settings
        w = s.workers
        self.queue = queue = WorkQueue[str](_limiter(s), metrics=self._metrics.queue,
                                            aging_s=w.list_aging_s)
        # Its own limiter: a release failing against the API server must not use up the
        # platform retries' token bucket, nor they its.
        self.finalizer_queue = finalizer_queue = WorkQueue[str](
            _limiter(s), metrics=self._metrics.finalizer_queue)
        elector = None
        if s.leader.enabled:
            elector = LeaderElector(
                lease_kube, name=s.leader.lease_name, namespace=s.leader.lease_namespace,
                identity=identity(s), lease_duration_s=s.leader.lease_duration_s,
                renew_deadline_s=s.leader.renew_deadline_s,
                retry_period_s=s.leader.retry_period_s, on_change=self._on_leader_change)
        self.elector = elector
        ledger = RunLedger(platform, clock=time.time, seed_margin_s=self._seed_margin_s)
        self.store = store = PodStore(
            s.kube.namespaces or (None,), compaction=ledger,
            tombstones=LeaderTombstones(elector) if elector is not None else None)
        # Its own queue: one key per Job (per run), the platform queue's semantics.
        self.job_queue = job_queue = WorkQueue[str](_limiter(s),
                                                    metrics=self._metrics.job_queue,
                                                    aging_s=w.list_aging_s)
        self.jobs = jobs = _job_path(s, kube, store, ledger, job_queue, platform, elector,
                                     self._metrics)
        self.apps = apps = [_app_path(s, c, kube, store, ledger, platform, elector,
                                      self._metrics) for c in APP_CONTROLLERS]
        self.deployment_queue, self.statefulset_queue = (a.queue for a in apps)
        self.controller = controller = Controller(
            store=store, ledger=ledger, queue=queue, platform=platform, pods=kube,
            finalizers=Finalizers(kube, enabled=s.finalizers.enabled),
            policy=state_policy(s), workers=w.count, max_retries=w.max_retries,
            is_leader=(lambda: elector.is_leader) if elector else (lambda: True),
            metrics=self._metrics.controller, finalizer_queue=finalizer_queue,
            finalizer_workers=s.finalizers.workers, job_held=jobs.index.holds,
            controller_owned=lambda pod: jobs.owns(pod) or any(a.owns(pod) for a in apps))

        reflector = Reflector(
            kube, store, _all(controller.on_change, jobs.on_pod_change,
                              *(a.on_pod_change for a in apps)),
            namespaces=s.kube.namespaces,
            label_selector=s.kube.label_selector, page_size=s.kube.page_size,
            watch_timeout_s=(s.kube.watch_timeout_min_s, s.kube.watch_timeout_max_s),
            read_timeout_s=s.kube.read_timeout_s, metrics=self._metrics.reflector,
            watch_list=s.kube.watch_list)
        health = HealthServer(
            host=s.health.host, port=s.health.port, ready=lambda: store.has_synced,
            checks={"reflector": _reflector_check(reflector, s.kube.read_timeout_s),
                    "job_reflector": _reflector_check(jobs.reflector, s.kube.read_timeout_s,
                                                      jobs.enabled),
                    **{f"{a.resource[:-1]}_reflector": _reflector_check(
                        a.reflector, s.kube.read_timeout_s, a.enabled) for a in apps},
                    "workers": lambda: _worker_check(controller)},
            info=lambda: {"leader": elector.is_leader if elector else True,
                          "cached_pods": len(store), "queue_depth": len(queue),
                          "cached_jobs": len(jobs.store), "job_queue_depth": len(job_queue),
                          **{f"cached_{a.resource}": len(a.store) for a in apps},
                          "finalizer_queue_depth": len(finalizer_queue),
                          "tombstones": store.tombstones, "tasks": len(asyncio.all_tasks())})
        if s.health.port:
            try:
                await health.start()
            except OSError as exc:
                raise ConfigError([f"health.port: cannot listen on {s.health.host}:"
                                   f"{s.health.port} ({exc.strerror or exc})"]) from None
            self.health_port = health.port
        if self._observe is not None:
            self._observe(self)
        log.info("sniffer watch starting", extra={
            "namespaces": list(s.kube.namespaces) or "all", "workers": w.count,
            "finalizer_workers": s.finalizers.workers,
            "finalizers": s.finalizers.enabled, "leader_election": s.leader.enabled,
            "identity": elector.identity if elector else None})
        try:
            async with asyncio.TaskGroup() as group:
                reflecting = group.create_task(_reflect(controller, reflector, jobs, apps),
                                               name="reflector")
                electing = group.create_task(elector.run(), name="elector") if elector else None
                working = group.create_task(self._work(store, elector, controller, jobs,
                                                       apps),
                                            name="controller")
                await stop.wait()
                log.info("stopping: no new work; draining in-flight updates",
                         extra={"drain_timeout_s": s.shutdown.drain_timeout_s,
                                "queue_depth": len(queue)})
                queues = (queue, job_queue, *(a.queue for a in apps), finalizer_queue)
                # A standby has nothing in flight; its queued keys are the leader's job.
                drained = (await drain_in_order(queues, s.shutdown.drain_timeout_s)
                           if controller.running else _shut_down(queues))
                if not drained:
                    log.warning("drain deadline passed; cancelling in-flight updates")
                for task in (working, reflecting, electing):
                    if task is not None:
                        task.cancel()
        finally:
            if elector is not None:
                await bounded(elector.release(), "releasing the lease")
            await bounded(health.stop(), "stopping the health server")
        log.info("sniffer watch stopped")
        return 0

    @staticmethod
    async def _work(store: PodStore, elector: LeaderElector | None,
                    controller: Controller, jobs: JobPath, apps: list[AppPath]) -> None:
        await store.wait_synced()
        await jobs.store.wait_synced()
        for a in apps:
            await a.store.wait_synced()
        log.info("caches synced",
                 extra={"cached_pods": len(store), "cached_jobs": len(jobs.store)})
        if elector is not None:
            await elector.wait_leader()
        async with asyncio.TaskGroup() as group:
            group.create_task(jobs.run(), name="job-path")
            for a in apps:
                group.create_task(a.run(), name=f"{a.resource}-path")
            await controller.run()


def _job_path(s: Settings, kube: KubeClient, store: PodStore, ledger: RunLedger,
              queue: WorkQueue[str], platform: PlatformClient, elector: LeaderElector | None,
              metrics: WatchMetrics) -> JobPath:
    return JobPath(
        kube=kube, pods=store, ledger=ledger, queue=queue, platform=platform,
        enabled="jobs" in s.kube.kinds, metrics=metrics.job_controller,
        reflector_metrics=metrics.job_reflector, **_path_settings(s, elector))


def _path_settings(s: Settings, elector: LeaderElector | None) -> dict[str, Any]:
    """What the Job and app paths take from the settings alike."""
    return {"policy": state_policy(s), "namespaces": s.kube.namespaces,
            "label_selector": s.kube.label_selector, "page_size": s.kube.page_size,
            "watch_timeout_s": (s.kube.watch_timeout_min_s, s.kube.watch_timeout_max_s),
            "read_timeout_s": s.kube.read_timeout_s, "watch_list": s.kube.watch_list,
            "workers": s.workers.count,
            "max_retries": s.workers.max_retries,
            "finalizers_enabled": s.finalizers.enabled,
            "tombstones": LeaderTombstones(elector) if elector is not None else None,
            "is_leader": (lambda: elector.is_leader) if elector else (lambda: True)}


def _app_path(s: Settings, controller: str, kube: KubeClient, store: PodStore,
              ledger: RunLedger, platform: PlatformClient, elector: LeaderElector | None,
              metrics: WatchMetrics) -> AppPath:
    # Its own queue: one key per controller (per run), the platform queue's semantics.
    queue = WorkQueue[str](_limiter(s), metrics=metrics.app_queues.get(controller),
                           aging_s=s.workers.list_aging_s)
    return AppPath(
        controller=controller, kube=kube, pods=store, ledger=ledger, queue=queue,
        platform=platform, enabled=RESOURCES[controller] in s.kube.kinds,
        metrics=metrics.app_controllers.get(controller),
        reflector_metrics=metrics.app_reflectors.get(controller),
        **_path_settings(s, elector))


def _all(*callbacks: Callable[[str, Priority], None]) -> Callable[[str, Priority], None]:
    """The pod reflector's callback: the pod path, then the Job path (attempt pods),
    then the app paths (replica pods)."""
    def changed(key: str, priority: Priority) -> None:
        for callback in callbacks:
            callback(key, priority)
    return changed


def _limiter(s: Settings) -> MaxOfRateLimiter[str]:
    w = s.workers
    return MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(base_delay=w.base_delay_s, max_delay=w.max_delay_s),
        BucketRateLimiter(qps=w.qps, burst=w.burst))


def _shut_down(queues: Sequence[WorkQueue[str]]) -> bool:
    for queue in queues:
        queue.shut_down()
    return True


async def drain_in_order(queues: Sequence[WorkQueue[str]], timeout_s: float) -> bool:
    """Shut down and drain each queue in turn, all within `timeout_s`: a queue is shut
    down only once the ones before it drained, so their last keys can still add work to
    it. True iff every queue drained; on the deadline every queue is shut down and False
    is returned. Caller duty: each queue's workers are running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for queue in queues:
        if not await queue.shut_down_with_drain(max(0.0, deadline - loop.time())):
            for rest in queues:
                rest.shut_down()
            return False
    return True


async def _reflect(controller: Controller, reflector: Reflector[Cached],
                   jobs: JobPath, apps: list[AppPath]) -> None:
    # Seed first: the LIST is then judged as it arrives, so settled pods are never held
    # as full views (what a process holds at its peak it keeps: freed heap is not
    # returned to the OS). A failed seed only means every pod is cached in full.
    await controller.seed()
    async with asyncio.TaskGroup() as group:
        group.create_task(jobs.reflect(), name="job-reflector")
        for a in apps:
            group.create_task(a.reflect(), name=f"{a.resource}-reflector")
        await reflector.run()


def _reflector_check(reflector: Reflector[Any], read_timeout_s: float,
                     enabled: bool = True) -> Callable[[], str | None]:
    def check() -> str | None:
        silent = time.monotonic() - reflector.last_event_at
        # The reflector reopens a silent stream after read_timeout_s; twice that: stuck.
        if enabled and silent > 2 * read_timeout_s + 60:
            return f"no list or watch data for {silent:.0f}s"
        return None
    return check


def _worker_check(controller: Controller) -> str | None:
    busy = controller.longest_busy_s()
    if busy > 300:
        return f"a handler has been running for {busy:.0f}s"
    busy = controller.finalizing.longest_busy_s()
    return f"a finalizer patch has been running for {busy:.0f}s" if busy > 300 else None
