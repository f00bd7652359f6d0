"""`PodFeed`: every version of every pod in one namespace, as a watch delivers them, with
waits on conditions of a pod.

Contract:

* `run()` lists the namespace's pods, then watches from the list's resourceVersion until
  cancelled; a closed stream is re-opened from the last version seen, a 410 Gone relists
  (versions written during the gap are then missed: `gaps` counts relists after the first).
* `history[name]` holds every version of the pod seen, oldest first, as `(type, object)`
  with type ADDED, MODIFIED or DELETED; `latest(name)` is the last object (None before the
  pod is seen) and `gone(name)` is True iff its DELETED event arrived.
* `until(name, check)` returns once `check(pod, gone)` is true for the pod's latest
  version (checked at once and after every event for that pod); it never polls and has
  no time bound of its own: the caller bounds it.
* The feed writes nothing to the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sniffer.kube import KubeClient
from sniffer.kubedecode import Gone, KubeError, MalformedEvent

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Check = Callable[[JSON | None, bool], bool]


class PodFeed:
    """Watches the pods of `namespace` (optionally only those matching `label_selector`)."""

    def __init__(self, kube: KubeClient, namespace: str, *, label_selector: str = "") -> None:
        self._kube = kube
        self._namespace = namespace
        self._selector = label_selector
        self.history: dict[str, list[tuple[str, JSON]]] = {}
        self.gaps = 0
        self._gone: set[str] = set()
        self._changed = asyncio.Condition()
        self.synced = asyncio.Event()
        """Set once the first list is in `history`."""

    def latest(self, name: str) -> JSON | None:
        seen = self.history.get(name)
        return seen[-1][1] if seen else None

    def gone(self, name: str) -> bool:
        return name in self._gone

    async def until(self, name: str, check: Check) -> JSON | None:
        """Wait until `check(latest, gone)` holds for pod `name`; return its latest version."""
        async with self._changed:
            await self._changed.wait_for(lambda: check(self.latest(name), self.gone(name)))
            return self.latest(name)

    async def _seen(self, kind: str, obj: JSON) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        history = self.history.setdefault(name, [])
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if history and kind != "DELETED" and \
                (history[-1][1].get("metadata") or {}).get("resourceVersion") == rv:
            return  # a relist repeats a version already recorded
        history.append((kind, obj))
        if kind == "DELETED":
            self._gone.add(name)
        async with self._changed:
            self._changed.notify_all()

    async def _list(self) -> str:
        page = await self._kube.list_pods(self._namespace, label_selector=self._selector,
                                          limit=500)
        for obj in page.items:
            await self._seen("ADDED", obj)
        return page.resource_version

    async def run(self) -> None:
        rv = await self._list()
        self.synced.set()
        while True:
            try:
                async for event in self._kube.watch_pods(
                        self._namespace, label_selector=self._selector, resource_version=rv,
                        timeout_seconds=300, read_timeout=330):
                    if isinstance(event, MalformedEvent):
                        log.warning("pod feed: skipped a malformed watch line: %s", event)
                        continue
                    meta = event.object.get("metadata") or {}
                    rv = str(meta.get("resourceVersion") or rv)
                    if event.type != "BOOKMARK":
                        await self._seen(event.type, event.object)
            except Gone:
                self.gaps += 1
                rv = await self._list()
            except KubeError as e:
                log.warning("pod feed: watch failed (%s); re-opening", e)
                await asyncio.sleep(0.2)  # a transport error: do not spin on a dead server


@contextlib.asynccontextmanager
async def feeding(kube: KubeClient, namespace: str, *, label_selector: str = ""
                  ) -> Any:
    """Run a `PodFeed` for the block (its first list done on entry), cancelled on exit."""
    feed = PodFeed(kube, namespace, label_selector=label_selector)
    task = asyncio.create_task(feed.run(), name=f"pod-feed:{namespace}")
    try:
        synced = asyncio.create_task(feed.synced.wait())
        done, _ = await asyncio.wait({task, synced}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            synced.cancel()
            await asyncio.gather(synced, return_exceptions=True)
            task.result()
        yield feed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
