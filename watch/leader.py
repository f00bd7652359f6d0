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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sniffer.kube import Conflict, KubeClient, KubeError, NotFound

log = logging.getLogger(__name__)


class LeadershipLost(Exception):
    """The lease could not be renewed within the renew deadline."""


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Competes for one Lease. Constructing starts nothing; `run()` does, once."""

    def __init__(self, kube: KubeClient, *, name: str, namespace: str, identity: str,
                 lease_duration_s: float = 15.0, renew_deadline_s: float = 10.0,
                 retry_period_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None) -> None:
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
            return await self._create(now_mono)
        except KubeError as exc:
            log.warning("cannot read the lease", extra={"error": str(exc)})
            return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        observed = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if observed != self._observed:
            self._observed, self._observed_at = observed, now_mono
        duration = float(spec.get("leaseDurationSeconds") or self._duration)
        if holder and holder != self.identity and now_mono < self._observed_at + duration:
            if self._renewed_at is not None:
                # Someone else holds it now: stop writing at once, not at the deadline.
                self._renewed_at = None
            return False  # held by someone else and not expired on our clock
        transitions = int(spec.get("leaseTransitions") or 0)
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
