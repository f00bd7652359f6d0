"""`drive`: play lifecycles of `testbed.realcatalogue` on a real node, for real.

Contract:

* `drive(kube, platform_url, token_file, names, ...)` creates, for every lifecycle named
  (a name may repeat), a platform run and its pod in ``namespace`` (created if missing),
  all at once, then does to each pod what its lifecycle says (`Act`) when the pod shows
  the state the act needs (main container running, Unschedulable, crash-looping past
  ``crashloop_restarts``, stuck on its image). It never writes a pod status: the kubelet,
  the scheduler and the controller-manager do. It returns a `RealResult` once every pod
  has ended: a terminal phase for pods left alone; for deleted pods, gone or finished by
  the kubelet and held only by finalizers (the driver never removes a finalizer).
* Waits are for conditions the watch delivers (`testbed.podfeed`), each bounded by
  ``bound_s`` (a broken node fails the play with an error, it does not hang). Pods the
  platform reaps once it has decided (crash loops, stuck images) are reaped when the
  platform run is terminal, or after ``decided_within_s`` if no Sniffer decides it. The
  pod-GC lifecycle waits for the controller-manager's pod GC to delete its finished pod,
  which needs a node started with a ``pod_gc_threshold`` of 1: once the pod has ended
  the driver finishes a newer untracked pod, since pod GC spares the newest.
* The node is shared: the taint lifecycle's NoExecute taint and the late-scheduled
  lifecycle's label are removed again when their play ends, whatever happened.
* A play whose calls fail records an `error` and the others go on.
* `RealResult.histories` has every pod version the watch saw, per play (the recorder's
  input, `testbed.kubeletrecord`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sniffer.kube import KubeClient
from sniffer.kubedecode import Conflict, KubeError, NotFound
from sniffer.podview import CANCEL_ANNOTATION
from testbed.podfeed import PodFeed, feeding
from testbed.realcatalogue import (
    CATALOGUE,
    SCHEDULE_PREFIX,
    TAINT_KEY,
    Act,
    RealLifecycle,
    manifest,
    newer_finished,
    preemptor,
    priority_classes,
)
from testbed.simulator.kubeapi import MERGE, Counters, PodApi
from testbed.simulator.lifecycles import Expectation
from testbed.simulator.runs import PlatformError, RunsClient

log = logging.getLogger(__name__)
JSON = dict[str, Any]
NODE_NAME = "localhost"
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class Play:
    lifecycle: RealLifecycle
    run_id: str
    pod_name: str


@dataclass
class RealResult:
    plays: list[Play]
    expected: dict[str, Expectation] = field(default_factory=dict)
    """Run id → what the platform must finally hold (plays without errors only)."""
    errors: dict[str, str] = field(default_factory=dict)
    """Run id → why its play failed."""
    histories: dict[str, list[tuple[str, JSON]]] = field(default_factory=dict)
    """Run id → every version of its pod the watch saw."""
    elapsed_s: float = 0.0


def _main_status(pod: JSON | None) -> JSON:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else {}


def _main_running(pod: JSON | None, gone: bool) -> bool:
    if gone:
        return True  # nothing left to wait for; the end check reports what happened
    if pod is None:
        return False  # the watch has not delivered it yet
    phase = (pod.get("status") or {}).get("phase")
    return "running" in (_main_status(pod).get("state") or {}) or phase in TERMINAL_PHASES


def _ended(pod: JSON | None, gone: bool) -> bool:
    if gone:
        return True
    if pod is None:
        return False
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    if meta.get("deletionTimestamp"):
        return phase in TERMINAL_PHASES or meta.get("deletionGracePeriodSeconds") == 0
    return phase in TERMINAL_PHASES


def _deleting(pod: JSON | None, gone: bool) -> bool:
    return gone or bool(((pod or {}).get("metadata") or {}).get("deletionTimestamp"))


def _unschedulable(pod: JSON | None, gone: bool) -> bool:
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return gone or any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
                       for c in conditions)


def _waiting_on(*reasons: str) -> Any:
    def check(pod: JSON | None, gone: bool) -> bool:
        waiting = (_main_status(pod).get("state") or {}).get("waiting") or {}
        return gone or waiting.get("reason") in reasons
    return check


def _crash_looped(restarts: int) -> Any:
    def check(pod: JSON | None, gone: bool) -> bool:
        main = _main_status(pod)
        waiting = (main.get("state") or {}).get("waiting") or {}
        return gone or (main.get("restartCount", 0) >= restarts
                        and waiting.get("reason") == "CrashLoopBackOff")
    return check


class _Driver:
    def __init__(self, kube: KubeClient, api: PodApi, runs: RunsClient, feed: PodFeed, *,
                 namespace: str, image: str, crashloop_restarts: int, bound_s: float,
                 decided_within_s: float, finalizers: tuple[str, ...]) -> None:
        self.kube, self.api, self.runs, self.feed = kube, api, runs, feed
        self.namespace, self.image = namespace, image
        self.crashloop_restarts = crashloop_restarts
        self.bound_s, self.decided_within_s = bound_s, decided_within_s
        self.finalizers = finalizers
        self.node_lock = asyncio.Lock()  # node patches read-modify-write the node

    async def _until(self, play: Play, check: Any, what: str) -> JSON | None:
        try:
            return await asyncio.wait_for(self.feed.until(play.pod_name, check), self.bound_s)
        except TimeoutError:
            raise TimeoutError(f"{play.pod_name}: no {what} within {self.bound_s:g} s; last "
                               f"status {(self.feed.latest(play.pod_name) or {}).get('status')}"
                               ) from None

    async def _decided(self, play: Play) -> None:
        """Until the platform holds a terminal state for the run (or the bound passes)."""
        deadline = time.monotonic() + self.decided_within_s
        while time.monotonic() < deadline:
            if await self.runs.state(play.run_id) in ("succeeded", "failed", "cancelled"):
                return
            await asyncio.sleep(0.2)

    async def _patch_node(self, patch: JSON) -> None:
        await self.kube.request_json("PATCH", f"/api/v1/nodes/{NODE_NAME}", body=patch,
                                     content_type="application/merge-patch+json")

    @contextlib.asynccontextmanager
    async def _tainted(self) -> AsyncIterator[None]:
        taint = {"key": TAINT_KEY, "value": "truth", "effect": "NoExecute"}
        async with self.node_lock:
            node = await self.kube.request_json("GET", f"/api/v1/nodes/{NODE_NAME}")
            taints = [t for t in (node.get("spec") or {}).get("taints") or []
                      if t.get("key") != TAINT_KEY]
            await self._patch_node({"spec": {"taints": [*taints, taint]}})
        try:
            yield
        finally:
            async with self.node_lock:
                node = await self.kube.request_json("GET", f"/api/v1/nodes/{NODE_NAME}")
                taints = [t for t in (node.get("spec") or {}).get("taints") or []
                          if t.get("key") != TAINT_KEY]
                await self._patch_node({"spec": {"taints": taints}})

    async def _cancel(self, play: Play, *, annotate: bool) -> None:
        await self.runs.cancel(play.run_id)
        if annotate:
            await self.api.annotate(self.namespace, play.pod_name, {CANCEL_ANNOTATION: "true"})
        await self.api.delete(self.namespace, play.pod_name, grace_s=None)

    async def play(self, play: Play) -> None:
        lc, name, ns = play.lifecycle, play.pod_name, self.namespace
        await self.runs.create(play.run_id, kind=lc.kind.value, namespace=ns, pod_name=name,
                               traceparent=None)
        await self.api.create_pod(manifest(lc, name=name, namespace=ns, run_id=play.run_id,
                                           image=self.image, finalizers=self.finalizers))
        if lc.waits_running:
            await self._until(play, _main_running, "running main container")
        if lc.deadline_s is not None:
            await self.api.call("PATCH", KubeClient.pods_path(ns, name),
                                body={"spec": {"activeDeadlineSeconds": lc.deadline_s}},
                                content_type=MERGE)
        act = lc.act
        if act is Act.CANCEL or act is Act.CANCEL_NO_ANNOTATION:
            await self._cancel(play, annotate=act is Act.CANCEL)
        elif act is Act.DELETE:
            await self.api.delete(ns, name, grace_s=None)
        elif act is Act.EVICT:
            await self.api.evict(ns, name, grace_s=None)
        elif act is Act.TAINT:
            async with self._tainted():
                await self._until(play, _ended, "end after the taint")
        elif act is Act.PREEMPT:
            rival = f"preemptor-{secrets.token_hex(3)}"
            await self.api.create_pod(preemptor(name=rival, namespace=ns, image=self.image))
            try:
                await self._until(play, _ended, "end after preemption")
            finally:
                await self.api.delete(ns, rival, grace_s=0)
        elif act is Act.SCHEDULE_LATER or act is Act.CANCEL_PENDING:
            await self._until(play, _unschedulable, "Unschedulable")
            if act is Act.CANCEL_PENDING:
                await self._cancel(play, annotate=True)
            else:
                label = SCHEDULE_PREFIX + play.run_id
                async with self.node_lock:
                    await self._patch_node({"metadata": {"labels": {label: "true"}}})
                try:
                    await self._until(play, _ended, "end once schedulable")
                finally:
                    async with self.node_lock:
                        await self._patch_node({"metadata": {"labels": {label: None}}})
        elif act is Act.AWAIT_POD_GC:
            await self._until(play, _ended, "end")
            # Pod GC spares the newest-created finished pods: unless one newer than this
            # finishes, this one may be the newest and stay for good.
            newer = f"{name}-newer"
            await self.api.create_pod(newer_finished(name=newer, namespace=ns,
                                                     image=self.image))
            try:
                await self._until(play, _deleting, "pod GC (is the node's "
                                  "--terminated-pod-gc-threshold exceeded?)")
            finally:
                await self.api.delete(ns, newer, grace_s=0)  # pod GC may have taken it
        elif act is Act.REAP_CRASHLOOP or act is Act.REAP_WHEN_DECIDED:
            check = (_crash_looped(self.crashloop_restarts) if act is Act.REAP_CRASHLOOP
                     else _waiting_on("ErrImageNeverPull", "InvalidImageName"))
            await self._until(play, check, f"{act.value} condition")
            await self._decided(play)
            await self.api.delete(ns, name, grace_s=None)
        await self._until(play, _ended, "end")


async def _ensure(kube: KubeClient, path: str, obj: JSON) -> None:
    with contextlib.suppress(Conflict):  # it exists already
        await kube.request_json("POST", path, body=obj)


async def _default_service_account(kube: KubeClient, namespace: str, bound_s: float) -> None:
    """Until the controller-manager made the namespace's default ServiceAccount: an API
    server with ServiceAccount admission refuses pods before it exists."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            await kube.request_json(
                "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
            return
        except NotFound:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no default ServiceAccount in {namespace} within "
                                   f"{bound_s:g} s (is the controller-manager running?)"
                                   ) from None
            await asyncio.sleep(0.1)


