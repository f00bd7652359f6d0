"""One retry after a 401, with renewed credentials: the rule both of Sniffer's clients keep.

Contract:
* `retry_once_unauthorized(attempt, unauthorized, renew)` makes `attempt()`; if its result
  is a 401 (`unauthorized(result)`) and `renew()` answers True (the credentials may have
  changed: a rotated token file, a reloaded kubeconfig), it makes `attempt()` once more.
  It returns the last result, whatever it is: the caller turns a second 401 into its
  error. Exceptions of `attempt` and `renew` propagate unchanged.
* Never more than two attempts, so a credential that is simply wrong costs one extra
  request, not a loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def retry_once_unauthorized(attempt: Callable[[], Awaitable[T]],
                                  unauthorized: Callable[[T], bool],
                                  renew: Callable[[], Awaitable[bool]]) -> T:
    """The result of `attempt`, made a second time after a 401 and a successful renewal."""
    result = await attempt()
    if unauthorized(result) and await renew():
        result = await attempt()
    return result
