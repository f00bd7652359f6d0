"""reconcile.batch: many repairs at once, and the shutdown order of a pass (no I/O: a
scripted repairer; the same code on the testbed is in tests/test_reconcile.py)."""

from __future__ import annotations

import asyncio

import pytest

from reconcile.batch import repair_all, until_stopped
from reconcile.mismatch import Mismatch, MismatchKind, PodRef
from reconcile.repair import RepairOutcome, RepairResult
from sniffer.states import Derived, WorkloadState

NEVER = 3600.0  # a drain deadline no test reaches


def mismatch(run_id: str, kind: MismatchKind = MismatchKind.POD_AHEAD) -> Mismatch:
    target = Derived(WorkloadState.FAILED, "Error", None, 1) if kind in (
        MismatchKind.POD_AHEAD, MismatchKind.POD_LOST) else None
    return Mismatch(kind, run_id, WorkloadState.RUNNING, PodRef("ns", f"p-{run_id}", "u"),
                    "detail", target=target,
                    release_finalizer=kind is MismatchKind.FINALIZER_LEFT)


class Scripted:
    """A repairer whose repairs wait until released; it counts how many run at once."""

    def __init__(self, *, hold: bool = False) -> None:
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.started: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self.some_started = asyncio.Event()

    async def repair(self, m: Mismatch) -> RepairResult:
        assert m.run_id is not None
        self.started.append(m.run_id)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.some_started.set()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return RepairResult(m, RepairOutcome.REPAIRED, f"repaired {m.run_id}")


async def test_one_result_per_mismatch_in_input_order() -> None:
    ms = [mismatch(f"r{i}") for i in range(7)]
    results = await repair_all(Scripted(), ms, asyncio.Event(), concurrency=3,
                               drain_timeout_s=NEVER)
    assert [r.mismatch for r in results] == ms
    assert {r.outcome for r in results} == {RepairOutcome.REPAIRED}


async def test_at_most_concurrency_repairs_run_at_once() -> None:
    repairer = Scripted(hold=True)
    work = asyncio.create_task(repair_all(
        repairer, [mismatch(f"r{i}") for i in range(10)], asyncio.Event(), concurrency=3,
        drain_timeout_s=NEVER))
    await repairer.some_started.wait()
    for _ in range(100):  # let every worker reach its repair
        await asyncio.sleep(0)
    assert repairer.running == 3
    repairer.release.set()
    assert len(await work) == 10
    assert repairer.most_at_once == 3


async def test_report_only_kinds_are_reported_and_a_dry_run_only_plans() -> None:
    repairer = Scripted()
    ms = [mismatch("r1"), mismatch("r2", MismatchKind.ORPHAN_POD),
          mismatch("r3", MismatchKind.FINALIZER_LEFT)]
    results = await repair_all(repairer, ms, asyncio.Event(), concurrency=2,
                               drain_timeout_s=NEVER, dry_run=True)
    assert [(r.outcome, r.action) for r in results] == [
        (RepairOutcome.PLANNED, "would set failed (Error)"),
        (RepairOutcome.REPORTED, "none: reported for a human"),
        (RepairOutcome.PLANNED, "would remove finalizer sniffer.io/outcome")]
    assert repairer.started == []


async def test_after_stop_no_repair_starts_and_in_flight_ones_drain() -> None:
    repairer = Scripted(hold=True)
    stop = asyncio.Event()
    work = asyncio.create_task(repair_all(
        repairer, [mismatch(f"r{i}") for i in range(5)], stop, concurrency=2,
        drain_timeout_s=NEVER))
    await repairer.some_started.wait()
    for _ in range(100):  # let both workers reach their repair
        await asyncio.sleep(0)
    stop.set()
    for _ in range(100):  # the drain has begun; nothing new starts
        await asyncio.sleep(0)
    repairer.release.set()  # the two in flight finish within the drain
    results = await work
    assert [r.outcome for r in results] == [RepairOutcome.REPAIRED] * 2 + [
        RepairOutcome.NOT_ATTEMPTED] * 3
    assert repairer.started == ["r0", "r1"]


async def test_in_flight_repairs_past_the_drain_deadline_are_interrupted() -> None:
    repairer = Scripted(hold=True)  # never released
    stop = asyncio.Event()
    work = asyncio.create_task(repair_all(
        repairer, [mismatch(f"r{i}") for i in range(3)], stop, concurrency=2,
        drain_timeout_s=0.01))
    await repairer.some_started.wait()
    for _ in range(100):  # let both workers reach their repair
        await asyncio.sleep(0)
    stop.set()
    results = await work
    # The third was never reached; without a result it counts as interrupted too (the
    # pass is incomplete either way, and the next pass finds out).
    assert [r.outcome for r in results] == [RepairOutcome.INTERRUPTED] * 3
    assert repairer.started == ["r0", "r1"]
    assert repairer.running == 0  # cancelled, not left running


async def test_until_stopped_returns_the_works_result() -> None:
    async def work() -> int:
        return 7

    assert await until_stopped(work(), asyncio.Event()) == 7


class Endless:
    """Work that runs until cancelled, and says when it started and was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def work(self) -> int:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return 1


async def test_until_stopped_without_drain_cancels_the_work_at_once_and_returns_none(
        ) -> None:
    endless, stop = Endless(), asyncio.Event()
    waiting = asyncio.create_task(until_stopped(endless.work(), stop))
    await endless.started.wait()
    stop.set()
    assert await waiting is None
    assert endless.cancelled.is_set()


async def test_until_stopped_passes_on_the_works_error() -> None:
    async def work() -> int:
        raise LookupError("listing failed")

    with pytest.raises(LookupError, match="listing failed"):
        await until_stopped(work(), asyncio.Event())


async def test_cancelling_the_caller_cancels_the_work_and_is_re_raised() -> None:
    endless = Endless()
    caller = asyncio.create_task(until_stopped(endless.work(), asyncio.Event(),
                                               drain_timeout_s=NEVER))
    await endless.started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert endless.cancelled.is_set()
