"""``python -m bench.gcpause``: the garbage collector's share of `sniffer watch`'s latency.

Runs `sniffer watch` under `bench.gcprobe` at one steady rate (by default half the API
server's measured ceiling: the "p99 at 50 % load" row of docs/benchmarks.md), once per
variant, on one testbed:

* ``default``: CPython's thresholds (700, 10, 10), nothing frozen;
* ``freeze``: `gc.freeze()` once the pod cache is synced;
* ``threshold``: thresholds raised (``--threshold``, default 50000,20,100);
* ``freeze+threshold``: both.

Each variant's line: end-to-end latency p50/p99/max (the platform's acknowledgements, as
every bench row), the watcher's CPU, and its collections: count, total pause, p99 and
max pause, pauses over 10 ms, all counted after the cache synced (the load's window).
The variants run in turn (``--rounds`` times, interleaved, so a change in the machine's
load hits every variant alike); results go to ``<out>/<stamp>-gc.json``.
Speeds are read, never asserted.

``--heap 10000,100000`` measures instead, in-process, what one full (generation 2)
collection costs with a cache of that many pods' views (the slim JSON decoder's, kept as
the store keeps them), before and after `gc.freeze()`: the longest event-loop stall a
collection can cause at that size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.env import Machine, Testbed, workdir_root
from bench.kube import Kube
from bench.load import Player, steady
from bench.scenarios import Sizes, _maker, ceiling
from bench.trial import Harness, fmt_ms
from testbed.build import ensure_binaries
from testbed.simulator.workloads import Plan

_REPO = Path(__file__).resolve().parents[1]


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def variants(threshold: str) -> dict[str, dict[str, str]]:
    return {"default": {}, "freeze": {"SNIFFER_BENCH_GC_FREEZE": "1"},
            "threshold": {"SNIFFER_BENCH_GC_THRESHOLD": threshold},
            "freeze+threshold": {"SNIFFER_BENCH_GC_FREEZE": "1",
                                 "SNIFFER_BENCH_GC_THRESHOLD": threshold}}


async def _run(args: argparse.Namespace, tb: Testbed, workdir: Path) -> dict[str, Any]:
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    kube = Kube(tb.api, concurrency=256)
    h = Harness(tb, kube, _say, logdir)
    doc: dict[str, Any] = {"trials": []}
    try:
        rate = args.rate
        if rate is None:
            c = await ceiling(h, Sizes.full_run())
            doc["ceiling"] = c.to_json()
            rate = max(1.0, round(c.jobs_per_s * 0.5))
        doc["rate_jobs_per_s"] = rate
        jobs = max(1, int(rate * args.seconds))
        chosen = {k: v for k, v in variants(args.threshold).items() if k in args.variants}
        for round_ in range(args.rounds):
            for name, env in chosen.items():
                out = workdir / f"gc-{name}-{round_}.json"
                _say(f"gc {name} (round {round_ + 1}): {rate:g} jobs/s for {args.seconds:g}s")

                async def load(p: Player, plans: list[Plan]) -> None:
                    await steady(p, plans, rate)

                f = await h.trial("gc", "sniffer-gcprobe", {"variant": name, "rate": rate},
                                  _maker(jobs), load, drain_timeout=60.0,
                                  extra_env={**env, "SNIFFER_BENCH_GC_OUT": str(out)})
                gc_summary = json.loads(out.read_text()) if out.exists() else None
                doc["trials"].append({"variant": name, "round": round_,
                                      "latency_s": f["latency_s"], "cpu_s": f["cpu_s"],
                                      "acked": f["acked"], "changes": f["changes"],
                                      "wrong": f["wrong"], "gc": gc_summary})
                _say("  " + line(doc["trials"][-1]))
    finally:
        await kube.close()
    return doc


def line(t: dict[str, Any]) -> str:
    lat, g = t["latency_s"], t["gc"]
    text = (f"{t['variant']:<17} p50/p99/max {fmt_ms(lat['p50'])}/{fmt_ms(lat['p99'])}/"
            f"{fmt_ms(lat['max'])} ms, cpu {t['cpu_s']:.1f}s, acked {t['acked']}/"
            f"{t['changes']}")
    if g:
        a, g2 = g["synced"], g["synced_by_generation"]["2"]
        text += (f"; gc {a['count']} collections, {a['total_s'] * 1000:.0f} ms paused, "
                 f"p99 {fmt_ms(a['p99_s'])} ms, max {(a['max_s'] or 0) * 1000:.1f} ms, "
                 f"{a['over_10ms']} over 10 ms (gen2: {g2['count']}, "
                 f"max {(g2['max_s'] or 0) * 1000:.1f} ms)")
    return text


def full_collection_ms(pods: int, repeat: int = 5) -> dict[str, float]:
    """Best-of-`repeat` `gc.collect()` with `pods` cached views, unfrozen and frozen."""
    import gc

    from bench.decode import _decoder, _pages_for
    from sniffer.podview import project

    decode = _decoder("sniffer")
    assert decode is not None
    cache = {}
    for body in _pages_for("sniffer", pods, 500):
        for item in decode(body):
            view = project(item)
            cache[view.key] = view

    def best() -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            gc.collect()
            times.append(time.perf_counter() - t)
        return min(times) * 1000

    unfrozen = best()
    gc.freeze()
    frozen = best()
    gc.unfreeze()
    churn = _churn(cache, decode, project)
    gc.freeze()
    churn_frozen = _churn(cache, decode, project)
    gc.unfreeze()
    del cache
    return {"pods": pods, "full_collection_ms": unfrozen, "after_freeze_ms": frozen,
            **{f"churn_{k}": v for k, v in churn.items()},
            **{f"churn_frozen_{k}": v for k, v in churn_frozen.items()}}


def _churn(cache: dict[str, Any], decode: Any, project: Any) -> dict[str, float]:
    """Steady state: every cached pod updated once (a new view replaces the old, as a
    watch event does), with the default thresholds; the collections that ran."""
    import gc

    from bench.decode import _pages_for

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[int(info["generation"])].append(time.perf_counter() - started[0])

    gc.collect()
    gc.callbacks.append(callback)
    try:
        for body in _pages_for("sniffer", len(cache), 500, seed=9):
            for item in decode(body):
                view = project(item)
                cache[view.key] = view
    finally:
        gc.callbacks.remove(callback)
    return {"gen2": len(pauses[2]), "gen2_max_ms": max(pauses[2], default=0.0) * 1000,
            "all": sum(len(v) for v in pauses.values()),
            "max_ms": max((x for v in pauses.values() for x in v), default=0.0) * 1000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gcpause", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, help="jobs/s (default: half the measured ceiling)")
    p.add_argument("--seconds", type=float, default=30.0, help="load per trial")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threshold", default="50000,20,100")
    p.add_argument("--variants", default="default,freeze,threshold,freeze+threshold")
    p.add_argument("--out", type=Path, default=_REPO / "bench" / "results")
    p.add_argument("--heap", help="comma-separated pod counts: time one full collection")
    args = p.parse_args(argv)
    if args.heap:
        for pods in (int(v) for v in args.heap.split(",")):
            r = full_collection_ms(pods)
            print(f"{r['pods']:>7} cached pods: full collection {r['full_collection_ms']:.1f} "
                  f"ms, after gc.freeze() {r['after_freeze_ms']:.1f} ms; every pod updated "
                  f"once: {r['churn_all']:.0f} collections, {r['churn_gen2']:.0f} full "
                  f"(max {r['churn_gen2_max_ms']:.1f} ms); frozen first: "
                  f"{r['churn_frozen_all']:.0f}, {r['churn_frozen_gen2']:.0f} full (max "
                  f"{r['churn_frozen_gen2_max_ms']:.1f} ms)")
        return 0
    args.variants = [v.strip() for v in args.variants.split(",")]
    ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="sniffer-gc-", dir=workdir_root()))
    load0 = Machine.loadavg()
    tb = Testbed.start(workdir)
    try:
        doc = asyncio.run(_run(args, tb, workdir))
    finally:
        tb.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    doc.update(loadavg=[load0, Machine.loadavg()], cores=Machine.cores(),
               command="python -m bench.gcpause " + " ".join(argv or sys.argv[1:]))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"{stamp}-gc.json"
    path.write_text(json.dumps(doc, indent=1))
    _say(f"wrote {path}")
    for t in doc["trials"]:
        print(line(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
