"""Bounded, shielded cleanup for a written shutdown order.

Contract:
* `bounded(awaitable, what)` runs one cleanup step (close a client, release a lease)
  shielded from cancellation, for at most `timeout_s`: a second signal cannot skip the
  step, and a hung server cannot hang the exit.
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


async def bounded(awaitable: Awaitable[object], what: str, *,
                  timeout_s: float = CLEANUP_TIMEOUT_S) -> None:
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except TimeoutError:
        log.warning("cleanup timed out", extra={"step": what})
        task.cancel()
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(task, timeout_s)
        except (TimeoutError, Exception):  # the cancellation below is what matters now
            log.warning("cleanup interrupted", extra={"step": what})
        raise
    except Exception as exc:
        log.warning("cleanup failed", extra={"step": what, "error": str(exc)})
