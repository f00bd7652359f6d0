"""Exponential backoff with jitter: the one formula every retry in Sniffer waits by.

Contract:
* `backoff_delay(failures, base=, cap=, jitter=)` is ``min(cap, base * 2**failures)``
  scaled by a random factor in ``[1 - jitter, 1]``: never longer than `cap`, never
  shorter than ``(1 - jitter)`` of the capped value, so retries of many callers that
  failed together spread out instead of arriving in lockstep. ``jitter=0`` is plain
  doubling; ``jitter=0.5`` is "equal jitter" (uniform in [c/2, c]).
* Any number of failures is fine (the cap is reached long before 2**failures overflows).
* `Backoff` counts failures for one caller: `next()` after a failure, `reset()` after a
  success. Neither sleeps; the caller waits the delay however it waits.
* Randomness comes from the `rng` passed in (a seeded `random.Random` in tests).
"""

from __future__ import annotations

import random

_MAX_EXPONENT = 1023  # 2.0**1024 overflows; any cap is reached long before


def check_backoff(base: float, cap: float, jitter: float) -> None:
    """Raise `ValueError` naming the argument unless 0 < base <= cap and 0 <= jitter < 1."""
    if not 0 < base <= cap:
        raise ValueError(f"base_delay: must be > 0 and <= max_delay "
                         f"(got {base!r}, max_delay {cap!r})")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter: must be in [0, 1) (got {jitter!r})")


def backoff_delay(failures: int, *, base: float, cap: float, jitter: float = 0.0,
                  rng: random.Random | None = None) -> float:
    """The delay before retry number `failures` + 1 (`failures` >= 0 so far)."""
    delay = cap if failures >= _MAX_EXPONENT else min(base * 2.0 ** failures, cap)
    if jitter:
        delay *= 1.0 - jitter * (rng or random).random()
    return delay


class Backoff:
    """Failures of one caller so far, and the delay the next retry waits."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, *, jitter: float = 0.5,
                 rng: random.Random | None = None) -> None:
        check_backoff(base, cap, jitter)
        self._base, self._cap, self._jitter = base, cap, jitter
        self._rng = rng or random.Random()
        self._failures = 0

    def next(self) -> float:
        """Count one more failure; the delay to wait before the retry."""
        delay = backoff_delay(self._failures, base=self._base, cap=self._cap,
                              jitter=self._jitter, rng=self._rng)
        self._failures = min(self._failures + 1, _MAX_EXPONENT)
        return delay

    def reset(self) -> None:
        """A success: the next failure waits the base delay again."""
        self._failures = 0
