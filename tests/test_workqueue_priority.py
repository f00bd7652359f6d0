"""watch.workqueue: live changes first, with aging. Keys from an initial list or a relist
(Priority.LIST) do not delay live changes, and no key starves (controller-runtime's
priority queue, without aging, can: its issue 3496).

Time is an injected fake (`tests.fixtures.timers.FakeTimers`, also the queue's clock):
nothing here sleeps or runs an event loop.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.fixtures.timers import FakeTimers
from tests.test_workqueue import Limiter, Metrics, drain_now
from watch.workqueue import Priority, WorkQueue

LIVE, LIST = Priority.LIVE, Priority.LIST


def aged_queue(aging_s: float = 10.0) -> tuple[WorkQueue[str], FakeTimers]:
    timers = FakeTimers()
    return WorkQueue(Limiter(), timers=timers, clock=timers.time, aging_s=aging_s), timers


def test_a_live_key_is_handed_out_before_list_keys_that_wait_less_than_the_aging() -> None:
    queue, timers = aged_queue(10)
    for i in range(1000):
        queue.add(f"listed-{i}", LIST)
    timers.advance(9)
    queue.add("live")
    assert queue.get_nowait() == "live"


def test_list_keys_that_aged_past_a_live_key_go_first() -> None:
    queue, timers = aged_queue(10)
    queue.add("old", LIST)
    timers.advance(11)
    queue.add("live")
    queue.add("young", LIST)
    assert drain_now(queue) == ["old", "live", "young"]


def test_keys_of_one_priority_keep_fifo_order() -> None:
    queue, _ = aged_queue(10)
    for key in "cab":
        queue.add(key, LIST)
    for key in "zxy":
        queue.add(key)
    assert drain_now(queue) == list("zxycab")


def test_a_live_add_of_a_waiting_list_key_moves_it_to_the_live_line() -> None:
    metrics = Metrics()
    timers = FakeTimers()
    queue = WorkQueue(Limiter(), timers=timers, clock=timers.time, aging_s=10,
                      metrics=metrics)
    queue.add("a", LIST)
    queue.add("b", LIST)
    queue.add("live")
    queue.add("b")  # b changed live while its listed change waited
    assert drain_now(queue) == ["live", "b", "a"]
    assert metrics.priorities == [LIVE, LIVE, LIST]
    assert metrics.adds == 3  # the coalesced add is not counted


def test_a_list_add_of_a_waiting_live_key_leaves_it_live() -> None:
    queue, _ = aged_queue(10)
    queue.add("a", LIST)
    queue.add("b")
    queue.add("b", LIST)
    assert drain_now(queue) == ["b", "a"]


def test_a_key_relisted_and_changed_live_while_in_flight_runs_again_as_live() -> None:
    queue, timers = aged_queue(10)
    queue.add("k", LIST)
    key = queue.get_nowait()
    queue.add("k", LIST)
    queue.add("k")
    queue.add("other", LIST)
    queue.done(key)
    timers.advance(1)
    assert drain_now(queue) == ["k", "other"]


def test_an_aged_list_key_keeps_its_earlier_place_when_added_live() -> None:
    queue, timers = aged_queue(10)
    queue.add("a", LIST)
    timers.advance(20)
    queue.add("live")
    queue.add("a")
    assert drain_now(queue) == ["a", "live"]


def test_without_aging_the_queue_is_fifo_across_priorities() -> None:
    queue, timers = aged_queue(0)
    queue.add("a", LIST)
    timers.advance(1)
    queue.add("b")
    queue.add("c", LIST)
    assert drain_now(queue) == ["a", "b", "c"]


def test_a_negative_aging_is_refused() -> None:
    with pytest.raises(ValueError, match="aging_s"):
        WorkQueue(Limiter(), aging_s=-1)


# --- (b) no starvation, in time ---------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(aging=st.integers(0, 30), rate=st.integers(1, 5), backlog=st.integers(0, 40),
       listed=st.integers(1, 30))
def test_a_list_key_waits_at_most_the_aging_plus_what_was_ahead_of_it(
        aging: int, rate: int, backlog: int, listed: int) -> None:
    """Live keys arrive at exactly the rate the worker hands keys out, for ever (the
    arrival pattern that starves a priority queue without aging). `listed` list keys
    added behind `backlog` live keys are all handed out within `aging + (backlog +
    listed) / rate` seconds, plus the one-second step of this simulation: ahead of them
    are only the backlog and the live keys of their first `aging` seconds."""
    queue, timers = aged_queue(aging)
    live = itertools.count()
    for _ in range(backlog):
        queue.add(f"live-{next(live)}")
    for i in range(listed):
        queue.add(f"listed-{i}", LIST)
    waited: dict[str, float] = {}
    start = timers.now
    bound = aging + (backlog + listed) / rate + 1
    while len(waited) < listed and timers.now - start <= bound + 1:
        timers.advance(1)
        for _ in range(rate):
            queue.add(f"live-{next(live)}")
        for _ in range(rate):
            key = queue.get_nowait()
            queue.done(key)
            if key.startswith("listed-"):
                waited[key] = timers.now - start
    assert len(waited) == listed, f"list keys starved: {listed - len(waited)} never ran"
    assert max(waited.values()) <= bound


# --- model-based test: (a) live first, (b) bounded overtaking ------------------------------


class PriorityQueueMachine(RuleBasedStateMachine):
    """The queue against a model of the lines, under any arrival pattern, with two
    guarantees checked at every hand-out:

    (a) a LIST key is handed out ahead of a waiting LIVE key only if it had already
        waited `aging` when that key became live in line (joined as LIVE, or a LIVE add
        of it while it waited): a live key is handed out before every list key but those
        that had waited longer than the aging;
    (b) no key is overtaken by a key that joined the line more than `aging` after it,
        so the keys handed out before a waiting key are bounded by what arrived within
        `aging` of it: nothing starves.
    """

    AGING = 5.0
    in_flight = Bundle("in_flight")

    def __init__(self) -> None:
        super().__init__()
        self.timers = FakeTimers()
        self.queue: WorkQueue[str] = WorkQueue(
            Limiter(), timers=self.timers, clock=self.timers.time, aging_s=self.AGING)
        # key -> (eligible time, line, seq, joined): the model of the lines
        self.line: dict[str, tuple[float, Priority, int, float]] = {}
        self.priority: dict[str, Priority] = {}  # dirty key -> highest priority
        self.live_at: dict[str, float] = {}  # key in line -> when it became live there
        self.processing: set[str] = set()
        self.seq = itertools.count()

    def _join(self, key: str) -> None:
        p, now = self.priority[key], self.timers.now
        eligible = now + (self.AGING if p is LIST else 0.0)
        self.line[key] = (eligible, p, next(self.seq), now)
        if p is LIVE:
            self.live_at[key] = now

    @rule(key=st.sampled_from("abcdef"), priority=st.sampled_from([LIVE, LIST]))
    def add(self, key: str, priority: Priority) -> None:
        self.queue.add(key, priority)
        if key in self.priority:
            if priority < self.priority[key]:
                self.priority[key] = priority
                if key in self.line:
                    self.live_at[key] = self.timers.now
                    if self.timers.now < self.line[key][0]:
                        self._join(key)
            return
        self.priority[key] = priority
        if key not in self.processing:
            self._join(key)

    @rule(seconds=st.sampled_from([0.5, 1, 3, 6]))
    def advance(self, seconds: float) -> None:
        self.timers.advance(seconds)

    @precondition(lambda self: bool(self.line))
    @rule(target=in_flight)
    def get(self) -> str:
        expected = min(self.line, key=lambda k: self.line[k][:3])
        key = self.queue.get_nowait()
        assert key == expected
        _, line, _, joined = self.line.pop(key)
        for other, (_, _, _, other_joined) in self.line.items():
            if line is LIST and other in self.live_at:  # (a)
                assert self.live_at[other] - joined >= self.AGING, (key, other)
            assert joined - other_joined <= self.AGING, (key, other)  # (b)
        del self.priority[key]
        self.live_at.pop(key, None)
        self.processing.add(key)
        return key

    @rule(key=consumes(in_flight))
    def done(self, key: str) -> None:
        self.queue.done(key)
        self.processing.remove(key)
        if key in self.priority:
            self._join(key)

    @invariant()
    def matches_model(self) -> None:
        q = self.queue
        assert q.waiting_keys() == sorted(self.line, key=lambda k: self.line[k][:3])
        assert q._priority == self.priority
        assert len(q) == len(self.line)


def test_priority_queue_behaves_like_its_model_and_keeps_both_bounds() -> None:
    run_state_machine_as_test(
        PriorityQueueMachine, settings=settings(max_examples=200, stateful_step_count=50,
                                                deadline=None))
