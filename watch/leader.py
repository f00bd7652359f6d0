"""Leader election on a coordination.k8s.io/v1 Lease (client-go's leaderelection, in asyncio).

Contract:
* At most one replica believes it leads at any time, provided clocks advance at
  similar rates: a replica only takes a lease whose record it has seen unchanged for
  `lease_duration_s` on its own monotonic clock, and a leader stops considering itself
  leader once `renew_deadline_s` (< lease_duration_s) passed without a renewal.
* `is_leader` is evaluated at call time against the last successful renewal, so a
  leader that loses contact with the API server stops writing at once, before any
  standby can acquire the lease.
* `run()` acquires, then renews every `retry_period_s`; it raises `LeadershipLost` when a
  renewal deadline passes (the process must then stop writing and exit, as client-go
  controllers do), and returns only if cancelled.
* `release()` (on clean shutdown) clears the holder so a standby takes over at once
  instead of waiting out the lease.
* Writes use the Lease's resourceVersion as a precondition: two candidates racing for
  the same record cannot both win.
* A standby observes the leader (`LeaderObservation`, on the elector's clock): from
  the renewals it sees, `covered_before()` is a time T such that every deletion this
  replica saw before T was also seen by a live leader, which then kept leading for
  `cover_leases` lease durations (or took over after it, with its own cache of it).
  Such a deletion is *covered* (not "settled": in `watch/` that word means a
  finished pod whose run is terminal and acknowledged).
  `on_covered(T)` is called whenever a renewal moves T. The standby's store forgets
  such tombstones; the bet is that a leader that lived that long after a deletion has
  handled it. If it died first with the deletion unhandled, `sniffer reconcile` repairs
  the run.
* `LeaderTombstones(elector)` is that rule as the store's tombstone policy
  (`watch.store.TombstonePolicy`), for the pod, Job and app caches alike.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sniffer.kube import KubeClient
from sniffer.kubedecode import Conflict, KubeError, NotFound

log = logging.getLogger(__name__)


class LeadershipLost(Exception):
    """The lease could not be renewed within the renew deadline."""


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# How many lease durations a leader must be seen renewing after a deletion before a
# standby trusts it to have handled the deletion. A handler is sub-second normally and
# waits out a platform's Retry-After when it must; a few lease durations cover both
# while bounding what a standby keeps.
COVER_LEASES = 4.0


class LeaderObservation:
    """What a standby has seen of another replica leading, on its own monotonic clock.

    Invariants: `_term` is None iff the last record read was free or held by us;
    otherwise `_since <= _last` bound one unbroken streak of that term's renewals: each
    seen within `max_gap_s` of the one before. A longer gap may hide the holder's
    restart (a renewal deadline missed, a new process with an empty cache), so it starts
    a new streak."""

    def __init__(self, *, max_gap_s: float, cover_leases: float = COVER_LEASES) -> None:
        if cover_leases <= 0:
            raise ValueError(f"cover_leases: must be > 0 (got {cover_leases!r})")
        self._max_gap = max_gap_s
        self._cover = cover_leases
        self._term: tuple[object, ...] | None = None
        self._since = self._last = 0.0
        self._duration = 0.0

    def renewed(self, term: tuple[object, ...], lease_duration_s: float, now: float) -> None:
        """Another replica's lease record changed (a renewal or a new term), seen at `now`.
        `term` identifies one holder's tenure: (holder, acquireTime, leaseTransitions)."""
        if term != self._term or now - self._last > self._max_gap:
            self._term, self._since = term, now
        self._last = now
        self._duration = lease_duration_s

    def vacant(self) -> None:
        """The record read was free, or ours: nobody else leads."""
        self._term = None

    def covered_before(self) -> float | None:
        """Deletions seen before the returned time have been seen by a live leader, which
        then kept leading for the cover window (or took over after them, after its own
        standby cache kept them). None until a streak is that long."""
        if self._term is None:
            return None
        window = self._cover * self._duration
        if self._last - self._since < window:
            return None
        return self._last - window