async def drive(kube: KubeClient, platform_url: str, token_file: Path, names: list[str], *,
                namespace: str, image: str, run_prefix: str | None = None,
                crashloop_restarts: int = 5, bound_s: float = 180.0,
                decided_within_s: float = 60.0, finalizers: tuple[str, ...] = ()
                ) -> RealResult:
    """Play every lifecycle in `names` at once on the real node (see the contract);
    `finalizers` are set on every pod at creation."""
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown:
        raise ValueError(f"unknown real-node lifecycles: {', '.join(unknown)}; "
                         f"known: {', '.join(CATALOGUE)}")
    prefix = run_prefix or f"real-{secrets.token_hex(3)}"
    plays = [Play(CATALOGUE[n], f"{prefix}-{i:03d}", f"{CATALOGUE[n].kind.value}-{prefix}-{i:03d}")
             for i, n in enumerate(names)]
    result = RealResult(plays=plays)
    started = time.monotonic()
    limit = asyncio.Semaphore(32)
    api = PodApi(kube, limit, counters=Counters())
    await api.ensure_namespace(namespace)
    await _default_service_account(kube, namespace, bound_s)
    if any(p.lifecycle.act is Act.PREEMPT for p in plays):
        for pc in priority_classes():
            await _ensure(kube, "/apis/scheduling.k8s.io/v1/priorityclasses", pc)
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            feeding(kube, namespace) as feed:
        runs = RunsClient(platform_url, token_file, session, limit)
        driver = _Driver(kube, api, runs, feed, namespace=namespace, image=image,
                         crashloop_restarts=crashloop_restarts, bound_s=bound_s,
                         decided_within_s=decided_within_s, finalizers=finalizers)

        async def one(play: Play) -> None:
            try:
                await driver.play(play)
            except (KubeError, PlatformError, aiohttp.ClientError, TimeoutError) as e:
                result.errors[play.run_id] = f"{play.lifecycle.name}: {type(e).__name__}: {e}"
            else:
                result.expected[play.run_id] = play.lifecycle.outcome

        async with asyncio.TaskGroup() as tg:
            for play in plays:
                tg.create_task(one(play), name=f"real:{play.pod_name}")
        for play in plays:
            result.histories[play.run_id] = list(feed.history.get(play.pod_name, ()))
    result.elapsed_s = time.monotonic() - started
    return result
