"""The app path: what the watcher runs for runs backed by one app controller kind, as one unit.

For "Deployment" or "StatefulSet" it wires the controller cache (a `watch.store.ObjectStore`
of `sniffer.appview.AppView`s), its reflector (`watch.reflector` over
`watch.appsource.AppSource`), the index of replica pods (`watch.appindex`), the app
handler (`watch.apphandler`) and its worker pool over its own queue: one key per
controller, so one per run, with the pod queue's semantics (stingy, coalescing, per-key
backoff). The Job path (`watch.jobpath`) is the same shape for Jobs.

Contract:
* `on_pod_change(key)` goes beside the pod pool's `on_change` on the pod reflector's
  callback: a change (or deletion) of a replica pod wakes its controller's key.
* `owns(pod)`: whether the pod path must leave `pod` to this path (it is a replica of this
  kind and the kind is watched). With the kind not among `kube.kinds` it owns nothing,
  and such pods are judged by the pod path as before.
* `reflect()` (the reflector) fills the cache on every replica (a warm standby); with the
  kind not watched it does nothing and the cache is empty and synced. `watch_list`
  (`kube.watch_list`): its initial list is streamed (WatchList), as the pod and Job
  reflectors' are. `run()` (the
  leader's, once the caches are synced) accepts changes, enqueues every cached
  controller and runs the workers until the queue is shut down. Call once.
* The run ledger is the pod path's (one record of what the platform acknowledged).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sniffer.apps import replica_owner
from sniffer.appview import AppView
from sniffer.kube import KubeClient
from sniffer.nullmetrics import NULL_METRICS
from sniffer.platform import PlatformClient
from sniffer.podview import PodView
from sniffer.states import StatePolicy
from watch.apphandler import AppHandler
from watch.appindex import AppIndex
from watch.appsource import RESOURCES, AppSource, KubeAppFinalizers
from watch.handler import HandlerMetrics
from watch.ledger import RunLedger
from watch.reflector import Reflector, ReflectorMetrics
from watch.store import ObjectStore, PodStore, TombstonePolicy
from watch.workers import WorkerPool
from watch.workqueue import Priority, WorkQueue


class AppPath:
    """Turns one controller kind's changes into platform updates. Constructing starts
    nothing."""

    def __init__(self, *, controller: str, kube: KubeClient, pods: PodStore,
                 ledger: RunLedger, queue: WorkQueue[str], platform: PlatformClient,
                 policy: StatePolicy, namespaces: tuple[str, ...], label_selector: str,
                 page_size: int, watch_timeout_s: tuple[int, int], read_timeout_s: float,
                 workers: int, max_retries: int, finalizers_enabled: bool,
                 watch_list: bool = False,
                 enabled: bool = True,
                 tombstones: TombstonePolicy | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 metrics: HandlerMetrics | None = None,
                 reflector_metrics: ReflectorMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        sink: HandlerMetrics = metrics or NULL_METRICS
        self.controller = controller
        self.resource = RESOURCES[controller]
        self.queue = queue
        self.enabled = enabled
        """False (`kube.kinds` without this kind): nothing is listed or watched (the
        cache is empty and synced at once), no RBAC on the kind is needed, and the pod
        path keeps judging its pods as bare pods."""
        self.store = store = ObjectStore[AppView]((namespaces or (None,)) if enabled else (),
                                                  tombstones=tombstones)
        self.index = AppIndex(controller=controller, pods=pods, apps=store,
                              on_app=self._changed)
        self.handler = AppHandler(
            store=store, index=self.index, ledger=ledger, platform=platform,
            finalizers=KubeAppFinalizers(kube), enabled=finalizers_enabled, policy=policy,
            is_leader=is_leader, metrics=sink, clock=clock, pods=kube)
        self.pool = WorkerPool(name=f"{controller.lower()}-worker", queue=queue,
                               handler=self.handler, workers=workers, store=store,
                               metrics=sink, max_retries=max_retries, clock=clock)
        self.reflector: Reflector[AppView] = Reflector(
            kube, store, self.index.app_changed, namespaces=namespaces,
            label_selector=label_selector, page_size=page_size,
            watch_timeout_s=watch_timeout_s, read_timeout_s=read_timeout_s,
            metrics=reflector_metrics, source=AppSource(kube, controller),
            watch_list=watch_list)
        self._started = False

    def _changed(self, key: str, priority: Priority) -> None:
        self.pool.on_change(key, priority)

    def on_pod_change(self, key: str, priority: Priority = Priority.LIVE) -> None:
        if self.enabled:
            self.index.pod_changed(key, priority)

    def owns(self, pod: PodView) -> bool:
        return self.enabled and replica_owner(pod) == self.controller

    async def reflect(self) -> None:
        """Run the reflector until cancelled (returns at once if not `enabled`)."""
        if self.enabled:
            await self.reflector.run()

    @property
    def running(self) -> bool:
        return self._started

    async def run(self) -> None:
        """Accept changes, enqueue every cached controller, run the workers until the
        queue is shut down. Caller duty: the caches synced and this replica elected.
        Call once."""
        if self._started:
            raise RuntimeError("AppPath.run() called twice")
        self._started = True
        self.pool.accept()
        for key in self.store.all_keys():
            self.index.app_changed(key, Priority.LIST)
        await self.pool.run()
