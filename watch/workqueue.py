"""A work queue of keys with client-go's workqueue semantics, for asyncio.

Contract (the guarantees of client-go's `workqueue/doc.go`, plus delays and rate limits):

* Live first, with aging: each add has a `Priority`, LIVE (a watch event, a retry: the
  default) or LIST (found by an initial list or a relist). A key waits in line with an
  *eligible time*: when it joined the line, plus `aging_s` for a LIST key. Keys are handed
  out in order of eligible time (LIVE first on a tie). So a live change is never queued
  behind list keys that have waited less than `aging_s`, and no key is ever overtaken by a
  key that was added more than `aging_s` after it: nothing starves, whatever arrives
  (controller-runtime's priority queue, without aging, starves low priorities:
  controller-runtime issue 3496). With one priority, or `aging_s` 0, this is FIFO.
  Waiting `get` calls are woken in the order they started waiting.
* Stingy: a key is never handed out while it is being processed; a key added while it is
  processed is processed once more after `done`, however often it was added meanwhile.
* Coalescing: adding a key that is already waiting is a no-op (it keeps its place),
  except that a LIVE add of a key waiting as LIST moves it to the live line when that is
  earlier: a coalesced key keeps the highest priority it was added with. A key re-added
  while in flight joins the line at `done`, with the highest priority of those adds.
* A delayed or rate-limited add hands its key out as LIVE when its delay ends: it has
  waited its delay already.
* Delays: `add_after(key, delay)` adds the key once `delay` seconds of loop time have
  passed (at once if `delay <= 0`); of several pending delays for one key the earliest wins.
  Delays run on one `call_at` timer (`watch.delays`) of the event loop's clock, or of
  injected `Timers` (tests): the queue starts and owns no task.
* Rate limits: `add_rate_limited(key)` delays the key by what the rate limiter says (or
  longer, `at_least`: a server's Retry-After); `forget(key)` resets its history,
  `num_requeues(key)` reads it.
* Backoff holds: a key waiting out a rate-limited delay is not handed out before that
  delay has passed. An `add` or `add_after` meanwhile coalesces into the pending retry
  (which processes the key's latest state: keys carry no content), and a rate-limited
  add of a key already waiting takes it out of line until its delay has passed. So a
  key that keeps being added (a busy object) cannot run early against a dependency that
  asked to wait, and every rate-limited retry is one real attempt. This is where the
  queue departs from client-go, whose `Add` bypasses a pending `AddRateLimited`.
* Shutdown: after `shut_down()` adds and delayed adds are ignored, pending delays and
  holds are dropped, `get` still hands out waiting keys and raises `ShutDown` once none
  is left; keys in flight finish normally (a re-added one is still processed again).
  `shut_down_with_drain(timeout)` also waits until no key is waiting or in flight.
* Metrics: every add, get, done and retry is reported to a `QueueMetrics` (no-op by
  default); unfinished work is reported when the owner calls `update_unfinished_work()`.
* Single event loop only: calls must come from the loop's thread. `add`, `get_nowait`,
  `done` and `shut_down` never await, so each is atomic.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from enum import IntEnum
from typing import Generic, Protocol, TypeVar

from sniffer.nullmetrics import NULL_METRICS
from watch.delays import Delays, Timers
from watch.ratelimit import RateLimiter, default_controller_rate_limiter

K = TypeVar("K", bound=Hashable)

DEFAULT_AGING_S = 30.0
"""How long a LIST key may wait before it competes with live keys as their equal. Long
enough for a large initial list to drain behind live changes, short enough that a change
found only by a relist is not left for the reconciler."""


class Priority(IntEnum):
    """Lower is handed out first."""

    LIVE = 0
    """A change seen as it happened (a watch event), or a retry or recheck."""
    LIST = 1
    """A change found by an initial list or a relist (a backlog, not news)."""


_NO = (-1, 0.0)  # the `_entry` of a key not in line: no entry has sequence number -1


class ShutDown(Exception):
    """The queue is shut down and has no key left to hand out."""


class QueueMetrics(Protocol):
    """client-go's workqueue metric set for one queue (the telemetry module implements it).

    Durations are seconds."""

    def add(self) -> None:
        """A key was added (not counted when it coalesced): `workqueue_adds_total`."""

    def depth(self, depth: int) -> None:
        """Keys waiting now: `workqueue_depth`."""

    def get(self, queued_s: float, priority: Priority) -> None:
        """A key was handed out after waiting `queued_s` since it was added, with the
        highest priority it was added with: `workqueue_queue_duration`."""

    def done(self, work_s: float) -> None:
        """A key was processed for `work_s`: `workqueue_work_duration`."""

    def retry(self) -> None:
        """A delayed or rate-limited add: `workqueue_retries_total`."""

    def unfinished_work(self, seconds: float) -> None:
        """Sum of the time keys in flight have been processed: `unfinished_work_seconds`."""

    def longest_running_processor(self, seconds: float) -> None:
        """Age of the longest-running key in flight: `longest_running_processor_seconds`."""


class WorkQueue(Generic[K]):
    """A rate-limiting, delaying work queue of hashable keys.

    Invariants (checked by tests/test_workqueue.py):
    * a key is *in line* iff it is in `_entry`, iff it is in `_dirty` and not in
      `_processing`; with `_entry[key] == (seq, eligible)`, the entry `(eligible, seq,
      key)` is in exactly one line; every other entry in the lines is stale (its sequence
      number is not its key's) and skipped; each line is sorted by `(eligible, seq)`
      (entries are appended with a monotonic clock);
    * `_priority[key]` is the highest priority a dirty key was added with (a key in line
      may wait in a lower line, when it had aged past what the higher one gives);
    * a key is in `_added_at` iff it is in `_dirty`, iff it is in `_priority`;
    * `_delays` (watch/delays.py) holds the keys of pending delayed and rate-limited
      adds; it is empty once shut down;
    * a key is in `_held` iff it is pending in `_delays` because of a rate-limited add; a
      held key is never in `_dirty` (its delay's end adds it).
    """

    def __init__(self, rate_limiter: RateLimiter[K] | None = None, *,
                 metrics: QueueMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 timers: Timers | None = None, aging_s: float = DEFAULT_AGING_S) -> None:
        """`clock` times metrics and aging (monotonic); delays run on `timers`, by default
        the clock of the event loop running at the time of each delayed add. `aging_s`
        (>= 0): see the contract."""
        if aging_s < 0:
            raise ValueError(f"aging_s: must be >= 0, got {aging_s!r}")
        self._aging = {Priority.LIVE: 0.0, Priority.LIST: float(aging_s)}
        self._limiter: RateLimiter[K] = (
            rate_limiter if rate_limiter is not None else default_controller_rate_limiter())
        self._metrics: QueueMetrics = metrics if metrics is not None else NULL_METRICS
        self._clock = clock
        self._lines: dict[Priority, deque[tuple[float, int, K]]] = {
            p: deque() for p in Priority}
        self._live_line, self._list_line = self._lines[Priority.LIVE], self._lines[Priority.LIST]
        self._entry: dict[K, tuple[int, float]] = {}  # key in line -> (seq, eligible)
        self._priority: dict[K, Priority] = {}  # dirty key -> highest priority added with
        self._dirty: set[K] = set()
        self._processing: dict[K, float] = {}  # key -> when it was handed out
        self._added_at: dict[K, float] = {}
        self._getters: deque[asyncio.Future[None]] = deque()
        self._delays: Delays[K] = Delays(self._delay_over, timers)
        self._held: set[K] = set()
        self._seq = itertools.count()
        self._shutting_down = False
        self._drained = asyncio.Event()

    # --- adding --------------------------------------------------------------------------

    def add(self, key: K, priority: Priority = Priority.LIVE) -> None:
        """Mark `key` as needing processing. Ignored after shutdown; coalesces into a
        pending rate-limited retry of the key (it is processed when that retry is due);
        a LIVE add of a key waiting as LIST may move it up (see the contract)."""
        if self._shutting_down or key in self._held:
            return
        # No await between check and mutation.
        if key in self._dirty:
            if priority < self._priority[key]:
                self._promote(key, priority)
            return
        self._dirty.add(key)
        self._priority[key] = priority
        self._added_at[key] = now = self._clock()
        self._metrics.add()
        if key not in self._processing:
            self._enqueue(key, now)
            self._metrics.depth(len(self._entry))
            self._wake_one()

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` once `delay` seconds have passed. Ignored after shutdown, and while a
        rate-limited retry of the key is pending (that retry adds it, and no earlier).

        Caller duty: call from the event loop's thread (a positive delay schedules a
        `call_at` callback), unless the queue was given its own `timers`."""
        if self._shutting_down:
            return
        self._metrics.retry()
        if delay <= 0:
            self.add(key)
            return
        if key in self._held:
            return
        due = self._delays.now() + delay
        pending = self._delays.due(key)
        if pending is not None and pending <= due:
            return
        self._delays.set(key, due)

    def add_rate_limited(self, key: K, *, at_least: float = 0.0) -> None:
        """Add `key` after the delay the rate limiter sets, or `at_least` seconds if that is
        longer (a server's Retry-After); counts one retry of it. Ignored after shutdown.

        Until that delay has passed the key is held: it is not handed out, adds coalesce
        into this retry, and a pending plain delay of the key is replaced by it. A key
        already waiting to be handed out is taken out of line; one in flight is not
        queued again by `done`. A second rate-limited add while held keeps the later end.
        Same caller duty as `add_after`."""
        if self._shutting_down:
            return
        delay = max(self._limiter.when(key), at_least)
        self._metrics.retry()
        if delay <= 0:
            self.add(key)
            return
        due = self._delays.now() + delay
        held_until = self._delays.due(key) if key in self._held else None
        if held_until is not None and held_until >= due:
            return
        # No await between check and mutation.
        self._held.add(key)
        if key in self._dirty:  # the hold's end adds it again; not before
            self._dirty.discard(key)
            self._added_at.pop(key, None)
            del self._priority[key]
            if key not in self._processing:
                del self._entry[key]  # its entry in the line is now stale
                self._metrics.depth(len(self._entry))
        self._delays.set(key, due)

    def forget(self, key: K) -> None:
        """Reset `key`'s retry history. Call it when the key was processed successfully
        (or given up on); it does not remove the key from the queue."""
        self._limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        """Rate-limited retries of `key` since it was last forgotten."""
        return self._limiter.num_requeues(key)

    # --- processing ----------------------------------------------------------------------

    async def get(self) -> K:
        """Wait for the next key and mark it in flight.

        Caller duty: call `done(key)` exactly once for every key returned, even when
        processing fails. Raises `ShutDown` once the queue is shut down and empty.
        Cancelling a waiting `get` loses no key."""
        while not self._entry:
            if self._shutting_down:
                raise ShutDown
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                if self._entry and not getter.cancelled():
                    self._wake_one()  # pass the wake-up this getter consumed on
                raise
        return self._take()

    def get_nowait(self) -> K:
        """The next key, marked in flight, without waiting (same duty as `get`).

        Raises `asyncio.QueueEmpty` if none is waiting, `ShutDown` if shut down and empty."""
        if self._entry:
            return self._take()
        if self._shutting_down:
            raise ShutDown
        raise asyncio.QueueEmpty

    def done(self, key: K) -> None:
        """Mark `key` processed. If it was added meanwhile, it is queued again.

        Caller duty: call exactly once per key `get` returned. Raises ValueError for a
        key that is not in flight."""
        started = self._processing.pop(key, None)
        if started is None:
            raise ValueError(f"done({key!r}): the key is not being processed")
        self._metrics.done(self._clock() - started)
        if key in self._dirty:
            self._enqueue(key)
            self._metrics.depth(len(self._entry))
            self._wake_one()
        self._check_drained()

    def __len__(self) -> int:
        """Keys waiting to be handed out (not in flight, not delayed); informational."""
        return len(self._entry)

    def waiting_keys(self) -> list[K]:
        """The keys waiting to be handed out, in the order they would be (no key handed
        out meanwhile); informational only, and O(n log n): for tests and debugging."""
        entries = [(eligible, line, seq, key) for line, entries in self._lines.items()
                   for eligible, seq, key in entries if self._entry.get(key, _NO)[0] == seq]
        entries.sort()
        return [key for _, _, _, key in entries]

    def update_unfinished_work(self) -> None:
        """Report unfinished work and the longest-running key in flight to the metrics.

        Caller duty: call it periodically (client-go does every 500 ms) or from an
        observable-gauge callback; the queue starts no task to do it."""
        now = self._clock()
        ages = [now - started for started in self._processing.values()]
        self._metrics.unfinished_work(sum(ages))
        self._metrics.longest_running_processor(max(ages, default=0.0))

    # --- shutdown ------------------------------------------------------------------------

    def shut_down(self) -> None:
        """Stop taking work: ignore adds, drop pending delays, let waiting `get` calls
        finish (with a key, or `ShutDown`). Idempotent."""
        self._shutting_down = True
        self._delays.clear()
        self._held.clear()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
        self._check_drained()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    async def shut_down_with_drain(self, timeout: float) -> bool:  # noqa: ASYNC109 (client-go API)
        """Shut down, then wait up to `timeout` seconds until every waiting key was handed
        out and every key in flight is done. True iff drained; False on timeout (workers
        must still be running `get`/`done` for the queue to drain)."""
        self.shut_down()
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    # --- internals -----------------------------------------------------------------------

    def _enqueue(self, key: K, now: float | None = None) -> None:
        """Put `key` (dirty, not in flight, not in line) at the end of its line; `now` is
        the clock's time, if the caller just read it."""
        priority = self._priority[key]
        seq = next(self._seq)
        eligible = (self._clock() if now is None else now) + self._aging[priority]
        self._entry[key] = (seq, eligible)
        self._lines[priority].append((eligible, seq, key))

    def _promote(self, key: K, priority: Priority) -> None:
        """A dirty key was added again with a higher `priority`."""
        self._priority[key] = priority
        entry = self._entry.get(key)
        if entry is None:
            return  # in flight: `done` queues it with its new priority
        if self._clock() + self._aging[priority] < entry[1]:
            self._enqueue(key)  # its old entry is now stale
        # else it aged past what the new line would give it and keeps its place.

    def _head(self) -> tuple[float, int, K]:
        """Take the next entry to hand out (caller duty: some key is in line), dropping
        stale entries at the heads of the lines. LIVE wins a tie."""
        entry, live, listed = self._entry, self._live_line, self._list_line
        while live and entry.get(live[0][2], _NO)[0] != live[0][1]:
            live.popleft()
        while listed and entry.get(listed[0][2], _NO)[0] != listed[0][1]:
            listed.popleft()
        if listed and (not live or listed[0][0] < live[0][0]):
            return listed.popleft()
        return live.popleft()

    def _take(self) -> K:
        # No await between the caller's check of `_entry` and this mutation.
        _, _, key = self._head()
        del self._entry[key]
        now = self._clock()
        self._processing[key] = now
        self._dirty.discard(key)
        priority = self._priority.pop(key)
        self._metrics.get(now - self._added_at.pop(key, now), priority)
        self._metrics.depth(len(self._entry))
        return key

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def _check_drained(self) -> None:
        if self._shutting_down and not self._entry and not self._processing:
            self._drained.set()

    def _delay_over(self, key: K) -> None:
        self._held.discard(key)
        self.add(key)
