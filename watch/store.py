"""The object cache: the latest projection of every tracked pod (or Job), keyed
``namespace/name``.

A plain cache, as client-go's Store: it knows nothing of handlers and calls nothing back.
`ObjectStore` is the cache of any kind of projection (`Versioned`: a key, a uid, a
resourceVersion, finalizers, a deletion timestamp); `PodStore` is the pod cache, which
adds the compaction policy (which finished pods may be kept as small records); the Job
cache (`JobStore`) is an `ObjectStore` of `sniffer.jobview.JobView`s. Both take the
tombstone policy (which deletions it remembers). Everything below holds for every kind;
"pod" reads "object" where the kind is not a pod (settled records and
`deleted_while_active` are pods' only).

Contract:
* Writers: only the reflector writes the cache's content (`upsert`, `delete`,
  `replace`). The one other call that changes it is the handler's `forget_tombstone`,
  which consumes a deletion it has handled (as client-go's DeltaFIFO pops what its
  consumer processed). Everything else reads.
* `get(key)` returns the newest `PodView` the reflector delivered (or its `SettledPod`,
  below), or, for a pod that was deleted, its last known one (a *tombstone*) until the
  handler calls `forget_tombstone` or the tombstone policy lets it go: a deletion never
  loses the pod's final state before it was handled.
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
* Tombstones (`TombstonePolicy`): while `keep_finalized()` is False (a standby) no
  tombstone is kept of a pod that carried Sniffer's finalizer (the leader added it and
  releases it only once the outcome is acknowledged); tombstones recorded before
  `seen_before()` (a live leader has seen those deletions) are dropped whenever the
  cache is next read or written. The default keeps every tombstone until handled.
* A *settled* pod (finished, carrying no Sniffer finalizer, its run terminal and
  acknowledged: `CompactionPolicy.terminal_acknowledged`, the run ledger's rule) is
  cached as a `SettledPod` (~1/3 of a `PodView`'s memory) instead of its view: nothing
  about it can make Sniffer send or patch anything. A pod is judged when it is written
  (`upsert`, `replace`; the reflector may `compact` a LIST page by page, so that a LIST
  never holds the full views of settled pods) and again when `get` reads it (a view
  whose run was acknowledged terminal since is compacted then). A newer version of the
  pod replaces the record, judged afresh. Readers treat a record as "acknowledged,
  nothing to do"; a new leader enqueuing every cached pod does too, since what the
  platform acknowledged outlives any leader.
* Readiness: `wait_synced()` returns once every watched namespace has been listed once.
* Single-threaded asyncio use only; no method awaits, so each call is atomic.

Invariants:
* a key is in `_pods` iff the pod exists in the last list or was added/modified since;
* a key is in `_tombstones` iff it was deleted, its deletion is not handled yet, the
  tombstone policy kept it when it was recorded and no `seen_before()` read since
  covered the time it was recorded;
* a key is in `_deleted_at` iff it is in `_tombstones`; `_deleted_at` is in recording
  order, which is clock order (so expiry pops from its front);
* a key is in `_finalized` only if it is in `_pods`, carrying that uid;
* a key is never in both `_pods` and `_tombstones`;
* `_pods[key]` (or a tombstone) is a `SettledPod` only if the version cached was
  finished and carried no Sniffer finalizer, and the compaction policy called its run
  terminal and acknowledged when it was written or read; every later version
  replaced it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from sniffer.appview import AppView
from sniffer.jobview import JobView
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


class Versioned(Protocol):
    """What the cache reads of every projection it holds."""

    @property
    def key(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def resource_version(self) -> str: ...
    @property
    def finalizers(self) -> tuple[str, ...]: ...
    @property
    def deletion_timestamp(self) -> float | None: ...


V = TypeVar("V", bound=Versioned)


class CompactionPolicy(Protocol):
    """Whose runs are over (`watch.ledger.RunLedger`)."""

    def terminal_acknowledged(self, pod: PodView) -> bool:
        """True only if the platform has acknowledged a terminal state for the run of
        `pod` (or, by the seed's rule, the run is terminal or unknown: the handler sends
        nothing for either), so no version of `pod` can make Sniffer send an update."""
        ...


class TombstonePolicy(Protocol):
    """Which deletions the cache remembers (`watch.app` answers from the elector)."""

    def keep_finalized(self) -> bool:
        """False on a standby: keep no tombstone of a pod that carried the finalizer."""
        ...

    def seen_before(self) -> float:
        """Tombstones recorded before this time (the store's clock) may go: a live leader
        has seen those deletions. ``-inf`` while none may."""
        ...


class KeepTombstones:
    """The default tombstone policy: every tombstone stays until its deletion is
    handled (a process that always leads)."""

    def keep_finalized(self) -> bool:
        return True

    def seen_before(self) -> float:
        return -math.inf


def _deleted_while_active(pod: Versioned) -> bool:
    # Pods' history only: a Job view has neither the flag nor a phase.
    return bool(getattr(pod, "deleted_while_active", False)) or (
        pod.deletion_timestamp is not None
        and getattr(pod, "phase", None) in ("Pending", "Running"))


def _rv(pod: Versioned) -> int:
    if isinstance(pod, SettledPod):
        return pod.rv
    try:
        return int(pod.resource_version)
    except ValueError:
        return -1


class ObjectStore(Generic[V]):
    """The watcher's cache of one kind of tracked object."""

    def __init__(self, namespaces: Collection[str | None], *,
                 tombstones: TombstonePolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`tombstones` None: `KeepTombstones`. `clock` stamps tombstones; it must be the
        clock of the tombstone policy's `seen_before` (the leader elector's)."""
        self._keeping: TombstonePolicy = tombstones or KeepTombstones()
        self._clock = clock
        self._pods: dict[str, V] = {}
        self._tombstones: dict[str, V] = {}
        self._deleted_at: dict[str, float] = {}
        self._unsynced: set[str | None] = set(namespaces)
        self._synced = asyncio.Event()
        if not self._unsynced:
            self._synced.set()
        self._finalized: dict[str, str] = {}
        """key → uid of live pods seen carrying Sniffer's finalizer."""

    # --- reads -------------------------------------------------------------------------

    def get(self, key: str) -> V | None:
        """The live object (compacted if it is settled by now), else its tombstone, else
        None."""
        pod = self._pods.get(key)
        if pod is None:
            self._expire()
            return self._tombstones.get(key)
        compacted = self.compact(pod)
        if compacted is not pod:
            # no await between the read and the replacement
            self._pods[key] = pod = compacted
        return pod

    def is_deleted(self, key: str) -> bool:
        self._expire()
        return key in self._tombstones

    def __len__(self) -> int:
        """Live pods cached (tombstones excluded); informational."""
        return len(self._pods)

    def __iter__(self) -> Iterator[V]:
        return iter(list(self._pods.values()))

    def all_keys(self) -> list[str]:
        """Live and tombstoned keys: everything a handler may still need to look at."""
        self._expire()
        return [*self._pods, *self._tombstones]

    @property
    def tombstones(self) -> int:
        self._expire()
        return len(self._tombstones)

    def compact(self, pod: V) -> V:
        """`pod`, or the smaller record the cache keeps of it (`PodStore.compact`).
        Changes nothing in the cache."""
        return pod

    # --- writes from the reflector ------------------------------------------------------

    def upsert(self, pod: V) -> bool:
        """Store `pod` (compacted if settled); True if it changed anything (a newer
        resourceVersion)."""
        key = pod.key
        current = self._pods.get(key)
        if current is not None and current.uid == pod.uid:
            if _rv(current) >= _rv(pod) >= 0:
                return False
            if _deleted_while_active(current) and not getattr(pod, "deleted_while_active", False):
                pod = dataclasses.replace(pod, deleted_while_active=True)  # type: ignore[type-var]
        pod = self.compact(pod)
        if OUTCOME_FINALIZER in pod.finalizers:
            self._finalized[key] = pod.uid
        elif self._finalized.get(key) not in (None, pod.uid):
            del self._finalized[key]  # a new pod took the name
        self._pods[key] = pod
        if self._tombstones.pop(key, None) is not None:
            del self._deleted_at[key]
        return True

    def delete(self, pod: V, *, now: float, unseen: bool = False) -> bool:
        """Record a deletion; the last view becomes a tombstone. True if it was cached.
        `unseen`: a relist found the pod gone, so no event showed how it ended."""
        key = pod.key
        cached = self._pods.pop(key, None)
        if cached is not None and cached.uid != pod.uid:
            # The DELETED event is for an older incarnation; keep the live pod.
            self._pods[key] = cached
            return False
        finalized = self._finalized.pop(key, None) == pod.uid
        if finalized and not self._keeping.keep_finalized():
            return cached is not None
        last = pod if cached is None or _rv(pod) >= _rv(cached) else cached
        if (cached is not None and _deleted_while_active(cached)
                and not getattr(last, "deleted_while_active", False)):
            # The DELETED event's object is a fresh projection: keep the history we saw.
            last = dataclasses.replace(last, deleted_while_active=True)  # type: ignore[type-var]
        if last.deletion_timestamp is None:
            # No deletion was seen: its time is now's; with `unseen`, so is the fact that
            # the view is not the pod's end (`sniffer.states` then judges it lost).
            last = (dataclasses.replace(last, deletion_timestamp=now,
                                        final_state_unknown=True)
                    if unseen and isinstance(last, PodView | JobView | AppView)
                    else dataclasses.replace(last, deletion_timestamp=now))  # type: ignore[type-var]
        self._tombstones[key] = last
        self._deleted_at.pop(key, None)  # re-inserted at the end: recording order
        self._deleted_at[key] = self._clock()
        self._expire()
        return True

    def replace(self, namespace: str | None, pods: Iterable[V], *, now: float) -> list[str]:
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

    # --- the consumer's one call ------------------------------------------------------------

    def forget_tombstone(self, key: str, pod: V) -> None:
        """The handler finished with deleted `pod`; drop its tombstone if unchanged."""
        if self._tombstones.get(key) is pod:
            del self._tombstones[key]
            del self._deleted_at[key]

    def _expire(self) -> None:
        """Drop the tombstones the policy lets go (recorded before `seen_before()`)."""
        if not self._deleted_at:
            return
        before = self._keeping.seen_before()
        while self._deleted_at:
            key, at = next(iter(self._deleted_at.items()))
            if at >= before:
                return
            del self._deleted_at[key]
            del self._tombstones[key]

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


class PodStore(ObjectStore[Cached]):
    """The watcher's cache of tracked pods: an `ObjectStore` that keeps settled pods as
    `SettledPod` records (the compaction policy)."""

    def __init__(self, namespaces: Collection[str | None], *,
                 compaction: CompactionPolicy | None = None,
                 tombstones: TombstonePolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`compaction` None: no pod is settled, every pod is cached as its full view;
        the rest as `ObjectStore`."""
        super().__init__(namespaces, tombstones=tombstones, clock=clock)
        self._compaction = compaction

    @property
    def settled(self) -> int:
        """Live pods cached as `SettledPod` records; informational (a linear count)."""
        return sum(1 for pod in self._pods.values() if isinstance(pod, SettledPod))

    def compact(self, pod: Cached) -> Cached:
        """`pod`'s `SettledPod` if it is settled (see the contract), else `pod`. Changes
        nothing in the cache: the reflector may apply it to each pod it lists before
        `replace`, and `upsert` applies it anyway."""
        policy = self._compaction
        if (isinstance(pod, SettledPod) or policy is None or pod.run_id is None
                or pod.phase not in FINISHED or OUTCOME_FINALIZER in pod.finalizers
                or not policy.terminal_acknowledged(pod)):
            return pod
        return SettledPod(key=pod.key, uid=pod.uid, rv=_rv(pod), run_id=pod.run_id,
                          phase=pod.phase, finalizers=pod.finalizers,
                          deletion_timestamp=pod.deletion_timestamp,
                          deleted_while_active=_deleted_while_active(pod))


JobStore = ObjectStore[JobView]
"""The watcher's cache of tracked Jobs (no compaction: a cached Job is its view)."""
