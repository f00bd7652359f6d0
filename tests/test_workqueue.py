"""watch.workqueue: every guarantee of the module docstring, and a model-based test."""

from __future__ import annotations

import asyncio
import itertools
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

from tests.fixtures.timers import FakeTimers
from watch.workqueue import ShutDown, WorkQueue

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
        self.work: list[float] = []
        self.unfinished: list[float] = []
        self.longest: list[float] = []

    def add(self) -> None:
        self.adds += 1

    def depth(self, depth: int) -> None:
        self.depths.append(depth)

    def get(self, queued_s: float) -> None:
        self.latencies.append(queued_s)

    def done(self, work_s: float) -> None:
        self.work.append(work_s)

    def retry(self) -> None:
        self.retries += 1

    def unfinished_work(self, seconds: float) -> None:
        self.unfinished.append(seconds)

    def longest_running_processor(self, seconds: float) -> None:
        self.longest.append(seconds)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


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
    live = {(due, key) for due, _, key in queue._heap if queue._waiting.get(key) == due}
    assert {key for _, key in live} == set(queue._waiting)
    assert (queue._timer is not None) == bool(queue._waiting)
    if queue._waiting:
        assert queue._timer_at == min(queue._waiting.values())


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
            assert queue._waiting[key] <= loop.time() + delay
            if key not in due or due[key][0] != queue._waiting[key]:
                # Fake time is exact, so keys can fall due at the same instant: those
                # come out in the order their delays were set.
                due[key] = (queue._waiting[key], next(order))
        check_delay_invariants(queue)
        while len(queue):  # keys added at once are handled right away
            done_key = queue.get_nowait()
            queue.done(done_key)
        if rng.random() < 0.2:
            loop.advance(0.003)
            check_delay_invariants(queue)
            for key in [k for k, d in due.items() if k not in queue._waiting]:
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
    assert not queue._waiting and queue._timer is None


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
    clock, metrics = FakeClock(), Metrics()
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
    clock, metrics = FakeClock(), Metrics()
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
            with pytest.raises(ValueError):
                self.queue.done(key)

    @rule()
    def shut_down(self) -> None:
        self.queue.shut_down()
        self.shut = True

    @invariant()
    def matches_model(self) -> None:
        q = self.queue
        assert len(q) == len(self.waiting)
        assert list(q._queue) == self.waiting
        assert q._dirty == self.dirty
        assert set(q._processing) == self.processing
        assert set(q._added_at) == q._dirty
        for key in q._dirty | set(q._processing):
            assert (key in q._queue) == (key in q._dirty and key not in q._processing)


def test_queue_behaves_like_its_model() -> None:
    run_state_machine_as_test(
        QueueMachine, settings=settings(max_examples=150, stateful_step_count=40,
                                        deadline=None))
