"""Bounded, shielded cleanup for a written shutdown order.

Contract:
* `bounded(awaitable, what)` runs one cleanup step (close a client, release a lease)
  shielded from cancellation, for at most `timeout_s`: a second signal cannot skip the
  step, and a hung server cannot hang the exit.
* A step that runs out of time is cancelled and awaited for at most `cancel_grace_s`
  more: `bounded` returns only once the step really finished (its own cleanup on
  cancellation included), unless the step ignores the cancellation past that grace.
* A step that fails or times out is logged (with `what`) and does not stop the steps
  after it. A `CancelledError` arriving meanwhile is re-raised once the step finished
  (or ran out of time), as asyncio requires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

log = logging.getLogger(__name__)

CLEANUP_TIMEOUT_S = 5.0
CANCEL_GRACE_S = 1.0


async def bounded(awaitable: Awaitable[object], what: str, *,
                  timeout_s: float = CLEANUP_TIMEOUT_S,
                  cancel_grace_s: float = CANCEL_GRACE_S) -> None:
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except TimeoutError:
        log.warning("cleanup timed out", extra={"step": what})
        task.cancel()
        # asyncio.wait neither raises the step's outcome nor cancels it again; a
        # CancelledError of our caller still propagates from here.
        await asyncio.wait({task}, timeout=cancel_grace_s)
        if not task.done():
            log.warning("cleanup ignored its cancellation; leaving it behind",
                        extra={"step": what})
        elif not task.cancelled() and task.exception() is not None:
            log.warning("cleanup failed after its cancellation",
                        extra={"step": what, "error": str(task.exception())})
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(task, timeout_s)
        except Exception:  # noqa: BLE001 - the cancellation re-raised below is what matters
            log.warning("cleanup interrupted", extra={"step": what})
        raise
    except Exception as exc:  # noqa: BLE001 - a failed step must not stop the steps after it
        log.warning("cleanup failed", extra={"step": what, "error": str(exc)})
