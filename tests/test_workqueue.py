"""watch.workqueue: every guarantee of the module docstring, and a model-based test."""

from __future__ import annotations

import asyncio
import random

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

from tests.fixtures.clock import FakeClock
from tests.fixtures.timers import FakeTimers
from watch.workqueue import Priority, ShutDown, WorkQueue

# Delays in these tests are tiny and only order events; nothing asserts how fast anything
# is. Each wait that could hang on a bug is bounded, so a bug fails instead of hanging.
BOUND = 5.0


class Limiter:
    """A rate limiter whose delay the test sets."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.attempts: dict[str, int] = {}

    def when(self, key: str) -> float:
        self.attempts[key] = self.attempts.get(key, 0) + 1
        return self.delay

    def forget(self, key: str) -> None:
        self.attempts.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self.attempts.get(key, 0)


class Metrics:
    def __init__(self) -> None:
        self.adds = 0
        self.retries = 0
        self.depths: list[int] = []
        self.latencies: list[float] = []
        self.priorities: list[Priority] = []
        self.work: list[float] = []
        self.unfinished: list[float] = []
        self.longest: list[float] = []

    def add(self) -> None:
        self.adds += 1

    def depth(self, depth: int) -> None:
        self.depths.append(depth)

    def get(self, queued_s: float, priority: Priority) -> None:
        self.latencies.append(queued_s)
        self.priorities.append(priority)

    def done(self, work_s: float) -> None:
        self.work.append(work_s)

    def retry(self) -> None:
        self.retries += 1

    def unfinished_work(self, seconds: float) -> None:
        self.unfinished.append(seconds)

    def longest_running_processor(self, seconds: float) -> None:
        self.longest.append(seconds)


def new_queue(delay: float = 0.0) -> WorkQueue[str]:
    return WorkQueue(Limiter(delay))


def timed_queue(delay: float = 0.0) -> tuple[WorkQueue[str], FakeTimers]:
    """A queue whose delays fire only when the test advances its `FakeTimers`."""
    timers = FakeTimers()
    return WorkQueue(Limiter(delay), timers=timers), timers


async def get(queue: WorkQueue[str]) -> str:
    async with asyncio.timeout(BOUND):
        return await queue.get()


def drain_now(queue: WorkQueue[str]) -> list[str]:
    """Every key waiting now, each marked done at once."""
    keys = []
    while len(queue):
        key = queue.get_nowait()
        queue.done(key)
        keys.append(key)
    return keys


# --- fairness, coalescing, stinginess -----------------------------------------------------


def test_keys_are_handed_out_in_the_order_they_were_added() -> None:
    queue = new_queue()
    for key in "cab":
        queue.add(key)
    assert [queue.get_nowait() for _ in range(3)] == ["c", "a", "b"]


def test_duplicates_coalesce_while_waiting() -> None:
    queue = new_queue()
    for key in "abab":
        queue.add(key)
    assert len(queue) == 2
    assert drain_now(queue) == ["a", "b"]


def test_coalesced_key_keeps_its_place() -> None:
    queue = new_queue()
    queue.add("a")
    queue.add("b")
    queue.add("a")
    assert drain_now(queue) == ["a", "b"]


def test_key_is_not_handed_out_while_it_is_processed() -> None:
    queue = new_queue()
    queue.add("a")
    assert queue.get_nowait() == "a"
    queue.add("a")
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


def test_key_added_while_processing_runs_again() -> None:
    queue = new_queue()
    queue.add("a")
    key = queue.get_nowait()
    queue.add("a")
    queue.add("a")  # several adds while in flight still mean one more run
    queue.done(key)
    assert drain_now(queue) == ["a"]


def test_key_added_while_processing_runs_again_after_keys_already_waiting() -> None:
    queue = new_queue()
    queue.add("a")
    key = queue.get_nowait()
    queue.add("a")
    queue.add("b")
    queue.done(key)
    assert drain_now(queue) == ["b", "a"]


def test_done_without_get_is_a_caller_error() -> None:
    queue = new_queue()
    queue.add("a")
    with pytest.raises(ValueError, match="not being processed"):
        queue.done("a")


def test_len_counts_only_keys_waiting_to_be_handed_out() -> None:
    queue = new_queue()
    queue.add("a")
    queue.add("b")
    queue.get_nowait()
    assert len(queue) == 1


async def test_get_waits_for_an_add() -> None:
    queue = new_queue()
    getter = asyncio.create_task(get(queue))
    await asyncio.sleep(0)
    assert not getter.done()
    queue.add("a")
    assert await getter == "a"


async def test_waiting_getters_are_served_in_the_order_they_arrived() -> None:
    queue = new_queue()
    getters = []
    for _ in range(3):
        getters.append(asyncio.create_task(get(queue)))
        await asyncio.sleep(0)
    for key in "xyz":
        queue.add(key)
    assert await asyncio.gather(*getters) == ["x", "y", "z"]


async def test_cancelled_get_loses_no_key() -> None:
    queue = new_queue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(get(queue))
    await asyncio.sleep(0)
    queue.add("a")  # wakes `first`, which is cancelled before it can take the key
    first.cancel()
    assert await second == "a"
    with pytest.raises(asyncio.CancelledError):
        await first


@pytest.mark.parametrize("seed", range(20))
async def test_concurrent_workers_never_share_a_key_and_lose_no_add(seed: int) -> None:
    rng = random.Random(seed)
    queue = new_queue()
    busy: set[str] = set()
    last_add: dict[str, int] = {}
    last_start: dict[str, int] = {}
    tick = 0

    async def worker() -> None:
        nonlocal tick
        while True:
            try:
                key = await queue.get()
            except ShutDown:
                return
            assert key not in busy, "a key was handed to two workers at once"
            busy.add(key)
            tick += 1
            last_start[key] = tick
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            busy.discard(key)
            queue.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    for _ in range(200):
        key = rng.choice("abcdef")
        tick += 1
        last_add[key] = tick
        queue.add(key)
        if rng.random() < 0.5:
            await asyncio.sleep(0)
    assert await queue.shut_down_with_drain(BOUND)
    await asyncio.gather(*workers)
    for key, added in last_add.items():
        assert last_start[key] > added, f"the last add of {key!r} was never processed"


# --- construction and metrics -------------------------------------------------------------


async def test_constructor_starts_no_task() -> None:
    before = asyncio.all_tasks()
    WorkQueue[str](Limiter())
    assert asyncio.all_tasks() == before


def test_queue_can_be_built_and_fed_outside_an_event_loop() -> None:
    queue = new_queue()
    queue.add("a")
    assert drain_now(queue) == ["a"]


async def test_metrics_report_adds_depth_latency_work_and_retries() -> None:
    clock, metrics = FakeClock(100.0), Metrics()
    queue: WorkQueue[str] = WorkQueue(Limiter(), metrics=metrics, clock=clock)
    queue.add("a")
    queue.add("a")  # coalesced: not an add
    queue.add("b")
    assert metrics.adds == 2
    assert metrics.depths[-1] == 2
    clock.now += 3
    key = queue.get_nowait()
    assert metrics.latencies == [3]
    assert metrics.depths[-1] == 1
    clock.now += 2
    queue.done(key)
    assert metrics.work == [2]
    queue.add_rate_limited("c")
    queue.add_after("d", 0)
    assert metrics.retries == 2


async def test_unfinished_work_is_reported_when_the_owner_asks() -> None:
    clock, metrics = FakeClock(100.0), Metrics()
    queue: WorkQueue[str] = WorkQueue(Limiter(), metrics=metrics, clock=clock)
    queue.update_unfinished_work()
    assert (metrics.unfinished, metrics.longest) == ([0], [0])
    queue.add("a")
    queue.add("b")
    queue.get_nowait()
    clock.now += 4
    queue.get_nowait()
    clock.now += 1
    queue.update_unfinished_work()
    assert (metrics.unfinished[-1], metrics.longest[-1]) == (6, 5)


# --- model-based test ---------------------------------------------------------------------


class QueueMachine(RuleBasedStateMachine):
    """The queue against a plain model: FIFO of dirty keys not in flight."""

    in_flight = Bundle("in_flight")

    def __init__(self) -> None:
        super().__init__()
        self.queue: WorkQueue[str] = WorkQueue(Limiter())
        self.waiting: list[str] = []
        self.dirty: set[str] = set()
        self.processing: set[str] = set()
        self.shut = False

    def _model_add(self, key: str) -> None:
        if self.shut or key in self.dirty:
            return
        self.dirty.add(key)
        if key not in self.processing:
            self.waiting.append(key)

    @rule(key=st.sampled_from("abcd"))
    def add(self, key: str) -> None:
        self.queue.add(key)
        self._model_add(key)

    @rule(key=st.sampled_from("abcd"), delay=st.sampled_from([0, -1.5]))
    def add_after_without_delay(self, key: str, delay: float) -> None:
        self.queue.add_after(key, delay)
        self._model_add(key)

    @precondition(lambda self: bool(self.waiting))
    @rule(target=in_flight)
    def get(self) -> str:
        expected = self.waiting.pop(0)
        assert self.queue.get_nowait() == expected
        self.dirty.discard(expected)
        self.processing.add(expected)
        return expected

    @precondition(lambda self: not self.waiting)
    @rule()
    def get_from_empty(self) -> None:
        with pytest.raises(ShutDown if self.shut else asyncio.QueueEmpty):
            self.queue.get_nowait()

    @rule(key=consumes(in_flight))
    def done(self, key: str) -> None:
        self.queue.done(key)
        self.processing.remove(key)
        if key in self.dirty:
            self.waiting.append(key)

    @rule(key=st.sampled_from("abcd"))
    def done_without_get(self, key: str) -> None:
        if key not in self.processing:
            with pytest.raises(ValueError, match="not being processed"):
                self.queue.done(key)

    @rule()
    def shut_down(self) -> None:
        self.queue.shut_down()
        self.shut = True

    @invariant()
    def matches_model(self) -> None:
        q = self.queue
        assert len(q) == len(self.waiting)
        assert q.waiting_keys() == self.waiting
        assert q._dirty == self.dirty
        assert set(q._processing) == self.processing
        assert set(q._added_at) == q._dirty
        for key in q._dirty | set(q._processing):
            assert (key in q._entry) == (key in q._dirty and key not in q._processing)


def test_queue_behaves_like_its_model() -> None:
    run_state_machine_as_test(
        QueueMachine, settings=settings(max_examples=150, stateful_step_count=40,
                                        deadline=None))
