"""The reflector: keeps a store equal to the API server's view of one kind of tracked
object (pods by default; Jobs with `watch.jobsource.JobSource`).

The kind is the `Source` it reads (list pages, a watch stream, the projection); what
follows holds for every kind, "pod" reading "object" where the kind is another.

Contract (client-go's Reflector, in asyncio):
* LIST (paginated with limit/continue), `replace` the store, then WATCH from the list's
  resourceVersion with bookmarks and a server timeout randomised in
  [watch_timeout_min_s, watch_timeout_max_s], so many replicas don't relist in step.
* Every change (including deletions seen only as absences from a relist) is reported
  once through `on_change(key, priority)` after the store has it: `Priority.LIST` for
  what a list found, `Priority.LIVE` for a watch event.
* With `watch_list`, the list is streamed (WatchList, as client-go's WatchListClient): one
  watch with ``sendInitialEvents=true`` from resourceVersion "" (a consistent read) sends
  the objects that exist, then a bookmark annotated ``k8s.io/initial-events-end``; the
  store is replaced from those objects at that bookmark (so "synced" still means the
  whole list is in), and the same stream goes on with live events. A server that refuses
  it (400, 403, 422: the WatchList feature gate off, or a proxy), or ends the stream
  before the end bookmark (a server that ignores the parameter), gets paginated LISTs
  from then on, logged once.
* 410 Gone, at open or mid-stream, relists; so does an expired continue token.
  A stream that ends normally, goes silent for `read_timeout_s` (half-open) or breaks
  (a transport error) is reopened from the last resourceVersion it delivered (bookmarks
  advance it), without a relist, as client-go resumes from its last sync version; the
  failure's log line names that version (`resume_from`).
* Errors back off exponentially with equal jitter (at least half the capped delay, so a
  retry never comes at once), capped; a success resets the backoff.
* A malformed object or line is logged and counted, then skipped; it never ends the loop.
* Objects are decoded slim (only what `sniffer.podview.project` reads, straight from the
  bytes): a LIST of 100k pods never holds their managedFields, images or IDs, and each
  listed pod the store would keep as a settled record (`PodStore.compact`) is compacted
  as its page is projected, so the LIST never holds those pods' full views either.
* A watch stream ends (and its connection is released) before `_watch` returns or
  raises, whatever the consumer of its events raised: never left to the garbage
  collector.
* One loop per namespace (or one for all namespaces); `run()` returns only when
  cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from typing import Generic, Protocol, TypeVar

from sniffer.backoff import Backoff
from sniffer.kube import KubeClient
from sniffer.kubedecode import Gone, KubeError, MalformedEvent, Page, WatchEvent, WatchStalled
from sniffer.nullmetrics import NULL_METRICS
from sniffer.pods import list_pages
from sniffer.podview import INITIAL_EVENTS_END_ANNOTATION, MalformedPod, project
from watch.store import Cached, ObjectStore, Versioned
from watch.workqueue import Priority

V = TypeVar("V", bound=Versioned)
V_co = TypeVar("V_co", bound=Versioned, covariant=True)

log = logging.getLogger(__name__)


class ReflectorMetrics(Protocol):
    """What the reflector reports; `sniffer.telemetry` implements it."""

    def event(self, kind: str) -> None: ...
    def relist(self, cause: str) -> None: ...
    def watch_restart(self, cause: str) -> None: ...
    def malformed(self, where: str) -> None: ...
    def delivered(self, seconds: float) -> None:
        """A watch event went from its bytes framed to stored and queued in `seconds`."""


class Source(Protocol[V_co]):
    """One kind of object as the reflector reads it."""

    what: str
    """The kind's plural, for logs ("pods", "jobs")."""

    def pages(self, namespace: str | None, *, label_selector: str,
              page_size: int) -> AsyncGenerator[Page, None]:
        """Every page of one paginated LIST (`sniffer.pods.list_pages`' contract)."""
        ...

    def watch(self, namespace: str | None, *, label_selector: str, resource_version: str,
              timeout_seconds: int, read_timeout: float, send_initial_events: bool = False,
              ) -> AsyncGenerator[WatchEvent | MalformedEvent, None]:
        """One watch stream (`KubeClient.watch_pods`' contract)."""
        ...

    def project(self, obj: dict[str, object]) -> V_co:
        """The view of one object; raises `MalformedPod` (or a subclass) for a bad one."""
        ...


