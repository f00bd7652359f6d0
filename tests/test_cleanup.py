"""bounded(): a cleanup step runs to its end, shielded and bounded in time."""

from __future__ import annotations

import asyncio
import logging

import pytest

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


def _steps_logged(caplog: pytest.LogCaptureFixture, message: str) -> list[str | None]:
    return [getattr(r, "step", None) for r in caplog.records if r.getMessage() == message]


async def test_a_failing_step_is_logged_and_the_steps_after_it_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    async def broken() -> None:
        raise OSError("connection reset")

    async def next_step() -> None:
        ran.append("next")

    with caplog.at_level(logging.WARNING, logger="sniffer.cleanup"):
        await bounded(broken(), "closing the platform client")
        await bounded(next_step(), "releasing the lease")
    assert ran == ["next"]
    assert _steps_logged(caplog, "cleanup failed") == ["closing the platform client"]


async def test_a_timed_out_step_is_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sniffer.cleanup"):
        await bounded(asyncio.Event().wait(), "closing the kube client", timeout_s=0.01)
    assert _steps_logged(caplog, "cleanup timed out") == ["closing the kube client"]


async def test_a_step_that_fails_while_cancelled_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    async def step() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("close failed half-way") from None

    with caplog.at_level(logging.WARNING, logger="sniffer.cleanup"):
        await bounded(step(), "closing", timeout_s=0.01)
    assert _steps_logged(caplog, "cleanup failed after its cancellation") == ["closing"]


async def test_a_cancelled_caller_waits_for_a_hung_step_only_until_the_timeout() -> None:
    started = asyncio.Event()
    cancelled: list[str] = []

    async def step() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("step")
            raise

    task = asyncio.ensure_future(bounded(step(), "closing", timeout_s=0.05))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == ["step"], "the hung step was cancelled, not left running"
