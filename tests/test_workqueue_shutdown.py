"""watch.workqueue: shutdown and drain.

Pure asyncio: no delays fire in these tests.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.timers import FakeTimers
from tests.test_workqueue import BOUND, Limiter, get, new_queue, timed_queue
from watch.workqueue import ShutDown, WorkQueue

# --- shutdown -----------------------------------------------------------------------------


async def test_get_hands_out_waiting_keys_after_shutdown_then_raises_shutdown() -> None:
    queue = new_queue()
    queue.add("a")
    queue.shut_down()
    assert await get(queue) == "a"
    with pytest.raises(ShutDown):
        await get(queue)
    with pytest.raises(ShutDown):
        queue.get_nowait()


async def test_waiting_get_raises_shutdown_when_the_queue_shuts_down() -> None:
    queue = new_queue()
    getter = asyncio.create_task(get(queue))
    await asyncio.sleep(0)
    queue.shut_down()
    with pytest.raises(ShutDown):
        await getter


def test_adds_are_ignored_after_shutdown() -> None:
    limiter, timers = Limiter(delay=0.01), FakeTimers()
    queue: WorkQueue[str] = WorkQueue(limiter, timers=timers)
    queue.shut_down()
    queue.add("a")
    queue.add_after("b", 0)
    queue.add_after("c", 0.01)
    queue.add_rate_limited("d")
    assert timers.armed == 0, "no delay was scheduled"
    timers.advance(0.03)
    assert len(queue) == 0
    assert limiter.attempts == {}


def test_shutdown_drops_pending_delays() -> None:
    queue, timers = timed_queue()
    queue.add_after("a", 0.01)
    queue.shut_down()
    timers.advance(0.03)
    with pytest.raises(ShutDown):
        queue.get_nowait()


def test_key_in_flight_and_added_before_shutdown_is_processed_again() -> None:
    queue = new_queue()
    queue.add("a")
    key = queue.get_nowait()
    queue.add("a")
    queue.shut_down()
    queue.done(key)
    assert queue.get_nowait() == "a"


def test_shutdown_is_idempotent() -> None:
    queue = new_queue()
    queue.shut_down()
    queue.shut_down()
    assert queue.shutting_down


async def test_shutdown_drain_waits_for_in_flight_keys() -> None:
    queue = new_queue()
    queue.add("a")
    key = queue.get_nowait()
    drain = asyncio.create_task(queue.shut_down_with_drain(BOUND))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not drain.done()
    queue.done(key)
    assert await drain is True


async def test_shutdown_drain_waits_for_waiting_keys_to_be_handed_out_and_done() -> None:
    queue = new_queue()
    queue.add("a")
    drain = asyncio.create_task(queue.shut_down_with_drain(BOUND))
    await asyncio.sleep(0)
    assert not drain.done()
    queue.done(queue.get_nowait())
    assert await drain is True


async def test_shutdown_drain_of_an_idle_queue_returns_at_once() -> None:
    assert await new_queue().shut_down_with_drain(0) is True


async def test_shutdown_drain_gives_up_after_the_timeout() -> None:
    queue = new_queue()
    queue.add("a")
    key = queue.get_nowait()
    assert await queue.shut_down_with_drain(0.01) is False
    queue.done(key)


