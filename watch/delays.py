"""Keys due at a moment of loop time: the work queue's delayed adds, on one timer.

Contract:
* `Delays(fire, timers)`: `set(key, due)` makes `key` due at `due` (loop time), replacing
  any earlier `set` of it, earlier or later; when the time comes `fire(key)` is called
  once, from a `call_at` callback, and the key is no longer pending. Keys due at the same
  moment fire in the order they were last set.
* One timer, for the earliest pending due time, re-armed as keys are set and fire; the
  timer may run early by the clock's resolution, which still counts as due. No task is
  started or owned.
* `timers` is the loop's clock and `call_at`: injected (tests), or else the running
  event loop at the time of each call (so `set` and `now` must run on the loop's thread).
* `clear()` drops every pending key and the timer; nothing fires afterwards unless set
  again.

Invariants (checked by tests/test_workqueue_delays.py):
* a key is in `_waiting` iff it is in `_live` and the heap holds its live entry
  `(_waiting[key], _live[key], key)`; its other heap entries are stale and skipped
  (told apart by sequence number, not time: a key re-set for the same moment takes its
  new place among keys due then);
* `_timer` is scheduled iff `_waiting` is not empty, for its earliest time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)

# The loop may run a timer callback up to its clock's resolution early.
_EARLY = time.get_clock_info("monotonic").resolution


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """What delays need from an event loop (`asyncio.AbstractEventLoop` has both); tests
    inject a fake to move time by hand."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...


class Delays(Generic[K]):
    def __init__(self, fire: Callable[[K], None], timers: Timers | None = None) -> None:
        self._fire = fire
        self._timers = timers
        self._waiting: dict[K, float] = {}  # key -> loop time it is due
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, int] = {}  # key -> sequence number of its live heap entry
        self._seq = itertools.count()
        self._timer: TimerHandle | None = None
        self._timer_at = 0.0

    def now(self) -> float:
        return self._loop().time()

    def due(self, key: K) -> float | None:
        """When `key` is due, None if it is not pending."""
        return self._waiting.get(key)

    def set(self, key: K, due: float) -> None:
        """Make `key` due at `due` (earlier or later than before)."""
        timers = self._loop()
        previous = self._waiting.get(key)
        self._waiting[key] = due
        self._live[key] = seq = next(self._seq)
        heapq.heappush(self._heap, (due, seq, key))
        if self._timer is None or due < self._timer_at:
            self._schedule(timers, due)
        elif previous == self._timer_at and due > previous:
            self._schedule(timers, min(self._waiting.values()))  # the earliest moved later

    def clear(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()
        self._heap.clear()
        self._live.clear()

    def _loop(self) -> Timers:
        return self._timers if self._timers is not None else asyncio.get_running_loop()

    def _schedule(self, timers: Timers, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = timers.call_at(due, self._on_timer)
        self._timer_at = due

    def _on_timer(self) -> None:
        """Fire every key whose time has come; re-arm for the next one."""
        self._timer = None
        timers = self._loop()
        now = timers.time()
        while self._heap:
            due, seq, key = self._heap[0]
            if self._live.get(key) != seq:
                heapq.heappop(self._heap)  # stale: superseded by a later `set`
                continue
            if due > now + _EARLY:
                self._schedule(timers, due)
                return
            heapq.heappop(self._heap)
            del self._waiting[key]
            del self._live[key]
            self._fire(key)
