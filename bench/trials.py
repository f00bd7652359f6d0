"""Repeated trials: the order they run in, and how one row's trials combine into figures.

Contract:

* `each(systems, fn, trials=N)` calls ``fn(system, trial)`` for trials 0..N-1 in rounds:
  every system once per round (A, B, C, then A, B, C again), so a busy spell on the
  machine falls on every system instead of on one system's trials. With ``parallel`` a
  round's systems run at once (quick runs: correctness only). Systems in ``once`` run in
  the first round only (a scenario cut to one trial for them, to fit the run's budget).
* `group(results)` holds the trials of one row together: same scenario, system and
  parameters, in the order they ran; rows keep the order of their first trial.
* `spread(values)` is the median, min and max of the values that are not None, and how
  many there were; None when there are none. The median of an even count is the mean of
  the middle two (`statistics.median`).
* `cell(values, fmt)` renders ``median (min-max)`` (as bench.jobcost's table), or the
  median alone when the trials agree to the digits shown or there is one.
* `figure(trials, "latency_s.p99")` reads one figure (a dotted path into each trial's
  dict) of every trial.
* `pointwise(lists)` takes equally long lists (e.g. each trial's latency quantiles) and
  gives, index by index, the median, min and max: a median curve and its band.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Trial = dict[str, Any]


@dataclass(frozen=True)
class Spread:
    median: float
    lo: float
    hi: float
    n: int
    """How many trials had the figure (a trial may lack one, e.g. no latency)."""


def spread(values: Iterable[float | None]) -> Spread | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), len(present))


def cell(values: Iterable[float | None], fmt: str | Callable[[float], str] = ".0f", *,
         none: str = "-") -> str:
    """``median (min-max)`` in `fmt` (a format spec, or a function of the value), the
    median alone when min and max print the same; `none` when no trial has the figure."""
    s = spread(values)
    if s is None:
        return none
    render = fmt if callable(fmt) else (lambda v: format(v, fmt))
    med, lo, hi = (render(v) for v in (s.median, s.lo, s.hi))
    return med if lo == hi else f"{med} ({lo}-{hi})"


def figure(trials: Iterable[Trial], path: str) -> list[Any]:
    """The value at the dotted `path` in each trial (None where a part is missing)."""
    out: list[Any] = []
    for t in trials:
        value: Any = t
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out.append(value)
    return out


def _params_key(params: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in (params or {}).items()))


def group(results: Iterable[Trial]) -> list[list[Trial]]:
    """Trials of the same scenario, system and parameters, one list per row."""
    rows: dict[tuple[Any, ...], list[Trial]] = {}
    for t in results:
        key = (t["scenario"], t["system"], _params_key(t.get("params")))
        rows.setdefault(key, []).append(t)
    return list(rows.values())


def pointwise(lists: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """Index by index over non-empty, equally long lists: (medians, minima, maxima)."""
    present = [values for values in lists if values]
    if not present:
        return [], [], []
    n = min(len(values) for values in present)
    columns = [[values[i] for values in present] for i in range(n)]
    return ([statistics.median(c) for c in columns], [min(c) for c in columns],
            [max(c) for c in columns])


async def each(systems: Sequence[str], fn: Callable[[str, int], Awaitable[Any]], *,
               trials: int = 1, parallel: bool = False, once: Iterable[str] = ()) -> None:
    """fn(system, trial) for every trial of every system, interleaved in rounds."""
    single = set(once)
    for trial in range(trials):
        chosen = [s for s in systems if trial == 0 or s not in single]
        if parallel:
            await asyncio.gather(*(fn(s, trial) for s in chosen))
        else:
            for system in chosen:
                await fn(system, trial)
