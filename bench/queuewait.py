"""``python -m bench.queuewait``: how long live changes wait in the work queue while a
relist's backlog is being worked off, with live-first priority and without it.

In-process, on a real event loop and the real `watch.workqueue.WorkQueue`: `--backlog`
keys are added as one relist would add them (Priority.LIST), then live keys arrive at
`--live-rate` per second while `--workers` workers take keys, each held for
`--handle-ms` (a stand-in for the handler and its platform call, awaited as they are).
Reported per mode: the live keys' queue wait (added → taken) p50/p99/max, and when the
last backlog key was taken. Modes: ``priority`` (the shipped default aging),
``fifo`` (aging 0: every key in arrival order, the queue before live-first), and
``priority-aging-N`` for `--aging` values. Speeds are read, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench.measure import percentiles
from watch.ratelimit import default_controller_rate_limiter
from watch.workqueue import DEFAULT_AGING_S, Priority, ShutDown, WorkQueue


async def one(mode: str, aging_s: float, args: argparse.Namespace) -> dict[str, object]:
    queue: WorkQueue[str] = WorkQueue(default_controller_rate_limiter(), aging_s=aging_s)
    added: dict[str, float] = {}
    live_waits: list[float] = []
    backlog_done_at = [0.0]
    taken_backlog = [0]
    t0 = time.monotonic()
    for i in range(args.backlog):
        queue.add(f"listed-{i}", Priority.LIST)

    async def worker() -> None:
        while True:
            try:
                key = await queue.get()
            except ShutDown:
                return
            now = time.monotonic()
            if key.startswith("live-"):
                live_waits.append(now - added.pop(key))
            else:
                taken_backlog[0] += 1
                if taken_backlog[0] == args.backlog:
                    backlog_done_at[0] = now - t0
            await asyncio.sleep(args.handle_ms / 1000)
            queue.done(key)

    async def live() -> None:
        interval = 1 / args.live_rate
        n = 0
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            key = f"live-{n}"
            added[key] = time.monotonic()
            queue.add(key)
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))

    workers = [asyncio.create_task(worker()) for _ in range(args.workers)]
    await live()
    await queue.shut_down_with_drain(600)  # the backlog and the last live keys go out
    await asyncio.gather(*workers)
    p = percentiles(live_waits)
    return {"mode": mode, "aging_s": aging_s, "live": len(live_waits),
            "live_wait_s": p, "backlog_done_s": backlog_done_at[0] or None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.queuewait",
                                description=__doc__.split("\n")[0])
    p.add_argument("--backlog", type=int, default=20000)
    p.add_argument("--live-rate", type=float, default=200.0)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--handle-ms", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--aging", default="", help="comma-separated extra aging values (s)")
    args = p.parse_args(argv)
    modes = [("fifo", 0.0), ("priority", DEFAULT_AGING_S)]
    modes += [(f"priority-aging-{a}", float(a)) for a in args.aging.split(",") if a]
    print(f"backlog {args.backlog} LIST keys, live {args.live_rate:g}/s for {args.seconds:g}s, "
          f"{args.workers} workers x {args.handle_ms:g} ms")
    for mode, aging in modes:
        r = asyncio.run(one(mode, aging, args))
        w = r["live_wait_s"]
        assert isinstance(w, dict)

        def ms(v: object) -> str:
            return "-" if v is None else f"{float(v) * 1000:.1f}"  # type: ignore[arg-type]

        done = r["backlog_done_s"]
        print(f"{mode:<22} live wait p50/p99/max {ms(w['p50'])}/{ms(w['p99'])}/{ms(w['max'])} "
              f"ms over {r['live']} live keys; backlog taken by "
              f"{'-' if done is None else f'{float(done):.1f}'} s")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
