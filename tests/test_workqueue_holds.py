"""watch.workqueue: backoff holds. A key waiting out a rate-limited retry is not handed out
before that retry is due, however often it is added meanwhile (reliability finding 7).

Time is an injected fake (`tests.fixtures.timers.FakeTimers`): nothing here sleeps or
runs an event loop.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
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
from tests.test_workqueue import Limiter, drain_now
from watch.workqueue import WorkQueue


def held_queue(delay: float = 0.0) -> tuple[WorkQueue[str], FakeTimers, Limiter]:
    timers, limiter = FakeTimers(), Limiter(delay)
    return WorkQueue(limiter, timers=timers), timers, limiter


def test_a_key_added_during_its_retry_after_is_processed_only_when_the_retry_is_due() -> None:
    queue, timers, _ = held_queue()
    queue.add_rate_limited("a", at_least=30)
    for _ in range(20):  # a busy object: every update adds its key
        queue.add("a")
        timers.advance(1)
        assert drain_now(queue) == []
    timers.advance(10)
    assert drain_now(queue) == ["a"]
    timers.advance(60)
    assert drain_now(queue) == []


def test_a_key_added_while_in_flight_then_rate_limited_is_not_requeued_by_done() -> None:
    queue, timers, _ = held_queue()
    queue.add("a")
    key = queue.get_nowait()
    queue.add("a")  # an update while the handler ran
    queue.add_rate_limited(key, at_least=5)  # the handler failed
    queue.done(key)
    assert drain_now(queue) == []
    timers.advance(5)
    assert drain_now(queue) == ["a"]


def test_a_rate_limited_add_takes_a_waiting_key_out_of_line() -> None:
    queue, timers, _ = held_queue()
    queue.add("a")
    queue.add("b")
    queue.add_rate_limited("a", at_least=2)
    assert drain_now(queue) == ["b"]
    timers.advance(2)
    assert drain_now(queue) == ["a"]


def test_a_rate_limited_retry_replaces_an_earlier_plain_delay_of_the_key() -> None:
    queue, timers, _ = held_queue()
    queue.add_after("a", 1)
    queue.add_rate_limited("a", at_least=10)
    timers.advance(5)
    assert drain_now(queue) == []
    timers.advance(5)
    assert drain_now(queue) == ["a"]


def test_a_plain_delay_during_a_hold_neither_shortens_it_nor_adds_a_second_run() -> None:
    queue, timers, _ = held_queue()
    queue.add_rate_limited("a", at_least=10)
    queue.add_after("a", 1)
    queue.add_after("a", 0)
    queue.add_after("a", 20)
    timers.advance(9)
    assert drain_now(queue) == []
    timers.advance(1)
    assert drain_now(queue) == ["a"]
    timers.advance(30)
    assert drain_now(queue) == []


def test_a_second_rate_limited_add_while_held_keeps_the_later_end() -> None:
    queue, timers, _ = held_queue()
    queue.add_rate_limited("a", at_least=3)
    queue.add_rate_limited("a", at_least=8)
    queue.add_rate_limited("a", at_least=1)
    timers.advance(7)
    assert drain_now(queue) == []
    assert queue._delays._timer_at == queue._delays._waiting["a"]
    timers.advance(1)
    assert drain_now(queue) == ["a"]


def test_each_retry_of_a_busy_key_counts_one_real_attempt() -> None:
    """The controller drops a change after max_retries: with holds, a busy key's failures
    count only the attempts actually made, one per backoff."""
    queue, timers, _ = held_queue(delay=1)
    queue.add("a")
    for attempt in range(1, 6):
        key = queue.get_nowait()
        queue.add("a")
        queue.add_rate_limited(key)  # failed
        queue.done(key)
        queue.add("a")
        assert queue.num_requeues("a") == attempt
        assert drain_now(queue) == []
        timers.advance(1)
    assert len(queue) == 1


def test_shutdown_drops_holds() -> None:
    queue, timers, _ = held_queue()
    queue.add_rate_limited("a", at_least=1)
    queue.shut_down()
    assert timers.armed == 0
    timers.advance(2)
    assert drain_now(queue) == []
    assert not queue._held


def test_a_hold_ends_with_a_plain_add_that_coalesces_and_keeps_fifo_order() -> None:
    queue, timers, _ = held_queue()
    queue.add_rate_limited("a", at_least=1)
    queue.add("b")
    timers.advance(1)
    queue.add("a")
    queue.add("c")
    assert drain_now(queue) == ["b", "a", "c"]


@pytest.mark.parametrize("delay", [0.0, -1.0])
def test_a_rate_limited_add_without_delay_is_a_plain_add(delay: float) -> None:
    queue, _, _ = held_queue()
    queue.add_rate_limited("a", at_least=delay)
    assert drain_now(queue) == ["a"]
    assert not queue._held


# --- model-based test ---------------------------------------------------------------------


def test_a_key_rescheduled_for_the_moment_another_is_due_takes_its_new_place() -> None:
    """Found by the model below: a retry of `a` asked after `b`'s delay, for the same
    moment, used to keep `a`'s old place because a superseded timer entry was told from
    the live one by its time alone."""
    queue, timers, _ = held_queue()
    queue.add_after("a", 2)
    timers.advance(1)
    queue.add_after("b", 1)
    queue.add_rate_limited("a", at_least=1)  # due with b, and asked after it
    timers.advance(1)
    assert drain_now(queue) == ["b", "a"]


class HeldQueueMachine(RuleBasedStateMachine):
    """The queue against a model with time: plain delays (earliest wins), holds (not
    before their end, later end wins), adds, gets, dones, shutdown."""

    in_flight = Bundle("in_flight")

    def __init__(self) -> None:
        super().__init__()
        self.timers = FakeTimers()
        self.queue: WorkQueue[str] = WorkQueue(Limiter(), timers=self.timers)
        self.waiting: list[str] = []
        self.dirty: set[str] = set()
        self.processing: set[str] = set()
        self.due: dict[str, tuple[float, int]] = {}  # key -> (due, seq): plain or hold
        self.held: set[str] = set()
        self.seq = itertools.count()
        self.shut = False

    def _model_add(self, key: str) -> None:
        if self.shut or key in self.dirty or key in self.held:
            return
        self.dirty.add(key)
        if key not in self.processing:
            self.waiting.append(key)

    @rule(key=st.sampled_from("abc"))
    def add(self, key: str) -> None:
        self.queue.add(key)
        self._model_add(key)

    @rule(key=st.sampled_from("abc"), delay=st.sampled_from([0, 1, 2, 4]))
    def add_after(self, key: str, delay: float) -> None:
        self.queue.add_after(key, delay)
        if self.shut:
            return
        if delay <= 0:
            self._model_add(key)
            return
        if key in self.held:
            return
        due = self.timers.now + delay
        if key in self.due and self.due[key][0] <= due:
            return
        self.due[key] = (due, next(self.seq))

    @rule(key=st.sampled_from("abc"), delay=st.sampled_from([0, 1, 3, 5]))
    def add_rate_limited(self, key: str, delay: float) -> None:
        self.queue.add_rate_limited(key, at_least=delay)
        if self.shut:
            return
        if delay <= 0:
            self._model_add(key)
            return
        due = self.timers.now + delay
        if key in self.held and self.due[key][0] >= due:
            return
        self.held.add(key)
        self.due[key] = (due, next(self.seq))
        if key in self.dirty:
            self.dirty.discard(key)
            if key not in self.processing:
                self.waiting.remove(key)

    @rule(seconds=st.sampled_from([0.5, 1, 2, 6]))
    def advance(self, seconds: float) -> None:
        self.timers.advance(seconds)
        fired = sorted((d, key) for key, d in self.due.items() if d[0] <= self.timers.now)
        for _, key in fired:
            del self.due[key]
            self.held.discard(key)
            self._model_add(key)

    @precondition(lambda self: bool(self.waiting))
    @rule(target=in_flight)
    def get(self) -> str:
        expected = self.waiting.pop(0)
        assert self.queue.get_nowait() == expected
        self.dirty.discard(expected)
        self.processing.add(expected)
        return expected

    @rule(key=consumes(in_flight))
    def done(self, key: str) -> None:
        self.queue.done(key)
        self.processing.remove(key)
        if key in self.dirty:
            self.waiting.append(key)

    @rule()
    def shut_down(self) -> None:
        self.queue.shut_down()
        self.shut = True
        self.due.clear()
        self.held.clear()

    @invariant()
    def matches_model(self) -> None:
        q = self.queue
        assert q.waiting_keys() == self.waiting
        assert q._dirty == self.dirty
        assert set(q._processing) == self.processing
        assert q._held == self.held
        assert q._delays._waiting == {k: d for k, (d, _) in self.due.items()}
        assert not (q._held & q._dirty)
        assert (q._delays._timer is not None) == bool(q._delays._waiting)
        if q._delays._waiting:
            assert q._delays._timer_at == min(q._delays._waiting.values())


def test_held_queue_behaves_like_its_model() -> None:
    run_state_machine_as_test(
        HeldQueueMachine, settings=settings(max_examples=200, stateful_step_count=40,
                                            deadline=None))