class LeaderElector:
    """Competes for one Lease. Constructing starts nothing; `run()` does, once."""

    def __init__(self, kube: KubeClient, *, name: str, namespace: str, identity: str,
                 lease_duration_s: float = 15.0, renew_deadline_s: float = 10.0,
                 retry_period_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None,
                 on_covered: Callable[[float], None] | None = None,
                 cover_leases: float = COVER_LEASES) -> None:
        """`on_covered(T)`: called while standing by, whenever a renewal of another
        replica's lease moved `observation.covered_before()` (T on `clock`)."""
        if not 0 < retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need retry_period_s < renew_deadline_s < lease_duration_s")
        self._kube = kube
        self._path = (f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")
        self._create_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._name, self._namespace = name, namespace
        self.identity = identity
        self._duration = lease_duration_s
        self._deadline = renew_deadline_s
        self._retry = retry_period_s
        self._clock = clock
        self._on_change = on_change
        self._on_covered = on_covered
        # A leader renews at least every renew deadline or stops; we read every retry
        # period: renewals seen further apart than both may hide a restart.
        self.observation = LeaderObservation(max_gap_s=renew_deadline_s + retry_period_s,
                                             cover_leases=cover_leases)
        self._renewed_at: float | None = None  # monotonic time of our last successful write
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, transitions)
        self._observed_at = 0.0
        self._record: dict[str, Any] | None = None
        self._became_leader = asyncio.Event()
        self._started = False

    @property
    def is_leader(self) -> bool:
        """True iff we hold the lease and renewed it within the renew deadline."""
        return (self._renewed_at is not None
                and self._clock() - self._renewed_at < self._deadline)

    async def wait_leader(self) -> None:
        """Return once this replica has acquired the lease."""
        await self._became_leader.wait()

    async def run(self) -> None:
        if self._started:
            raise RuntimeError("LeaderElector.run() called twice")
        self._started = True
        while True:
            if await self._try_acquire_or_renew():
                break
            await asyncio.sleep(self._retry)
        log.info("became leader", extra={"lease": f"{self._namespace}/{self._name}",
                                         "identity": self.identity})
        self._became_leader.set()
        self._notify(True)
        while True:
            await asyncio.sleep(self._retry)
            if await self._try_acquire_or_renew():
                continue
            if not self.is_leader:
                self._notify(False)
                log.error("leadership lost: could not renew the lease in time",
                          extra={"lease": f"{self._namespace}/{self._name}"})
                raise LeadershipLost(f"lease {self._namespace}/{self._name} not renewed "
                                     f"within {self._deadline:g}s")

    def _notify(self, leading: bool) -> None:
        if self._on_change is not None:
            self._on_change(leading)

    async def _try_acquire_or_renew(self) -> bool:
        # A hung request must not outlive the renew deadline: bound each attempt.
        try:
            async with asyncio.timeout(self._deadline / 2):
                return await self._attempt()
        except TimeoutError:
            log.warning("lease request timed out")
            return False

    async def _attempt(self) -> bool:
        now_mono = self._clock()
        try:
            lease = await self._kube.request_json("GET", self._path)
        except NotFound:
            self.observation.vacant()
            return await self._create(now_mono)
        except KubeError as exc:
            log.warning("cannot read the lease", extra={"error": str(exc)})
            return False
        read = _read_spec(lease, self._duration)
        if read is None:
            # The API server validates Leases, so only a non-conforming server sends one
            # like this; treat it as unreadable: no leadership on it, no crash.
            log.warning("the lease is malformed; treating it as unreadable",
                        extra={"lease": f"{self._namespace}/{self._name}"})
            return False
        spec, holder, duration, transitions = read
        observed = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if observed != self._observed:
            self._observed, self._observed_at = observed, now_mono
            self._observe(spec, holder, duration, now_mono)
        if holder and holder != self.identity and now_mono < self._observed_at + duration:
            if self._renewed_at is not None:
                # Someone else holds it now: stop writing at once, not at the deadline.
                self._renewed_at = None
            return False  # held by someone else and not expired on our clock
        new_spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self._duration),
            "acquireTime": spec.get("acquireTime") if holder == self.identity else _micro_time(),
            "renewTime": _micro_time(),
            "leaseTransitions": transitions if holder == self.identity else transitions + 1,
        }
        lease["spec"] = new_spec
        try:
            await self._kube.request_json("PUT", self._path, body=lease)
        except Conflict:
            return False  # someone else wrote first; re-read next round
        except KubeError as exc:
            log.warning("cannot renew the lease", extra={"error": str(exc)})
            return False
        self._renewed_at = now_mono
        return True

    def _observe(self, spec: dict[str, Any], holder: str, duration: float,
                 now_mono: float) -> None:
        if not holder or holder == self.identity:
            self.observation.vacant()
            return
        term = (holder, spec.get("acquireTime"), spec.get("leaseTransitions"))
        self.observation.renewed(term, duration, now_mono)
        covered = self.observation.covered_before()
        if covered is not None and self._on_covered is not None:
            self._on_covered(covered)

    async def _create(self, now_mono: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": {"holderIdentity": self.identity,
                     "leaseDurationSeconds": int(self._duration),
                     "acquireTime": _micro_time(), "renewTime": _micro_time(),
                     "leaseTransitions": 0},
        }
        try:
            await self._kube.request_json("POST", self._create_path, body=body)
        except KubeError as exc:  # includes Conflict: another replica created it first
            log.info("could not create the lease", extra={"error": str(exc)})
            return False
        self._renewed_at = now_mono
        return True

    async def release(self) -> None:
        """Give the lease up (if held) so a standby acquires it without waiting."""
        if not self.is_leader:
            return
        self._renewed_at = None
        self._notify(False)
        try:
            lease = await self._kube.request_json("GET", self._path)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update({"holderIdentity": None, "leaseDurationSeconds": 1,
                         "renewTime": _micro_time()})
            lease["spec"] = spec
            await self._kube.request_json("PUT", self._path, body=lease)
            log.info("released the lease", extra={"identity": self.identity})
        except KubeError as exc:
            log.warning("could not release the lease; the standby waits it out",
                        extra={"error": str(exc)})


