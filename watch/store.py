"""The pod cache: the latest projection of every tracked pod, keyed ``namespace/name``.

Contract:
* `get(key)` returns the newest `PodView` the reflector delivered (or its `SettledPod`,
  below), or, for a pod that was deleted, its last known one (a *tombstone*) until the
  handler calls
  `forget_tombstone`: a deletion never loses the pod's final state before it was handled.
* `replace(namespace, pods)` (a relist) makes the cache equal to the list for that
  namespace; pods that vanished become tombstones, so deletions during a watch gap are
  seen. A vanished pod whose last view was not deleting is marked
  `final_state_unknown`: its end was never seen. It returns every key whose content
  changed, for the caller to enqueue.
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
* A *settled* pod is cached as a `SettledPod` (~1/3 of a `PodView`'s memory) instead of
  its view: finished (Succeeded/Failed), carrying no Sniffer finalizer, and its run's
  terminal state acknowledged by the platform (`acknowledgements.settled`, the
  controller's knowledge). Nothing about such a pod can make Sniffer send or patch
  anything: the platform's terminal state never changes, and there is no finalizer to
  release. `upsert` and `replace` judge each pod as it arrives (`compact`; a lister may
  apply it page by page, so that a LIST never holds the full views of settled pods),
  and `settle` compacts a view once the handler had its terminal state acknowledged.
  A newer version of the pod (any watch event or relist with a newer resourceVersion)
  replaces the record, judged afresh (its view, or a record again if still settled).
  Readers treat a record as "acknowledged, nothing to do"; a new leader enqueuing every
  cached pod does too, since what the platform acknowledged outlives any leader.
* Readiness: `wait_synced()` returns once every watched namespace has been listed once.
* Single-threaded asyncio use only; no method awaits, so each call is atomic.

Invariants:
* a key is in `_pods` iff the pod exists in the last list or was added/modified since;
* a key is in `_tombstones` iff it was deleted, its deletion is not handled yet,
  `keep_tombstones` was set or the pod never carried Sniffer's finalizer, and no
  `forget_settled_tombstones` on a standby covered the time it was recorded;
* a key is in `_deleted_at` iff it is in `_tombstones` (the clock time it was recorded);
* a key is in `_finalized` only if it is in `_pods`, carrying that uid;
* a key is never in both;
* `_pods[key]` (or a tombstone) is a `SettledPod` iff the version cached was finished and
  carried no Sniffer finalizer, and `acknowledgements.settled` held for it when it
  arrived (`upsert`, `replace`) or when the handler asked (`settle`); every later version
  replaced it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from sniffer.podview import OUTCOME_FINALIZER, PodView

FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class SettledPod:
    """What the cache keeps of a settled pod (see the contract): enough to order and
    compare versions (`uid`, `rv`), to keep its deletion history, and to answer the
    readers that look at every cached pod (`run_id`, `phase`, `finalizers`). The
    strings are the view's own objects (the key is the store's key), so a record costs
    its slots plus the uid, run id and an int."""

    key: str
    uid: str
    rv: int
    """metadata.resourceVersion as an int (-1 if it was not one)."""
    run_id: str
    phase: str
    finalizers: tuple[str, ...]
    """Never Sniffer's: a pod carrying it is not settled."""
    deletion_timestamp: float | None
    deleted_while_active: bool

    @property
    def resource_version(self) -> str:
        return str(self.rv) if self.rv >= 0 else ""


Cached = PodView | SettledPod
"""What the cache holds for one pod: its view, or the record of a settled pod."""


class Acknowledgements(Protocol):
    """What the store asks the controller (`watch.controller.Controller`)."""

    def settled(self, pod: PodView) -> bool:
        """True only if the platform has acknowledged a terminal state for the run of
        `pod` (or, by the seed's rule, the run is terminal or unknown: the handler sends
        nothing for either), so no version of `pod` can make Sniffer send an update."""
        ...


def _deleted_while_active(pod: Cached) -> bool:
    return pod.deleted_while_active or (
        pod.deletion_timestamp is not None and pod.phase in ("Pending", "Running"))


