"""Rate limiters for work-queue retries, after client-go's `default_rate_limiters.go`.

Contract:

* A `RateLimiter` answers `when(key)`: how many seconds to wait before `key` is processed
  again. Each call counts as one more attempt (it reserves a slot or a token); callers ask
  once per retry.
* `forget(key)` ends the key's failure history (call it when the key was processed
  successfully); `num_requeues(key)` is how many retries the limiter has counted since.
* `ItemExponentialFailureRateLimiter`: per-key delay `base_delay * 2**failures`, capped at
  `max_delay`; with `jitter` in [0, 1) each delay is scaled by a random factor in
  [1 - jitter, 1], so keys never wait longer than `max_delay` and stop failing in lockstep.
* `BucketRateLimiter`: one token bucket for all keys (`qps` sustained, `burst` at once); a
  `when` that finds the bucket empty borrows the next token and returns the wait for it.
* `MaxOfRateLimiter`: the longest wait of its limiters (every limiter counts the attempt).
* `default_controller_rate_limiter()`: per-key exponential backoff and an overall bucket.
* Time comes from an injected clock; no limiter sleeps, starts tasks or does I/O.
  Single-threaded use only (one event loop).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

from sniffer.backoff import backoff_delay, check_backoff

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)

Clock = Callable[[], float]


class RateLimiter(Protocol[K_contra]):
    """What the work queue needs from a rate limiter (client-go's three methods)."""

    def when(self, key: K_contra) -> float:
        """Seconds to wait before `key` is processed again; counts one attempt."""
        ...

    def forget(self, key: K_contra) -> None:
        """Clear `key`'s history: it succeeded, or the caller gave up on it."""
        ...

    def num_requeues(self, key: K_contra) -> int:
        """Attempts counted for `key` since it was last forgotten."""
        ...


class ItemExponentialFailureRateLimiter(Generic[K]):
    """Per-key exponential backoff: base_delay, 2·base_delay, 4·base_delay, … max_delay.

    Invariant: a key is in `_failures` iff `when` was called for it since the last
    `forget`; its value is the number of those calls."""

    def __init__(self, base_delay: float = 0.005, max_delay: float = 60.0, *,
                 jitter: float = 0.0, rng: random.Random | None = None) -> None:
        check_backoff(base_delay, max_delay, jitter)
        self._base = base_delay
        self._max = max_delay
        self._jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._failures: dict[K, int] = {}

    def when(self, key: K) -> float:
        exp = self._failures.get(key, 0)
        self._failures[key] = exp + 1
        return backoff_delay(exp, base=self._base, cap=self._max, jitter=self._jitter,
                             rng=self._rng)

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        return self._failures.get(key, 0)


class BucketRateLimiter(Generic[K]):
    """One token bucket shared by all keys (golang.org/x/time/rate's `Reserve`).

    Invariant: `_tokens` is the bucket level at clock time `_last`, at most `burst`;
    it is negative iff tokens were borrowed ahead, and then `-_tokens / qps` is how long
    the last borrower waits."""

    def __init__(self, qps: float, burst: int, clock: Clock = time.monotonic) -> None:
        if not qps > 0:
            raise ValueError(f"qps: must be > 0 (got {qps!r})")
        if burst < 1:
            raise ValueError(f"burst: must be >= 1 (got {burst!r})")
        self._qps = float(qps)
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def when(self, key: K) -> float:
        now = self._clock()
        if now > self._last:  # a clock that steps back refills nothing
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
            self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._qps

    def forget(self, key: K) -> None:
        """Nothing to forget: the bucket keeps no per-key state."""

    def num_requeues(self, key: K) -> int:
        return 0


class MaxOfRateLimiter(Generic[K]):
    """The longest wait of several limiters; every one of them counts each attempt."""

    def __init__(self, *limiters: RateLimiter[K]) -> None:
        if not limiters:
            raise ValueError("limiters: at least one is required")
        self._limiters = limiters

    def when(self, key: K) -> float:
        return max([limiter.when(key) for limiter in self._limiters])

    def forget(self, key: K) -> None:
        for limiter in self._limiters:
            limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        return max(limiter.num_requeues(key) for limiter in self._limiters)


def default_controller_rate_limiter(
        *, base_delay: float = 0.005, max_delay: float = 60.0, qps: float = 10.0,
        burst: int = 100, clock: Clock = time.monotonic) -> MaxOfRateLimiter[K]:
    """client-go's `DefaultControllerRateLimiter`: per-key backoff from 5 ms, and an
    overall bucket of 10 retries/s with bursts of 100. The backoff cap is 60 s, not
    client-go's 1000 s: Sniffer counts a change as dropped after its retry limit and
    leaves it to the reconciler rather than sit on it for a quarter of an hour."""
    return MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(base_delay, max_delay),
        BucketRateLimiter(qps, burst, clock),
    )
