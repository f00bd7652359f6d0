"""``python -m bench.gcprobe <sniffer args>``: run the `sniffer` command with its garbage
collector's pauses recorded, and optionally tuned, for `bench.gcpause`.

Contract:
* Every collection's pause (``gc.callbacks`` start → stop, `time.perf_counter`) is
  recorded by generation. At exit the summary (count, total, p50/p99/max per generation
  and over all, pauses over 1 ms and 10 ms) is written as JSON to
  ``SNIFFER_BENCH_GC_OUT``; nothing is written without it. ``all`` counts from the
  start (imports included); ``synced`` only the pauses after the pod cache was synced
  (and frozen, if asked), i.e. what the measured load sees.
* ``SNIFFER_BENCH_GC_FREEZE=1``: `gc.freeze()` once the pod cache is synced (the
  watcher's "caches synced" log line), so the long-lived cache is never traversed
  again by a collection; the summary says when it froze and how many objects.
* ``SNIFFER_BENCH_GC_THRESHOLD=a,b,c``: `gc.set_threshold(a, b, c)` before the program
  starts.
* Everything else is the program's own behaviour: the probe only observes (a callback
  costs two clock reads per collection). Bench-only: production code never imports it.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import sys
import time
from typing import Any

READY_MESSAGE = "caches synced"


class Probe:
    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.synced: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.synced_at: float | None = None
        self._started = 0.0
        self.froze_at: float | None = None
        self.frozen = 0
        self.t0 = time.monotonic()

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._started
            self.pauses[int(info["generation"])].append(pause)
            if self.synced_at is not None:
                self.synced[int(info["generation"])].append(pause)

    def freeze(self) -> None:
        if self.froze_at is None:
            gc.collect()  # what is garbage now should not be frozen
            gc.freeze()
            self.froze_at = time.monotonic() - self.t0
            self.frozen = gc.get_freeze_count()

    def summary(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, Any]:
            ordered = sorted(values)
            n = len(ordered)

            def q(p: float) -> float | None:
                return ordered[min(n - 1, int(p * n))] if n else None

            return {"count": n, "total_s": sum(ordered), "p50_s": q(0.5), "p99_s": q(0.99),
                    "max_s": ordered[-1] if n else None,
                    "over_1ms": sum(1 for v in ordered if v > 0.001),
                    "over_10ms": sum(1 for v in ordered if v > 0.010)}

        every = [v for values in self.pauses.values() for v in values]
        synced = [v for values in self.synced.values() for v in values]
        return {"threshold": gc.get_threshold(), "froze_at_s": self.froze_at,
                "frozen_objects": self.frozen, "synced_at_s": self.synced_at,
                "run_s": time.monotonic() - self.t0, "all": stats(every),
                "by_generation": {str(g): stats(v) for g, v in self.pauses.items()},
                "synced": stats(synced),
                "synced_by_generation": {str(g): stats(v) for g, v in self.synced.items()}}


def _watch_for_sync(probe: Probe, freeze: bool) -> None:
    """Mark (and freeze, if asked) when the watcher logs that its cache is synced (a
    record factory survives whatever handlers the program installs)."""
    factory = logging.getLogRecordFactory()

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if probe.synced_at is None and record.msg == READY_MESSAGE:
            if freeze:
                probe.freeze()
            probe.synced_at = time.monotonic() - probe.t0
        return record

    logging.setLogRecordFactory(make)


def main() -> int:
    probe = Probe()
    threshold = os.environ.get("SNIFFER_BENCH_GC_THRESHOLD", "").strip()
    if threshold:
        gc.set_threshold(*(int(v) for v in threshold.split(",")))
    _watch_for_sync(probe, freeze=os.environ.get("SNIFFER_BENCH_GC_FREEZE") == "1")
    out = os.environ.get("SNIFFER_BENCH_GC_OUT")
    gc.callbacks.append(probe.callback)

    def write() -> None:
        if out:
            with open(out, "w") as f:
                json.dump(probe.summary(), f, indent=1)

    atexit.register(write)
    from cli.main import main as sniffer_main
    return int(sniffer_main(sys.argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
