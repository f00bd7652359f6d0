"""The pod cache: the latest projection of every tracked pod, keyed ``namespace/name``.

Contract:
* `get(key)` returns the newest `PodView` the reflector delivered, or, for a pod that
  was deleted, its last known view (a *tombstone*) until the handler calls
  `forget_tombstone`: a deletion never loses the pod's final state before it was handled.
* `replace(namespace, pods)` (a relist) makes the cache equal to the list for that
  namespace; pods that vanished become tombstones, so deletions during a watch gap are
  seen. It returns every key whose content changed, for the caller to enqueue.
* Updates are applied in the order the reflector delivers them; an older
  resourceVersion never overwrites a newer one (a relist can race a late watch event).
* The one piece of history kept: a pod once seen deleting while still Pending or
  Running stays marked `deleted_while_active`, so a later terminal phase (the kubelet
  stopping its containers) is known to be the deletion's echo even when the handler
  only looks at the final view.
* A standby (`keep_tombstones` False) keeps no tombstone of a pod that carried
  Sniffer's finalizer, and forgets the others once a live leader has seen their
  deletions (`forget_settled_tombstones`, driven by `watch.leader`'s observation of the
  lease): its memory is bounded by the deletions of the last few lease durations.
* Readiness: `wait_synced()` returns once every watched namespace has been listed once.
* Single-threaded asyncio use only; no method awaits, so each call is atomic.

Invariants:
* a key is in `_pods` iff the pod exists in the last list or was added/modified since;
* a key is in `_tombstones` iff it was deleted, its deletion is not handled yet,
  `keep_tombstones` was set or the pod never carried Sniffer's finalizer, and no
  `forget_settled_tombstones` on a standby covered the time it was recorded;
* a key is in `_deleted_at` iff it is in `_tombstones` (the clock time it was recorded);
* a key is in `_finalized` only if it is in `_pods`, carrying that uid;
* a key is never in both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Collection, Iterable, Iterator

from sniffer.podview import OUTCOME_FINALIZER, PodView


def _deleted_while_active(pod: PodView) -> bool:
    return pod.deleted_while_active or (
        pod.deletion_timestamp is not None and pod.phase in ("Pending", "Running"))


def _rv(pod: PodView) -> int:
    try:
        return int(pod.resource_version)
    except ValueError:
        return -1


class PodStore:
    """The watcher's cache of tracked pods."""

    def __init__(self, namespaces: Collection[str | None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`clock` stamps tombstones; it must be the leader elector's clock."""
        self._clock = clock
        self._pods: dict[str, PodView] = {}
        self._tombstones: dict[str, PodView] = {}
        self._deleted_at: dict[str, float] = {}
        self._unsynced: set[str | None] = set(namespaces)
        self._synced = asyncio.Event()
        if not self._unsynced:
            self._synced.set()
        self.keep_tombstones = True
        """False on a standby: it keeps no tombstone of a pod that carried Sniffer's
        finalizer (the leader added it and released it only once the outcome was
        acknowledged), so it does not grow with every pod the cluster deletes. A pod that
        never carried it (deleted before a leader saw it, as while the leader is dead and
        its lease not yet expired) keeps its tombstone until a live leader has seen the
        deletion (`forget_settled_tombstones`): a standby that takes over before then
        must still report it."""
        self._finalized: dict[str, str] = {}
        """key → uid of live pods seen carrying Sniffer's finalizer."""

    # --- reads -------------------------------------------------------------------------

    def get(self, key: str) -> PodView | None:
        """The live pod, else its tombstone, else None."""
        return self._pods.get(key) or self._tombstones.get(key)

    def is_deleted(self, key: str) -> bool:
        return key in self._tombstones

    def __len__(self) -> int:
        """Live pods cached (tombstones excluded); informational."""
        return len(self._pods)

    def __iter__(self) -> Iterator[PodView]:
        return iter(list(self._pods.values()))

    def all_keys(self) -> list[str]:
        """Live and tombstoned keys: everything a handler may still need to look at."""
        return [*self._pods, *self._tombstones]

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    # --- writes from the reflector ------------------------------------------------------

    def upsert(self, pod: PodView) -> bool:
        """Store `pod`; True if it changed anything (a newer resourceVersion)."""
        key = pod.key
        current = self._pods.get(key)
        if current is not None and current.uid == pod.uid:
            if _rv(current) >= _rv(pod) >= 0:
                return False
            if _deleted_while_active(current) and not pod.deleted_while_active:
                pod = dataclasses.replace(pod, deleted_while_active=True)
        if OUTCOME_FINALIZER in pod.finalizers:
            self._finalized[key] = pod.uid
        elif self._finalized.get(key) not in (None, pod.uid):
            del self._finalized[key]  # a new pod took the name
        self._pods[key] = pod
        if self._tombstones.pop(key, None) is not None:
            del self._deleted_at[key]
        return True

    def delete(self, pod: PodView, *, now: float) -> bool:
        """Record a deletion; the last view becomes a tombstone. True if it was cached."""
        key = pod.key
        cached = self._pods.pop(key, None)
        if cached is not None and cached.uid != pod.uid:
            # The DELETED event is for an older incarnation; keep the live pod.
            self._pods[key] = cached
            return False
        finalized = self._finalized.pop(key, None) == pod.uid
        if not self.keep_tombstones and finalized:
            return cached is not None
        last = pod if cached is None or _rv(pod) >= _rv(cached) else cached
        if cached is not None and _deleted_while_active(cached) and not last.deleted_while_active:
            # The DELETED event's object is a fresh projection: keep the history we saw.
            last = dataclasses.replace(last, deleted_while_active=True)
        if last.deletion_timestamp is None:
            last = dataclasses.replace(last, deletion_timestamp=now)
        self._tombstones[key] = last
        self._deleted_at[key] = self._clock()
        return True

    def replace(self, namespace: str | None, pods: Iterable[PodView], *, now: float) -> list[str]:
        """Make the cache equal to a fresh LIST of `namespace` (None: all namespaces).

        Returns the keys that changed: new or updated pods, and vanished pods (which
        become tombstones with their last known view)."""
        changed: list[str] = []
        seen: set[str] = set()
        for pod in pods:
            seen.add(pod.key)
            if self.upsert(pod):
                changed.append(pod.key)
        prefix = None if namespace is None else namespace + "/"
        for key in [k for k in self._pods if k not in seen
                    and (prefix is None or k.startswith(prefix))]:
            self.delete(self._pods[key], now=now)
            changed.append(key)
        self.mark_synced(namespace)
        return changed

    def forget_tombstone(self, key: str, pod: PodView) -> None:
        """The handler finished with deleted `pod`; drop its tombstone if unchanged."""
        if self._tombstones.get(key) is pod:
            del self._tombstones[key]
            del self._deleted_at[key]

    def forget_settled_tombstones(self, before: float) -> int:
        """A standby's housekeeping: drop the tombstones recorded before `before` (on the
        store's clock), whose deletions a live leader has seen since. Returns how many.
        Does nothing while `keep_tombstones` is set: a leader's handler forgets its own."""
        if self.keep_tombstones:
            return 0
        settled = [key for key, at in self._deleted_at.items() if at < before]
        for key in settled:
            del self._tombstones[key]
            del self._deleted_at[key]
        return len(settled)

    # --- readiness ------------------------------------------------------------------------

    def mark_synced(self, namespace: str | None) -> None:
        self._unsynced.discard(namespace)
        if not self._unsynced:
            self._synced.set()

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        """Return once every namespace has been listed once (client-go's HasSynced)."""
        await self._synced.wait()
