"""The metric sink that records nothing: the default of every component that reports.

Contract:
* `NULL_METRICS` answers any method call of any metrics protocol (`PlatformMetrics`,
  `ReflectorMetrics`, `QueueMetrics`, ...) with None and does nothing else; the type
  checker accepts it wherever such a protocol is expected.
* It costs one attribute lookup and one call, like a hand-written no-op sink: the first
  lookup of a name stores the no-op on the instance, later ones find it there.
* Names of the form ``__x__`` are not answered (copy, pickle and the like look those up
  and must see them missing).
"""

from __future__ import annotations

from collections.abc import Callable


def _nothing(*args: object, **kwargs: object) -> None:
    return None


class NullMetrics:
    """Every metric call does nothing. Use the shared `NULL_METRICS`."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        self.__dict__[name] = _nothing  # found directly from now on
        return _nothing

    def __repr__(self) -> str:
        return "NULL_METRICS"


NULL_METRICS = NullMetrics()