def _read_spec(lease: dict[str, Any], default_duration: float,
               ) -> tuple[dict[str, Any], str, float, int] | None:
    """(spec, holder, duration, transitions) of a Lease, or None if any is malformed."""
    spec = lease.get("spec") or {}
    if not isinstance(spec, dict):
        return None
    holder = spec.get("holderIdentity") or ""
    try:
        duration = float(spec.get("leaseDurationSeconds") or default_duration)
        transitions = int(spec.get("leaseTransitions") or 0)
    except (TypeError, ValueError):
        return None
    if not isinstance(holder, str) or not duration > 0:
        return None
    return spec, holder, duration, transitions


class LeaderTombstones:
    """The store's tombstone policy (`watch.store.TombstonePolicy`) from the elector.

    While this replica does not lead it keeps no tombstone of a pod that carried the
    finalizer (the leader added it and releases it only once the outcome is
    acknowledged), and lets go of the tombstones recorded before the live leader's
    observed streak covers them (`LeaderObservation.covered_before`): its memory is
    bounded by the deletions of the last few lease durations. While it leads it keeps
    every tombstone until its handler is through with it.

    Invariant: `_before` is the latest time the observation has answered (never moves
    back: a tombstone let go stays gone)."""

    def __init__(self, elector: LeaderElector) -> None:
        self._elector = elector
        self._before = -math.inf

    def keep_finalized(self) -> bool:
        return self._elector.is_leader

    def seen_before(self) -> float:
        if self._elector.is_leader:
            return -math.inf
        seen = self._elector.observation.covered_before()
        if seen is not None and seen > self._before:
            self._before = seen
        return self._before