def _rv(pod: Cached) -> int:
    if isinstance(pod, SettledPod):
        return pod.rv
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
        self._pods: dict[str, Cached] = {}
        self._tombstones: dict[str, Cached] = {}
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
        self.acknowledgements: Acknowledgements | None = None
        """Who judges whether a pod is settled (the controller); None: no pod is, every
        pod is cached as its full view."""

    # --- reads -------------------------------------------------------------------------

    def get(self, key: str) -> Cached | None:
        """The live pod, else its tombstone, else None."""
        return self._pods.get(key) or self._tombstones.get(key)

    def is_deleted(self, key: str) -> bool:
        return key in self._tombstones

    def __len__(self) -> int:
        """Live pods cached (tombstones excluded); informational."""
        return len(self._pods)

    def __iter__(self) -> Iterator[Cached]:
        return iter(list(self._pods.values()))

    def all_keys(self) -> list[str]:
        """Live and tombstoned keys: everything a handler may still need to look at."""
        return [*self._pods, *self._tombstones]

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def settled(self) -> int:
        """Live pods cached as `SettledPod` records; informational (a linear count)."""
        return sum(1 for pod in self._pods.values() if isinstance(pod, SettledPod))

    def compact(self, pod: Cached) -> Cached:
        """`pod`'s `SettledPod` if it is settled (see the contract), else `pod`. Changes
        nothing in the cache: the reflector may apply it to each pod it lists before
        `replace`, and `upsert` applies it anyway."""
        acks = self.acknowledgements
        if (isinstance(pod, SettledPod) or acks is None or pod.run_id is None
                or pod.phase not in FINISHED or OUTCOME_FINALIZER in pod.finalizers
                or not acks.settled(pod)):
            return pod
        return SettledPod(key=pod.key, uid=pod.uid, rv=_rv(pod), run_id=pod.run_id,
                          phase=pod.phase, finalizers=pod.finalizers,
                          deletion_timestamp=pod.deletion_timestamp,
                          deleted_while_active=_deleted_while_active(pod))

    # --- writes from the reflector ------------------------------------------------------

    def upsert(self, pod: Cached) -> bool:
        """Store `pod` (compacted if settled); True if it changed anything (a newer
        resourceVersion)."""
        key = pod.key
        current = self._pods.get(key)
        if current is not None and current.uid == pod.uid:
            if _rv(current) >= _rv(pod) >= 0:
                return False
            if _deleted_while_active(current) and not pod.deleted_while_active:
                pod = dataclasses.replace(pod, deleted_while_active=True)
        pod = self.compact(pod)
        if OUTCOME_FINALIZER in pod.finalizers:
            self._finalized[key] = pod.uid
        elif self._finalized.get(key) not in (None, pod.uid):
            del self._finalized[key]  # a new pod took the name
        self._pods[key] = pod
        if self._tombstones.pop(key, None) is not None:
            del self._deleted_at[key]
        return True

    def delete(self, pod: Cached, *, now: float, unseen: bool = False) -> bool:
        """Record a deletion; the last view becomes a tombstone. True if it was cached.
        `unseen`: a relist found the pod gone, so no event showed how it ended."""
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
            # No deletion was seen: its time is now's; with `unseen`, so is the fact that
            # the view is not the pod's end (`sniffer.states` then judges it lost).
            last = (dataclasses.replace(last, deletion_timestamp=now, final_state_unknown=True)
                    if unseen and isinstance(last, PodView)
                    else dataclasses.replace(last, deletion_timestamp=now))
        self._tombstones[key] = last
        self._deleted_at[key] = self._clock()
        return True

    def replace(self, namespace: str | None, pods: Iterable[Cached], *, now: float) -> list[str]:
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
            self.delete(self._pods[key], now=now, unseen=True)
            changed.append(key)
        self.mark_synced(namespace)
        return changed

    def settle(self, key: str, pod: PodView) -> bool:
        """The handler had the platform acknowledge a terminal state for `pod`'s run:
        keep the record instead of the view if `pod` is still the cached version and it
        is settled (finished, no Sniffer finalizer: a release just sent shows in the next
        version, which `upsert` compacts). True if compacted. No await between the
        identity check and the replacement: a newer version is never overwritten."""
        if self._pods.get(key) is not pod:
            return False
        compacted = self.compact(pod)
        if compacted is pod:
            return False
        self._pods[key] = compacted
        return True

    def forget_tombstone(self, key: str, pod: Cached) -> None:
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
