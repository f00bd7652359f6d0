"""watch.workqueue: delays and rate-limited adds.

Delays run on injected `FakeTimers` wherever a test asserts what has not happened
yet; the few that wait for a key use the event loop's clock with tiny delays, bounded.
"""

from __future__ import annotations

import itertools
import random

import pytest

from tests.test_workqueue import Limiter, drain_now, get, new_queue, timed_queue
from watch.workqueue import WorkQueue

# --- delays and rate limits ---------------------------------------------------------------


async def test_add_after_adds_the_key_once_the_delay_passed() -> None:
    queue = new_queue()
    queue.add_after("a", 0.02)
    assert len(queue) == 0
    assert await get(queue) == "a"


async def test_add_after_with_no_delay_adds_at_once() -> None:
    queue = new_queue()
    queue.add_after("a", 0)
    queue.add_after("b", -1)
    assert drain_now(queue) == ["a", "b"]


async def test_delayed_keys_come_out_in_due_order() -> None:
    queue = new_queue()
    queue.add_after("late", 0.04)
    queue.add_after("early", 0.01)
    assert [await get(queue), await get(queue)] == ["early", "late"]


def test_earliest_delay_of_a_key_wins_and_the_later_one_is_dropped() -> None:
    queue, timers = timed_queue()
    queue.add_after("a", 0.05)
    queue.add_after("a", 0.01)
    queue.add_after("a", 0.03)
    timers.advance(0.01)
    assert drain_now(queue) == ["a"]
    timers.advance(0.07)  # past both later delays
    assert len(queue) == 0
    assert timers.armed == 0


def check_delay_invariants(queue: WorkQueue[str]) -> None:
    delays = queue._delays
    live = {(due, key) for due, _, key in delays._heap if delays._waiting.get(key) == due}
    assert {key for _, key in live} == set(queue._delays._waiting)
    assert (queue._delays._timer is not None) == bool(queue._delays._waiting)
    if queue._delays._waiting:
        assert queue._delays._timer_at == min(queue._delays._waiting.values())


@pytest.mark.parametrize("seed", range(10))
def test_delayed_adds_each_arrive_once_in_due_order(seed: int) -> None:
    rng = random.Random(seed)
    queue, loop = timed_queue()
    due: dict[str, tuple[float, int]] = {}  # key -> (due, when that due was set)
    order = itertools.count()
    for _ in range(40):
        key, delay = rng.choice("abcdefgh"), rng.choice([0.0, 0.001, 0.005, 0.01, 0.02])
        queue.add_after(key, delay)
        if delay > 0:
            assert queue._delays._waiting[key] <= loop.time() + delay
            if key not in due or due[key][0] != queue._delays._waiting[key]:
                # Fake time is exact, so keys can fall due at the same instant: those
                # come out in the order their delays were set.
                due[key] = (queue._delays._waiting[key], next(order))
        check_delay_invariants(queue)
        while len(queue):  # keys added at once are handled right away
            done_key = queue.get_nowait()
            queue.done(done_key)
        if rng.random() < 0.2:
            loop.advance(0.003)
            check_delay_invariants(queue)
            for key in [k for k, d in due.items() if k not in queue._delays._waiting]:
                del due[key]  # it fired: it is waiting or was handled above
            while len(queue):
                queue.done(queue.get_nowait())
    expected = sorted(due, key=due.__getitem__)
    seen: list[str] = []
    while len(seen) < len(expected) and loop.armed:
        loop.advance(0.0005)  # finer than any two distinct due times
        for key in drain_now(queue):
            seen.append(key)
            check_delay_invariants(queue)
    assert seen == expected
    assert not queue._delays._waiting
    assert queue._delays._timer is None


def test_delayed_add_of_a_waiting_key_coalesces() -> None:
    queue, timers = timed_queue()
    queue.add("a")
    queue.add_after("a", 0.01)
    timers.advance(0.03)
    assert drain_now(queue) == ["a"]


def test_delayed_add_of_a_key_in_flight_runs_it_again_after_done() -> None:
    queue, timers = timed_queue()
    queue.add("a")
    key = queue.get_nowait()
    queue.add_after("a", 0.01)
    timers.advance(0.03)  # the delay has fired
    assert len(queue) == 0
    queue.done(key)
    assert drain_now(queue) == ["a"]


async def test_add_rate_limited_waits_as_long_as_the_limiter_says() -> None:
    limiter = Limiter(delay=0.02)
    queue: WorkQueue[str] = WorkQueue(limiter)
    queue.add_rate_limited("a")
    assert len(queue) == 0
    assert await get(queue) == "a"
    assert queue.num_requeues("a") == 1


async def test_add_rate_limited_waits_at_least_the_given_time() -> None:
    queue = new_queue(delay=0.0)
    queue.add_rate_limited("a", at_least=0.02)
    assert len(queue) == 0
    assert await get(queue) == "a"


def test_forget_resets_the_requeue_count() -> None:
    limiter = Limiter()
    queue: WorkQueue[str] = WorkQueue(limiter)
    queue.add_rate_limited("a")
    queue.add_rate_limited("a")
    assert queue.num_requeues("a") == 2
    queue.forget("a")
    assert queue.num_requeues("a") == 0
    assert len(queue) == 1  # forgetting does not remove the key


async def test_default_rate_limiter_backs_a_key_off() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_rate_limited("a")
    assert await get(queue) == "a"
    assert queue.num_requeues("a") == 1


