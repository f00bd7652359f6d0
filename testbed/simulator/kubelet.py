"""The kubelet we don't have: status writes and graceful deletions of simulated nodes' pods.

Contract:

* `Kubelet.apply(pod, shape)` writes one status shape (`shapes.render`) as a strategic
  merge patch of the pod's status subresource and returns the server's answer (the pod as
  it now is, which the caller passes to the next `apply`).
* `Kubelet.finish_deletion(pod)` does what a kubelet does once a pod of its node carries a
  deletionTimestamp: after `termination_delay_s` it reports the containers stopped
  (`Shape.TERMINATED_ON_DELETION`: terminal phase; skipped if the pod already is terminal;
  written only over the version it read, so a concurrent writer's newer status is re-read
  rather than overwritten), then DELETEs it with ``gracePeriodSeconds=0`` and the pod's uid
  as precondition. The object disappears once no finalizers remain. The kubelet never
  touches finalizers, so a pod holding one stays Terminating until its owner removes it.
* `Kubelet.run()` does this for every pod of the namespace bound to a node whose name starts
  with `node_prefix`, whoever deleted it: it lists (paginated), then watches from the list's
  resourceVersion (bookmarks on; relists on 410 Gone; rewatches after errors with backoff).
  `ready()` returns once the initial list has been handled. A pod (by uid) is finished at
  most once; pods without a node, or on other nodes, are left alone. `run()` may be called
  once; cancelling it cancels the deletions in progress and waits for them.
* Every write `finish_deletion` makes is reported to the optional `record` callback with
  the pod, the op (``status`` or ``delete``), the shape and its `Accepted` (`apply`'s
  callers record their own writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sniffer.kubedecode import KubeError, Page
from testbed.simulator.follow import follow, pod_pages
from testbed.simulator.kubeapi import Accepted, PodApi
from testbed.simulator.lifecycles import Shape
from testbed.simulator.shapes import render

log = logging.getLogger(__name__)
JSON = dict[str, Any]
RecordFn = Callable[[JSON, str, Shape, Accepted], None]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_CONFLICT_ATTEMPTS = 5


class Kubelet:
    """Simulated kubelets for the nodes named `node_prefix`* in one namespace."""

    def __init__(self, api: PodApi, namespace: str, *, node_prefix: str = "sim-node-",
                 termination_delay_s: float = 0.0, record: RecordFn | None = None) -> None:
        self._api = api
        self.namespace = namespace
        self.node_prefix = node_prefix
        self.termination_delay_s = termination_delay_s
        self._record = record
        self._ready = asyncio.Event()
        self._started = False
        self._taken: set[str] = set()
        """uids whose deletion this kubelet took on (forgotten at their DELETED event)."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Deletions in progress; a task is in here iff it has not finished."""
        self.finished = 0
        """Deletions carried out (for progress and tests)."""

    # --- single writes -----------------------------------------------------------------

    async def apply(self, pod: JSON, shape: Shape, *, restarts: int = 0,
                    exit_code: int | None = None) -> Accepted:
        meta = pod["metadata"]
        status = render(shape, pod, time.time(), restarts=restarts, exit_code=exit_code)
        return await self._api.patch_status(meta["namespace"], meta["name"], status)

    async def finish_deletion(self, pod: JSON) -> Accepted | None:
        """Stop the containers of a pod being deleted, then delete it for good (grace 0).

        Returns the final DELETE's `Accepted` (None if the pod had already gone or was
        replaced by another pod of the same name)."""
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta.get("uid")
        if self.termination_delay_s > 0:
            await asyncio.sleep(self.termination_delay_s)
        for _ in range(_CONFLICT_ATTEMPTS):
            if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                break
            status = render(Shape.TERMINATED_ON_DELETION, pod, time.time())
            try:
                # Preconditions: this very pod (uid), as we read it (resourceVersion); a
                # newer version (another writer, another kubelet) is re-read first.
                accepted = await self._api.patch_status(
                    ns, name, status, uid=uid,
                    resource_version=(pod.get("metadata") or {}).get("resourceVersion"))
            except KubeError as e:
                if e.status not in (404, 409):
                    raise
                latest = await self._api.get(ns, name)
                if latest is None or (uid and latest["metadata"].get("uid") != uid):
                    return None  # gone, or the name now belongs to another pod
                pod = latest
                continue
            self._note(accepted.obj or pod, "status", Shape.TERMINATED_ON_DELETION, accepted)
            break
        try:
            final = await self._api.delete(ns, name, grace_s=0, uid=uid)
        except KubeError as e:
            if e.status != 409:
                raise
            return None  # uid precondition failed: a new pod took the name
        self._note(final.obj or pod, "delete", Shape.DELETED, final)
        self.finished += 1
        return final

    def _note(self, pod: JSON, op: str, shape: Shape, accepted: Accepted) -> None:
        if self._record is not None:
            self._record(pod, op, shape, accepted)

    # --- watching a namespace ----------------------------------------------------------

    async def ready(self) -> None:
        """Wait until `run()` has handled the initial list."""
        await self._ready.wait()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Kubelet]:
        """Run in the background for the block (ready on entry; cancelled on exit)."""
        task = asyncio.create_task(self.run(), name=f"kubelet:{self.namespace}")
        ready = asyncio.create_task(self.ready())
        try:
            done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                ready.cancel()
                task.result()  # raises what run() raised
            yield self
        finally:
            ready.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Finish graceful deletions in the namespace until cancelled."""
        if self._started:
            raise RuntimeError("Kubelet.run() may be called once")
        self._started = True
        try:
            await self._watch_forever()
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_forever(self) -> None:
        kube = self._api.kube

        def pages() -> AsyncIterator[Page]:
            return pod_pages(kube, self.namespace, "")

        def events(rv: str) -> AsyncIterator[Any]:
            return kube.watch_pods(self.namespace, label_selector="", resource_version=rv,
                                   timeout_seconds=300, read_timeout=90)

        await follow(pages, events, self._handle, self._ready, what="pods (kubelet)")

    def _handle(self, event: str, pod: JSON) -> None:
        if event == "DELETED":
            self._taken.discard((pod.get("metadata") or {}).get("uid") or "")
        else:
            self._consider(pod)

    def _consider(self, pod: JSON) -> None:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        uid = meta.get("uid")
        node = spec.get("nodeName") or ""
        if not uid or not meta.get("deletionTimestamp") or not node.startswith(self.node_prefix):
            return
        if uid in self._taken:
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in TERMINAL_PHASES and meta.get("deletionGracePeriodSeconds") == 0:
            return  # nothing left for a kubelet to do: only finalizers hold it
        # No await between the check above and this insertion.
        self._taken.add(uid)
        task = asyncio.create_task(self._finish_logged(pod), name=f"finish:{meta.get('name')}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_logged(self, pod: JSON) -> None:
        try:
            await self.finish_deletion(pod)
        except KubeError as e:
            log.warning("simulated kubelet: cannot finish deleting %s: %s",
                        pod["metadata"].get("name"), e)
        except Exception:
            log.exception("simulated kubelet: bug while deleting %s", pod["metadata"].get("name"))