class PodSource:
    """Pods, decoded slim."""

    what = "pods"

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    def pages(self, namespace: str | None, *, label_selector: str,
              page_size: int) -> AsyncGenerator[Page, None]:
        return list_pages(self._kube, namespace, label_selector=label_selector,
                          page_size=page_size)

    def watch(self, namespace: str | None, *, label_selector: str, resource_version: str,
              timeout_seconds: int, read_timeout: float, send_initial_events: bool = False,
              ) -> AsyncGenerator[WatchEvent | MalformedEvent, None]:
        return self._kube.watch_pods(
            namespace, label_selector=label_selector, resource_version=resource_version,
            timeout_seconds=timeout_seconds, read_timeout=read_timeout, slim=True,
            send_initial_events=send_initial_events)

    def project(self, obj: dict[str, object]) -> Cached:
        return project(obj)


class Reflector(Generic[V]):
    """Lists and watches tracked objects into a store. Constructing starts nothing."""

    def __init__(self, kube: KubeClient, store: ObjectStore[V],
                 on_change: Callable[[str, Priority], None], *,
                 namespaces: tuple[str, ...], label_selector: str, page_size: int = 500,
                 watch_timeout_s: tuple[int, int] = (300, 600), read_timeout_s: float = 120.0,
                 metrics: ReflectorMetrics | None = None,
                 rng: random.Random | None = None,
                 source: Source[V] | None = None, watch_list: bool = False) -> None:
        """`source` None: pods (`PodSource`; `store` must then be a `PodStore`).
        `watch_list`: stream the list (WatchList) while the server allows it."""
        self.watch_list = watch_list
        """True while lists are streamed; False for good after a server refused one."""
        self._source: Source[V] = source or PodSource(kube)  # type: ignore[assignment]
        self._store = store
        self._on_change = on_change
        self._namespaces: tuple[str | None, ...] = namespaces or (None,)
        self._selector = label_selector
        self._page_size = page_size
        self._watch_timeout_s = watch_timeout_s
        self._read_timeout_s = read_timeout_s
        self._metrics: ReflectorMetrics = metrics or NULL_METRICS
        self._rng = rng or random.Random()
        self._started = False
        self._delivered: dict[str | None, str] = {}  # namespace -> last version delivered
        self.last_event_at = time.monotonic()
        """Monotonic time of the last line or list page received; /healthz reads it."""

    @property
    def namespaces(self) -> tuple[str | None, ...]:
        return self._namespaces

    async def run(self) -> None:
        """Run one list+watch loop per namespace until cancelled. Call once."""
        if self._started:
            raise RuntimeError("Reflector.run() called twice")
        self._started = True
        async with asyncio.TaskGroup() as group:
            for namespace in self._namespaces:
                group.create_task(self._loop(namespace), name=f"reflector:{namespace or '*'}")

    async def _loop(self, namespace: str | None) -> None:
        backoff = Backoff(rng=self._rng)
        resource_version: str | None = None
        cause = "initial"
        while True:
            try:
                if resource_version is None and self.watch_list:
                    resource_version = await self._stream_list(namespace, cause)
                    if resource_version is not None:  # listed, then watched to the end
                        backoff.reset()
                        self._metrics.watch_restart("timeout")
                        continue
                if resource_version is None:
                    resource_version = await self._relist(namespace, cause)
                    backoff.reset()
                resource_version = await self._watch(namespace, resource_version)
                backoff.reset()
                self._metrics.watch_restart("timeout")
            except Gone as exc:
                log.info("resourceVersion expired, relisting",
                         extra={"namespace": namespace, "error": exc.message})
                resource_version, cause = None, "expired"
                self._metrics.watch_restart("expired")
            except WatchStalled as exc:
                resource_version = self._resume_from(namespace, resource_version)
                log.warning("watch stream stalled, reopening",
                            extra={"namespace": namespace, "error": exc.message,
                                   "resume_from": resource_version})
                self._metrics.watch_restart("stalled")
                await asyncio.sleep(backoff.next())
            except KubeError as exc:
                delay = backoff.next()
                resource_version = self._resume_from(namespace, resource_version)
                log.warning("list/watch failed, retrying",
                            extra={"namespace": namespace, "error": str(exc),
                                   "retry_in_s": round(delay, 3),
                                   "resume_from": resource_version})
                self._metrics.watch_restart("error")
                if resource_version is None:
                    cause = "error"
                await asyncio.sleep(delay)

    def _resume_from(self, namespace: str | None, started_at: str | None) -> str | None:
        """Where a watch that failed resumes: the last version its stream delivered (None,
        a relist, if the failure came before any watch began, or before a streamed list
        reached its end bookmark)."""
        if started_at is None:
            return self._delivered.get(namespace)
        return self._delivered.get(namespace, started_at)

    async def _relist(self, namespace: str | None, cause: str) -> str:
        """Paginated LIST, then replace the store; returns the list's resourceVersion."""
        self._delivered.pop(namespace, None)
        pods: list[V] = []
        resource_version = ""
        pages = self._source.pages(namespace, label_selector=self._selector,
                                   page_size=self._page_size)
        async with contextlib.aclosing(pages):
            async for page in pages:
                self.last_event_at = time.monotonic()
                for obj in page.items:
                    pod = self._project(obj, "list")
                    if pod is not None:
                        pods.append(self._store.compact(pod))
                resource_version = page.resource_version
        self._replace(namespace, pods, cause, resource_version, "paginated")
        return resource_version

    def _replace(self, namespace: str | None, objects: list[V], cause: str,
                 resource_version: str, how: str) -> None:
        changed = self._store.replace(namespace, objects, now=time.time())
        self._metrics.relist(cause)
        log.info(f"listed {self._source.what}", extra={
            "namespace": namespace, self._source.what: len(objects), "changed": len(changed),
            "cause": cause, "resource_version": resource_version, "list": how})
        for key in changed:
            self._on_change(key, Priority.LIST)

    async def _stream_list(self, namespace: str | None, cause: str) -> str | None:
        """A WatchList stream: the objects up to the end bookmark replace the store, then
        live events as `_watch`. Returns the last resourceVersion seen once the stream
        ends; None if the server will not stream lists (`watch_list` is then off)."""
        self._delivered.pop(namespace, None)
        low, high = self._watch_timeout_s
        initial: dict[str, V] | None = {}
        resource_version = ""
        stream = self._source.watch(
            namespace, label_selector=self._selector, resource_version="",
            timeout_seconds=self._rng.randint(low, high), read_timeout=self._read_timeout_s,
            send_initial_events=True)
        try:
            async with contextlib.aclosing(stream):
                async for event in stream:
                    self.last_event_at = time.monotonic()
                    if initial is None:
                        resource_version = self._apply(namespace, event, resource_version)
                    elif isinstance(event, WatchEvent) and _initial_events_end(event):
                        resource_version = _bookmark_version(event) or resource_version
                        self._delivered[namespace] = resource_version
                        self._replace(namespace, list(initial.values()), cause,
                                      resource_version, "streamed")
                        initial = None
                    else:
                        self._collect(event, initial)
        except KubeError as exc:
            if initial is None or exc.status not in _REFUSED or initial:
                raise
            self._refused(f"the server refused it: {exc}")
            return None
        if initial is not None:
            self._refused("the stream ended before its initial-events-end bookmark")
            return None
        return resource_version

    def _collect(self, event: WatchEvent | MalformedEvent, initial: dict[str, V]) -> None:
        """One event of a streamed list's initial part (ADDED, as the server sends it)."""
        if isinstance(event, MalformedEvent):
            self._skip_malformed(event)
            return
        self._metrics.event(event.type)
        if event.type == "BOOKMARK":
            return
        obj = self._project(event.object, "list")
        if obj is None:
            return
        if event.type == "DELETED":
            initial.pop(obj.key, None)
        else:
            initial[obj.key] = self._store.compact(obj)

    def _skip_malformed(self, event: MalformedEvent) -> None:
        """Count and log an undecodable watch line, which the stream then goes past."""
        self._metrics.malformed("watch_line")
        log.warning("skipping malformed watch line", extra={"error": event.message})

    def _refused(self, why: str) -> None:
        self.watch_list = False
        log.warning(f"streaming the list of {self._source.what} is not available; using "
                    "paginated LISTs from now on", extra={"error": why[:300]})

    async def _watch(self, namespace: str | None, resource_version: str) -> str:
        """Consume one watch stream; returns the last resourceVersion seen (also kept in
        `_delivered`, for a stream that fails)."""
        self._delivered[namespace] = resource_version
        low, high = self._watch_timeout_s
        stream = self._source.watch(
            namespace, label_selector=self._selector, resource_version=resource_version,
            timeout_seconds=self._rng.randint(low, high), read_timeout=self._read_timeout_s)
        async with contextlib.aclosing(stream):
            async for event in stream:
                self.last_event_at = time.monotonic()
                resource_version = self._apply(namespace, event, resource_version)
        return resource_version

    def _apply(self, namespace: str | None, event: WatchEvent | MalformedEvent,
               resource_version: str) -> str:
        """One live watch event into the store (and on to `on_change`); returns the
        resourceVersion the stream has delivered up to (also kept in `_delivered`)."""
        if isinstance(event, MalformedEvent):
            self._skip_malformed(event)
            return resource_version
        self._metrics.event(event.type)
        if event.type == "BOOKMARK":
            rv = _bookmark_version(event)
            if rv:
                resource_version = self._delivered[namespace] = rv
            return resource_version
        pod = self._project(event.object, "watch")
        if pod is None:
            return resource_version
        resource_version = pod.resource_version or resource_version
        self._delivered[namespace] = resource_version
        if event.type == "DELETED":
            changed = self._store.delete(pod, now=time.time())
        elif event.type in ("ADDED", "MODIFIED"):
            changed = self._store.upsert(pod)
        else:
            self._metrics.malformed("event_type")
            log.warning("skipping watch event of unknown type",
                        extra={"event_type": event.type[:40]})
            return resource_version
        if changed:
            self._on_change(pod.key, Priority.LIVE)
        if event.read_at:
            self._metrics.delivered(time.monotonic() - event.read_at)
        return resource_version

    def _project(self, obj: dict[str, object], where: str) -> V | None:
        try:
            return self._source.project(obj)
        except MalformedPod as exc:
            self._metrics.malformed(self._source.what[:-1])  # pod, job, deployment, ...
            meta = obj.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            log.warning(f"skipping malformed {self._source.what[:-1]}", extra={
                "where": where, "pod": str(name)[:253] if name else None, "error": str(exc)})
            return None


_REFUSED = (400, 403, 422)
"""What a server answers a WatchList request it will not serve (422 "sendInitialEvents is
forbidden for watch unless the WatchList feature gate is enabled"), or a proxy."""


def _bookmark_version(event: WatchEvent) -> str | None:
    meta = event.object.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) and rv else None


def _initial_events_end(event: WatchEvent) -> bool:
    """True iff `event` is the bookmark that ends a streamed list's initial events."""
    if event.type != "BOOKMARK":
        return False
    meta = event.object.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    return (isinstance(annotations, dict)
            and annotations.get(INITIAL_EVENTS_END_ANNOTATION) == "true")
