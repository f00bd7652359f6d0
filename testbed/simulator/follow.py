"""`follow`: list, then watch, forever — how the simulator's readers keep up with a
namespace (the stand-in kubelet, the Job simulation's view of pods and Jobs).

Contract:

* `follow(lister, watcher, handle, ready)` lists every page (`handle("LIST", obj)` per
  item), sets `ready` after the first complete list, then watches from the list's
  resourceVersion, calling `handle(event_type, obj)` for ADDED, MODIFIED and DELETED
  events (bookmarks only move the resourceVersion on; malformed lines are skipped).
* A watch that ends is reopened from the last resourceVersion seen; 410 Gone relists
  (so `handle` may see an object's LIST again); any other `KubeError` is logged and
  retried after a jittered backoff (`kubeapi.backoff`, floor 0.1 s). It returns only by
  cancellation.
* `pod_pages(kube, namespace, selector)` is a `Lister` of pods (pages of 500, full
  objects).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sniffer.kube import KubeClient
from sniffer.kubedecode import Gone, KubeError, Page, WatchEvent
from testbed.simulator.kubeapi import backoff

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Lister = Callable[[], AsyncIterator[Page]]
Watcher = Callable[[str], AsyncIterator[Any]]
"""From a resourceVersion, the stream's events (`WatchEvent`; anything else is skipped)."""
Handler = Callable[[str, JSON], None]


async def follow(lister: Lister, watcher: Watcher, handle: Handler, ready: asyncio.Event,
                 *, what: str = "objects") -> None:
    """List then watch forever (see the module docstring); `what` names them in logs."""
    rv: str | None = None
    failures = 0
    while True:
        try:
            if rv is None:
                async for page in lister():
                    for obj in page.items:
                        handle("LIST", obj)
                    rv = page.resource_version
                ready.set()
            assert rv is not None
            async for event in watcher(rv):
                if not isinstance(event, WatchEvent):
                    continue
                new = (event.object.get("metadata") or {}).get("resourceVersion")
                rv = str(new) if new else rv
                if event.type != "BOOKMARK":
                    handle(event.type, event.object)
            failures = 0
        except Gone:
            rv = None
        except KubeError as e:
            failures += 1
            log.warning("simulator: list/watch of %s failed (%s); retrying", what, e)
            await asyncio.sleep(backoff(min(failures, 6), floor=0.1))


async def pod_pages(kube: KubeClient, namespace: str, selector: str) -> AsyncIterator[Page]:
    token: str | None = None
    while True:
        page = await kube.list_pods(namespace, label_selector=selector, limit=500,
                                    continue_token=token)
        yield page
        token = page.continue_token
        if token is None:
            return
