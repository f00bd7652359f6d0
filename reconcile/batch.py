"""A pass's repairs, many at once, and the one shutdown order of a pass.

Contract:
* `repair_all(repairer, mismatches, stop, concurrency=, drain_timeout_s=, dry_run=)`
  returns one `RepairResult` per mismatch, in input order, running at most
  `concurrency` repairs (`Repairer.repair`) at once. One repair's failure never stops
  the others (`Repairer.repair` turns every error into a FAILED result).
* Report-only kinds are REPORTED and never acted on. A dry run reads and writes nothing:
  repairable mismatches are PLANNED, with what would be done.
* Stop: once `stop` is set no repair starts (NOT_ATTEMPTED); in-flight ones get
  `drain_timeout_s`, then are cancelled (INTERRUPTED: the write may or may not have
  landed; the next pass finds out, as every write is idempotent).
* `until_stopped(work, stop, drain_timeout_s=)` is that shutdown order for any awaitable
  (the listing uses it with no drain: nothing was written yet, so it is cancelled at
  once). It returns `work`'s result, or None iff `work` was cancelled because `stop`
  was set; an exception of `work` propagates. `work` never outlives the call, and a
  `CancelledError` aimed at the caller is always re-raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar

from reconcile.mismatch import Mismatch
from reconcile.repair import RepairOutcome, RepairResult
from sniffer.podview import OUTCOME_FINALIZER

log = logging.getLogger(__name__)
T = TypeVar("T")


class OneRepair(Protocol):
    """The part of `reconcile.repair.Repairer` a batch needs."""

    async def repair(self, m: Mismatch) -> RepairResult: ...


async def repair_all(repairer: OneRepair, mismatches: Sequence[Mismatch],
                     stop: asyncio.Event, *, concurrency: int, drain_timeout_s: float,
                     dry_run: bool = False) -> list[RepairResult]:
    """One result per mismatch, in order (see the module docstring for `stop`)."""
    results: list[RepairResult | None] = [None] * len(mismatches)
    todo: list[int] = []
    for i, m in enumerate(mismatches):
        if not m.kind.repairable:
            results[i] = RepairResult(m, RepairOutcome.REPORTED, "none: reported for a human")
        elif dry_run:
            results[i] = RepairResult(m, RepairOutcome.PLANNED, "would " + _plan(m))
        else:
            todo.append(i)
    pending = iter(todo)

    async def worker() -> None:
        for i in pending:  # shared iterator; no await between the stop check and use
            m = mismatches[i]
            if stop.is_set():
                results[i] = RepairResult(m, RepairOutcome.NOT_ATTEMPTED,
                                          "none: the pass was stopped first")
                continue
            results[i] = await repairer.repair(m)

    async def workers() -> None:
        async with asyncio.TaskGroup() as group:
            for n in range(min(max(1, concurrency), len(todo))):
                group.create_task(worker(), name=f"reconcile-repair-{n}")

    if todo:
        await until_stopped(workers(), stop, drain_timeout_s=drain_timeout_s,
                            what="repairs")
    return [r if r is not None else RepairResult(
                mismatches[i], RepairOutcome.INTERRUPTED,
                "unknown: stopped while in flight; the next pass finds out")
            for i, r in enumerate(results)]


async def until_stopped(work: Awaitable[T], stop: asyncio.Event, *,
                        drain_timeout_s: float = 0.0, what: str = "work") -> T | None:
    """Await `work` until it ends or `stop` is set. Shutdown order: the caller's work
    stops taking new items itself (it watches `stop`) → what is in flight gets
    `drain_timeout_s` (none if 0) → `work` is cancelled. `what` names the in-flight
    items in the log lines of a drain."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and drain_timeout_s > 0:
            log.warning("stop requested: no new %s; draining in-flight ones", what,
                        extra={"drain_timeout_s": drain_timeout_s})
            try:
                await asyncio.wait_for(asyncio.shield(task), drain_timeout_s)
            except TimeoutError:
                log.warning("drain deadline passed; cancelling in-flight %s", what)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
    return None if task.cancelled() else task.result()


def _plan(m: Mismatch) -> str:
    parts = []
    if m.target is not None:
        because = f" ({m.target.reason})" if m.target.reason else ""
        parts.append(f"set {m.target.state.value}{because}")
    if m.release_finalizer:
        parts.append(f"remove finalizer {OUTCOME_FINALIZER}")
    return "; ".join(parts)
