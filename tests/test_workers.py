"""watch.workers: the one worker pool both queues run on.

Pure asyncio: a real `WorkQueue` and `PodStore`, and handlers written for each test; the
queue's delays run on `FakeTimers`, so a retry is scheduled but never fires by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.fixtures.timers import FakeTimers
from tests.fixtures.watcher import eventually
from tests.test_workqueue import Limiter
from watch.store import PodStore
from watch.workers import DONE, Outcome, Result, WorkerPool
from watch.workqueue import Priority, WorkQueue


class Labels:
    """`watch.workers.OutcomeMetrics`, keeping the outcome labels."""

    def __init__(self) -> None:
        self.results: list[str] = []

    def outcome(self, result: str) -> None:
        self.results.append(result)

    def dropped(self, state: str, reason: str) -> None:
        pass


class Scripted:
    """A handler that answers each key from a script, or blocks on `gate` for "block"."""

    def __init__(self, script: dict[str, object]) -> None:
        self.script = script
        self.gate = asyncio.Event()
        self.calls: list[str] = []

    async def handle(self, key: str) -> Outcome:
        self.calls.append(key)
        answer = self.script[key]
        if answer == "block":
            await self.gate.wait()
            return DONE
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, Outcome)
        return answer


def pool(handler: Scripted, *, workers: int = 2, max_retries: int | None = 3
         ) -> tuple[WorkerPool, WorkQueue[str], Labels, list[str]]:
    queue: WorkQueue[str] = WorkQueue(Limiter(delay=1.0), timers=FakeTimers())
    labels, resolved = Labels(), list[str]()
    return (WorkerPool(name="test-worker", queue=queue, handler=handler, workers=workers,
                       store=PodStore(("w",)), metrics=labels, max_retries=max_retries,
                       resolved=resolved.append), queue, labels, resolved)


@contextlib.asynccontextmanager
async def running(p: WorkerPool) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(p.run(), name="pool-under-test")
    try:
        yield task
    finally:
        p.queue.shut_down()
        await asyncio.wait_for(task, 30)


async def test_each_key_gets_exactly_one_outcome_and_is_resolved_when_done() -> None:
    handler = Scripted({"a": DONE, "b": DONE})
    p, queue, labels, resolved = pool(handler)
    async with running(p):
        queue.add("a")
        queue.add("b")
        await eventually(lambda: p.outcomes.handled == 2)
    assert sorted(handler.calls) == ["a", "b"]
    assert labels.results == ["done", "done"]
    assert sorted(resolved) == ["a", "b"]


async def test_a_handler_that_raises_becomes_a_retry_and_the_worker_lives_on() -> None:
    handler = Scripted({"bad": ValueError("malformed"), "good": DONE})
    p, queue, labels, resolved = pool(handler, workers=1)
    async with running(p):
        queue.add("bad")
        await eventually(lambda: p.outcomes.handled == 1)
        queue.add("good")  # the one worker is still there to take it
        await eventually(lambda: p.outcomes.handled == 2)
    assert labels.results == ["retry", "done"]
    assert resolved == ["good"], "a retry leaves the change pending"
    assert queue.num_requeues("bad") == 1


async def test_busy_tracks_the_keys_being_handled() -> None:
    handler = Scripted({"slow": "block"})
    p, queue, _, _ = pool(handler)
    assert (p.busy, p.longest_busy_s()) == (0, 0.0)
    async with running(p):
        queue.add("slow")
        await eventually(lambda: p.busy == 1)
        await eventually(lambda: p.longest_busy_s() > 0)
        handler.gate.set()
        await eventually(lambda: p.busy == 0)
    assert p.longest_busy_s() == 0.0


async def test_a_handler_cancelled_mid_call_leaves_its_key_pending_and_queued_again() -> None:
    handler = Scripted({"k": "block"})
    p, queue, labels, resolved = pool(handler, workers=1)
    task = asyncio.create_task(p.run(), name="pool-under-test")
    queue.add("k")
    await eventually(lambda: p.busy == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert labels.results == [Result.REQUEUE.value]
    assert resolved == [], "the change was never written"
    assert len(queue) == 1, "handed out again"
    queue.shut_down()


async def test_run_twice_is_refused_and_workers_must_be_positive() -> None:
    p, queue, _, _ = pool(Scripted({}))
    async with running(p):
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="called twice"):
            await p.run()
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(name="x", queue=queue, handler=Scripted({}), workers=0,
                   store=PodStore(()), metrics=Labels(), max_retries=None)


async def test_changes_enter_only_once_accepted_and_stay_pending_until_resolved() -> None:
    """A standby's pool queues nothing; a leader's stamps each change's observation
    time, keeps the oldest stamp of a key while its change is pending, and clears it
    when the outcome resolves it (the freshness clock)."""
    now = [100.0]
    handler = Scripted({"k": Outcome.retry("later")})
    timers = FakeTimers()
    queue: WorkQueue[str] = WorkQueue(Limiter(delay=1.0), timers=timers)
    p = WorkerPool(name="test-worker", queue=queue, handler=handler, workers=1,
                   store=PodStore(("w",)), metrics=Labels(), max_retries=3,
                   clock=lambda: now[0])
    p.on_change("k")
    assert len(queue) == 0, "not accepting yet"
    assert p.observed_at("k") is None
    p.accept()
    p.on_change("k")
    now[0] = 105.0
    p.on_change("k")
    assert p.observed_at("k") == 100.0
    assert p.oldest_pending_age() == 5.0
    async with running(p):
        await eventually(lambda: p.outcomes.handled == 1)
        assert p.observed_at("k") == 100.0, "a retry leaves it pending"
        handler.script["k"] = DONE
        timers.advance(1.0)  # the retry is due
        await eventually(lambda: p.outcomes.handled == 2)
    assert p.observed_at("k") is None
    assert p.oldest_pending_age() == 0.0


async def test_a_live_change_is_handled_before_a_listed_backlog() -> None:
    """The reflector reports what a list found as LIST and watch events as LIVE: one
    worker, a backlog listed first, then one live change: the live one goes first."""
    script: dict[str, object] = {f"listed-{i}": DONE for i in range(50)}
    handler = Scripted(script | {"live": DONE})
    p, _, _, _ = pool(handler, workers=1)
    p.accept()
    for i in range(50):
        p.on_change(f"listed-{i}", Priority.LIST)
    p.on_change("live")
    async with running(p):
        await eventually(lambda: p.outcomes.handled == 51)
    assert handler.calls[0] == "live"
    assert handler.calls[1:] == [f"listed-{i}" for i in range(50)]
