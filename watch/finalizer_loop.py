"""The finalizer loop: Sniffer's finalizer put on and taken off pods, off the platform path.

Contract:
* Level-triggered on the cache. `enqueue(pod)` only names a key; a finalizer worker
  decides from the pod cached for that key *when it takes the key* and from what the
  platform has acknowledged *then* (the run ledger, `RunKnowledge`), never from what
  an earlier version asked for. Whoever learns something that may move a finalizer
  (the platform handler, after each acknowledgement or read) enqueues the key; a pod's
  every change reaches the handler, so a restart or a new leader, whose handler
  handles every cached pod, re-derives every finalizer.
* Its own work queue of pod keys and its own worker pool (`watch.workers`, sized by
  `finalizers.workers`): the platform
  workers never await a finalizer patch, so a slow API server delays finalizer patches,
  not platform updates. A key is never patched by two workers at once (the queue is
  stingy), so an add and a release of one pod never race.
* The decision (`decide`, pure) for a cached `PodView` that is live (not a tombstone):
  - RELEASE iff it carries Sniffer's finalizer and: it is untracked (no run id); or a
    watched controller's path reports its run (`controller_owned`): a Job's attempt (the
    finalizer is on the Job, `watch.jobhandler`) or a watched app controller's replica
    (the finalizer is on the controller, `watch.apphandler`: a finalizer on a replica
    would only hold a drain up); or the
    platform does not know its run (orphan); or its run is bound to another pod uid
    (foreign); or its run is terminal and acknowledged
    (`RunKnowledge.terminal_acknowledged`, which includes the seed's rule).
  - ADD iff finalizer mode is on, it does not carry the finalizer, has no deletion
    timestamp, is tracked, its run is acknowledged and not terminal and not bound to
    another pod, and its derived state is derivable and not terminal (a terminal one is
    about to be sent, then released).
  - NOTHING otherwise: uncached keys, tombstones, settled records (they never carry the
    finalizer), and runs whose state is not known yet (the handler enqueues the key
    again once it knows).
* The central invariant: the finalizer of a pod whose run is known to the platform and
  bound to it is never released before the platform acknowledged a terminal state for
  that run: RELEASE reads an acknowledgement that is recorded only after the platform
  answered (or the seed listing showed the run closed).
* Writes only while `is_leader()` is true, checked right before each patch; otherwise
  the key is retried with backoff.
* Outcomes go through the pool's `watch.workers.OutcomeMap` with no retry limit: a patch that
  failed (a Kubernetes API error, anything unexpected) is retried with the queue's
  per-key exponential backoff and token bucket until it succeeds or the key's next
  decision needs no patch. A release given up would leave a pod stuck Terminating.
* Each patch sent is counted (`finalizer("added" | "removed")`); a release is logged at
  debug ("released finalizer", with the key and why) under the controller's logger.
* `run()` runs the workers until the queue is shut down and every worker finished its
  key. Shutdown order (watch.app): the platform queue drains first, then this queue, so a
  release enqueued by the last acknowledgements still goes out if time allows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from sniffer.jobs import owned_by_job
from sniffer.nullmetrics import NULL_METRICS
from sniffer.podview import OUTCOME_FINALIZER, PodView
from sniffer.states import StatePolicy, Underivable, derive
from watch.finalizer_patch import Finalizers
from watch.ledger import Acked
from watch.store import Cached, PodStore
from watch.workers import DONE, Outcome, WorkerPool
from watch.workqueue import WorkQueue

# The finalizer's log lines keep the logger name they always had (the controller's).
log = logging.getLogger("watch.controller")


class Action(Enum):
    NOTHING = "nothing"
    ADD = "add"
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    why: str
    """Why (for the log line): untracked, orphan, foreign, acknowledged, live, ..."""


NOTHING = Decision(Action.NOTHING, "")
ADD = Decision(Action.ADD, "live")


def decide(pod: Cached | None, *, deleted: bool, acked: Acked | None,
           terminal_acknowledged: bool, unknown: bool, enabled: bool, now: float,
           policy: StatePolicy, controller_owned: bool = False) -> Decision:
    """Where the finalizer of `pod` belongs (see the contract). Pure.

    `acked` is the platform's last answer about the pod's run (None: none yet or the run
    is unknown), `terminal_acknowledged` whether it acknowledged a terminal state (the
    seed's rule included), `unknown` whether the platform's last answer was "no such run", `enabled`
    whether finalizer mode is on, `now` and `policy` what `sniffer.states.derive` needs,
    `controller_owned` whether a controller's path reports the pod's run (a Job's attempt
    while Jobs are watched, a watched app's replica)."""
    if not isinstance(pod, PodView) or deleted:
        return NOTHING  # gone, or a settled record: nothing to hold or release
    held = OUTCOME_FINALIZER in pod.finalizers
    release = (("job's" if owned_by_job(pod) else "app's") if controller_owned else
               _release_reason(pod, acked=acked, terminal_acknowledged=terminal_acknowledged,
                               unknown=unknown))
    if release is not None:
        return Decision(Action.RELEASE, release) if held else NOTHING
    if (held or not enabled or pod.deletion_timestamp is not None or acked is None
            or acked.terminal):
        return NOTHING
    derived = derive(pod, now=now, policy=policy, cancel_requested=acked.cancel_requested)
    if isinstance(derived, Underivable) or derived.state.is_terminal:
        return NOTHING
    return ADD


def _release_reason(pod: PodView, *, acked: Acked | None, terminal_acknowledged: bool,
                    unknown: bool) -> str | None:
    """Why the finalizer must go, or None: it may stay."""
    if pod.run_id is None:
        return "untracked"
    if unknown:
        return "orphan"
    if acked is not None and acked.pod_uid and acked.pod_uid != pod.uid:
        return "foreign"
    if terminal_acknowledged:
        return "acknowledged"
    return None


class RunKnowledge(Protocol):
    """What the decision reads of the platform's answers (`watch.ledger.RunLedger`).
    Reads only; none awaits."""

    def get(self, run_id: str) -> Acked | None: ...
    def terminal_acknowledged(self, pod: PodView) -> bool: ...
    def unknown(self, run_id: str) -> bool: ...


class FinalizerMetrics(Protocol):
    """Part of `watch.handler.HandlerMetrics`."""

    def finalizer(self, op: str) -> None: ...


class FinalizerLoop:
    """Puts Sniffer's finalizer where it belongs. Constructing starts nothing."""

    def __init__(self, *, store: PodStore, queue: WorkQueue[str], knowledge: RunKnowledge,
                 finalizers: Finalizers, policy: StatePolicy, workers: int,
                 is_leader: Callable[[], bool], metrics: FinalizerMetrics,
                 clock: Callable[[], float] = time.time,
                 controller_owned: Callable[[PodView], bool] = owned_by_job) -> None:
        """`controller_owned(pod)`: a controller's path reports `pod`'s run (the
        handler's, `watch.handler`)."""
        self.queue = queue
        self._store = store
        self._knowledge = knowledge
        self._finalizers = finalizers
        self._policy = policy
        self._is_leader = is_leader
        self._metrics = metrics
        self._clock = clock
        self._controller_owned = controller_owned
        # The loop's outcomes are not the handler's (the metric sniffer.handler.outcomes
        # counts those): its pool reports none; its queue's metrics show its retries.
        self.pool = WorkerPool(name="finalizer-worker", queue=queue, handler=self,
                               workers=workers, store=store, metrics=NULL_METRICS,
                               max_retries=None)
        """The loop's workers; a release given up would leave a pod stuck Terminating,
        so it retries for ever."""

    def enqueue(self, pod: PodView) -> None:
        """Ask for `pod`'s finalizer to be put where it belongs. Never blocks. Skips a
        pod that can need no patch whatever the platform says: it does not carry the
        finalizer and cannot gain it (finalizer mode off, or already being deleted); its
        next change comes through the handler again."""
        if OUTCOME_FINALIZER in pod.finalizers or (
                self._finalizers.enabled and pod.deletion_timestamp is None):
            self.queue.add(pod.key)

    def longest_busy_s(self) -> float:
        """Seconds the longest-running finalizer patch has been running (0 if idle)."""
        return self.pool.longest_busy_s()

    async def run(self) -> None:
        """Run the workers until the queue is shut down and each finished its key. Caller
        duty: this replica leads. Call once."""
        await self.pool.run()

    def decision(self, key: str) -> Decision:
        """What `handle(key)` would do now. Reads only; no await."""
        pod = self._store.get(key)
        acked, terminal, unknown = None, False, False
        if isinstance(pod, PodView) and pod.run_id is not None:
            acked = self._knowledge.get(pod.run_id)
            terminal = self._knowledge.terminal_acknowledged(pod)
            unknown = self._knowledge.unknown(pod.run_id)
        return decide(pod, deleted=self._store.is_deleted(key), acked=acked,
                      terminal_acknowledged=terminal, unknown=unknown,
                      enabled=self._finalizers.enabled, now=self._clock(),
                      policy=self._policy,
                      controller_owned=isinstance(pod, PodView)
                      and self._controller_owned(pod))

    async def handle(self, key: str) -> Outcome:
        """Put the finalizer of the pod cached for `key` where it belongs now."""
        decision = self.decision(key)
        if decision.action is Action.NOTHING:
            return DONE
        pod = self._store.get(key)
        assert isinstance(pod, PodView)  # no await since `decision`
        if not self._is_leader():
            return Outcome.retry("not the leader")
        if decision.action is Action.ADD:
            if await self._finalizers.ensure(pod):
                self._metrics.finalizer("added")
        elif await self._finalizers.release(pod):
            self._metrics.finalizer("removed")
            log.debug("released finalizer", extra={"key": key, "why": decision.why})
        return DONE
