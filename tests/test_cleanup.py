"""bounded(): a cleanup step runs to its end, shielded and bounded in time."""

from __future__ import annotations

import asyncio

from sniffer.cleanup import bounded


async def test_a_step_that_finishes_in_time_runs_to_completion():
    done: list[str] = []

    async def step() -> str:
        await asyncio.sleep(0)
        done.append("closed")
        return "closed"

    await bounded(step(), "closing", timeout_s=5.0)
    assert done == ["closed"]


async def test_a_timed_out_step_is_cancelled_and_its_cleanup_runs_before_bounded_returns():
    hung = asyncio.Event()  # never set: the step hangs until cancelled
    cleaned: list[str] = []

    async def step() -> None:
        try:
            await hung.wait()
        except asyncio.CancelledError:
            for _ in range(3):  # a short cleanup that itself awaits
                await asyncio.sleep(0)
            cleaned.append("cleaned up")
            raise

    await bounded(step(), "closing", timeout_s=0.01)
    assert cleaned == ["cleaned up"]


async def test_a_step_that_ignores_cancellation_cannot_hang_bounded():
    cleaned: list[str] = []
    release = asyncio.Event()

    async def step() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # swallows the cancellation and keeps hanging
            cleaned.append("late")

    task = asyncio.ensure_future(
        bounded(step(), "closing", timeout_s=0.01, cancel_grace_s=0.01))
    await asyncio.wait_for(task, 5)
    assert cleaned == []
    release.set()  # let the stray step end so the test leaves no task behind
    for _ in range(5):
        await asyncio.sleep(0)
    assert cleaned == ["late"]


async def test_the_callers_cancellation_still_propagates_after_the_step_finished():
    finished: list[str] = []
    started = asyncio.Event()

    async def step() -> None:
        started.set()
        for _ in range(3):
            await asyncio.sleep(0)
        finished.append("done")

    task = asyncio.ensure_future(bounded(step(), "closing", timeout_s=5.0))
    await started.wait()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("bounded swallowed the caller's cancellation")
    assert finished == ["done"]
