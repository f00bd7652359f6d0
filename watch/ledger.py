"""The run ledger: what the platform last acknowledged for each run the watcher handles.

One module answers every question about a run's platform state, for the handler
(`watch.handler`: what to send), the store's compaction policy (`watch.store`: may a
finished pod be kept as a small record) and the finalizer loop (`watch.finalizer_loop`:
may the finalizer go). Only the handler records; the others only read.

Contract:
* `get(run_id)` is the platform's last answer about the run (`record`ed by the handler
  after each read or write), or None: then the handler asks `from_seed`, and failing
  that reads the run.
* `unknown(run_id)` is True iff the platform's last answer about the run was "no such
  run" (`record_unknown`) and nothing was recorded for it since.
* The seed: `seed()` takes one listing of the platform's non-terminal runs, so that
  relisting thousands of finished pods after a restart reads and sends nothing for
  them. A failed listing is logged and leaves no seed (not an older one, whose states
  would be stale): then every run is read one by one.
* `from_seed(pod)` answers for a run with no acknowledgement from the seed and records
  the answer: the run's listed state if it was open at the listing; else, if `pod` was
  created before the listing by more than `seed_margin_s` (creation times have
  one-second resolution), terminal with the exact state unknown (`Acked.state` None):
  the run is terminal or unknown to the platform, and either way the handler sends
  nothing. Otherwise None: the run may be newer than the listing, so it must be read.
* *Terminal and acknowledged*: `terminal_acknowledged(pod)` is True iff `pod` has a run
  id and either its acknowledgement is terminal, or it has none and `from_seed(pod)`
  would answer terminal: the two apply one rule. It only reads. A pod is *settled*
  (the one meaning of the word in watch/) iff it is finished, carries no Sniffer
  finalizer, and its run is terminal and acknowledged: nothing about it can make
  Sniffer send or patch anything again.
* `forget(run_id)` drops everything known about the run: the handler is through with
  its pod for good (its deletion was handled).
* Single-threaded asyncio use; only `seed()` awaits, and it replaces the seed in one
  assignment after its listing completed.

Invariants:
* a run id is in `_acked` iff the handler recorded the platform's answer about it (or
  the seed's, via `from_seed`) and neither `record_unknown` nor `forget` was called for
  it since;
* a run id is in `_unknown` iff `record_unknown` was its last record and no `forget` or
  `forget_unknown` followed; a run id is never in both `_acked` and `_unknown`;
* `_seed` is None iff no listing succeeded yet or the last one failed; otherwise it
  holds the runs that were open at the last listing, minus those `from_seed` has moved
  into `_acked`;
* `_seed_time` is the clock time the listing in `_seed` started (unused while `_seed`
  is None).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from sniffer.appview import AppView
from sniffer.jobview import JobView
from sniffer.platform_model import PlatformRejected, PlatformUnavailable, Run
from sniffer.podview import PodView
from sniffer.states import WorkloadState

# The seed's log lines keep the logger name they always had (the controller's):
# operators filter on it.
log = logging.getLogger("watch.controller")


@dataclass(frozen=True, slots=True)
class Acked:
    """What the platform last confirmed for a run. `state` None means terminal, exact
    state unknown (seeded: the run was absent from the non-terminal listing)."""

    state: WorkloadState | None
    cancel_requested: bool = False
    pod_uid: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state is None or self.state.is_terminal

    @classmethod
    def of(cls, run: Run) -> Acked:
        return cls(WorkloadState(run.state), run.cancel_requested, run.pod_uid)


class RunLister(Protocol):
    """What the seed needs of the platform client (`sniffer.platform.PlatformClient`)."""

    def list_runs(self, states: Iterable[str]) -> AsyncIterator[Run]: ...


NON_TERMINAL = (WorkloadState.QUEUED.value, WorkloadState.RUNNING.value)
TERMINAL_UNKNOWN = Acked(None)
"""Shared by every run seeded as "not open": a cold start over 100,000 finished pods must
not cost 100,000 identical objects."""
SEED_MARGIN_S = 5.0
"""The default margin: a pod created this long before the seed listing cannot belong to
a run created after it; creationTimestamp has one-second resolution, so keep a margin."""


class RunLedger:
    """The one record of acknowledged run states, and the seed that fills it."""

    def __init__(self, platform: RunLister, *, clock: Callable[[], float],
                 seed_margin_s: float = SEED_MARGIN_S) -> None:
        """`clock` is wall time (epoch seconds): it is compared with pods' creation
        times. `seed_margin_s` is how much older than the listing a pod must be for the
        seed to call its run closed (tests shorten it; see `SEED_MARGIN_S`)."""
        if seed_margin_s < 0:
            raise ValueError(f"seed_margin_s: must be >= 0, got {seed_margin_s!r}")
        self._platform = platform
        self._clock = clock
        self._margin = seed_margin_s
        self._acked: dict[str, Acked] = {}
        self._unknown: set[str] = set()
        self._seed: dict[str, Acked] | None = None
        self._seed_time = 0.0

    def __len__(self) -> int:
        """Runs with an acknowledgement; informational."""
        return len(self._acked)

    # --- reads (anyone) ----------------------------------------------------------------

    def get(self, run_id: str) -> Acked | None:
        return self._acked.get(run_id)

    def unknown(self, run_id: str) -> bool:
        """Was the platform's last answer about the run "no such run"?"""
        return run_id in self._unknown

    def terminal_acknowledged(self, pod: PodView) -> bool:
        """Has the platform acknowledged a terminal state for `pod`'s run (or, by the
        seed's rule, is it terminal or unknown)? Reads only; no await. An entry the seed
        gave `from_seed` has moved to `_acked`, and the handler forgets only runs that
        are terminal or unknown, for which the seed's rule answers rightly too."""
        if pod.run_id is None:
            return False
        acked = self._acked.get(pod.run_id)
        if acked is not None:
            return acked.terminal
        return (self._seed is not None and pod.run_id not in self._seed
                and self._older_than_seed(pod))

    # --- records (the handler) ---------------------------------------------------------

    def record(self, run_id: str, acked: Acked) -> None:
        """The platform just told us `acked` about the run."""
        # no await between the two mutations
        self._acked[run_id] = acked
        self._unknown.discard(run_id)

    def record_unknown(self, run_id: str) -> None:
        """The platform just answered "no such run"."""
        self._acked.pop(run_id, None)
        self._unknown.add(run_id)

    def forget(self, run_id: str) -> None:
        """Drop all the ledger knows of the run: its pod's deletion was handled."""
        self._acked.pop(run_id, None)
        self._unknown.discard(run_id)

    def forget_unknown(self, run_id: str) -> None:
        """Drop only the run's "no such run" answer (its pod's deletion was handled; an
        acknowledgement, which may serve another pod of the run, stays)."""
        self._unknown.discard(run_id)

    async def seed(self) -> None:
        """Take the seed: one listing of the platform's non-terminal runs (see the
        contract). Caller duty: not concurrently with itself."""
        started = self._clock()
        seed: dict[str, Acked] = {}
        try:
            async for run in self._platform.list_runs(NON_TERMINAL):
                seed[run.id] = Acked.of(run)
        except (PlatformUnavailable, PlatformRejected) as exc:
            log.warning("could not list non-terminal runs; runs will be read one by one",
                        extra={"error": str(exc)})
            self._seed = None  # an older seed would hand `from_seed` stale states
            return
        self._seed, self._seed_time = seed, started
        log.info("seeded acknowledgements", extra={"non_terminal_runs": len(seed)})

    def from_seed(self, pod: PodView | JobView | AppView) -> Acked | None:
        """The seed's answer for `pod`'s run, recorded (see the contract), or None: read
        the run. Caller duty: `pod.run_id` is set and has no acknowledgement."""
        assert pod.run_id is not None
        if self._seed is None:
            return None
        # no await between the check and the mutation (moving the entry into `_acked`)
        seeded = self._seed.pop(pod.run_id, None)
        if seeded is None and self._older_than_seed(pod):
            # Not among the non-terminal runs, and older than the listing: the run is
            # terminal (or unknown). Either way there is nothing to send.
            seeded = TERMINAL_UNKNOWN
        if seeded is not None:
            self._acked[pod.run_id] = seeded
        return seeded

    def _older_than_seed(self, pod: PodView | JobView | AppView) -> bool:
        return pod.created_at < self._seed_time - self._margin
