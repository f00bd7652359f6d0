"""``python -m bench``: run the benchmark scenarios side by side and write the results.

``--quick`` is the smoke run `make bench-quick` uses: tiny sizes, the systems of a scenario
at once, and an exit status that says whether every system ended with every run right
(never a speed). Without it, the full run (~30 minutes on 2 cores) scales its rates and
its election-night size to the API server's ceiling measured first.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import report
from bench.cold import run_catchup, run_cold
from bench.env import Machine, Testbed, workdir_root
from bench.gobuild import ensure_clientgo_peer
from bench.kube import Kube
from bench.scenarios import Sizes, ceiling, run_election, run_slow, run_steady
from bench.systems import SYSTEMS
from bench.trial import Harness
from testbed.build import ensure_binaries

SCENARIOS = ("ceiling", "steady", "election", "slow", "catchup", "cold")
DEFAULT_SYSTEMS = ["sniffer", "sniffer-finalizers", "client-go", "kopf", "baseline-serial"]
_REPO = Path(__file__).resolve().parents[1]


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, asserts "
                   "correctness only")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    p.add_argument("--out", type=Path, default=_REPO / "bench" / "results",
                   help="results directory (default bench/results)")
    p.add_argument("--cold-sizes", help="comma-separated pod counts for d+e "
                   "(default 10000,50000,100000)")
    p.add_argument("--keep", action="store_true", help="keep the testbed's directory")
    p.add_argument("--slow-burst", action="store_true", help="also run the election-night "
                   "burst with the slow platform (API-server-bound on small machines)")
    p.add_argument("--profile", action="store_true", help="record py-spy profiles of the "
                   "sniffer systems' measured windows into <out>/<stamp>-profiles/")
    return p.parse_args(argv)


async def _run(args: argparse.Namespace, tb: Testbed, workdir: Path) -> dict[str, Any]:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems: {unknown} (known: {', '.join(SYSTEMS)})")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    sizes = Sizes.quick_run() if args.quick else Sizes.full_run()
    if args.cold_sizes:
        counts = tuple(int(v) for v in args.cold_sizes.split(","))
        sizes = Sizes(**{**sizes.__dict__, "cold_sizes": counts,
                         "cold_timeout_s": (sizes.cold_timeout_s * 3)[:len(counts)]})
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    kube = Kube(tb.api, concurrency=256)
    h = Harness(tb, kube, _say, logdir, parallel=args.quick, profile_dir=args.profile_dir)
    doc: dict[str, Any] = {"ceiling": None}
    try:
        if "ceiling" in scenarios or not args.quick:
            c = await ceiling(h, sizes)
            doc["ceiling"] = c.to_json()
            sizes = sizes.scaled(c)
        doc["sizes"] = sizes.__dict__
        _say(f"sizes: {sizes}")
        if "steady" in scenarios:
            await run_steady(h, sizes, systems)
        if "election" in scenarios:
            await run_election(h, sizes, systems)
        if "slow" in scenarios:
            slow_systems = systems if args.quick else [
                s for s in systems if s != "sniffer-finalizers"]
            extra = () if args.quick or "sniffer" not in systems else ("sniffer-w256",)
            await run_slow(h, sizes, slow_systems, burst=args.slow_burst, burst_extra=extra)
        if "catchup" in scenarios:
            catchup_systems = [s for s in systems if s != "sniffer-finalizers"]
            if not args.quick and "sniffer" in systems:
                catchup_systems.insert(1, "sniffer-w256")
            await run_catchup(h, sizes, catchup_systems, workdir)
        if "cold" in scenarios:
            cold_systems = [s for s in systems if s != "sniffer-finalizers"]
            await run_cold(h, sizes, cold_systems, workdir)
    finally:
        await kube.close()
    doc["results"] = h.results
    return doc


def _failures(doc: dict[str, Any]) -> list[str]:
    problems = []
    for f in doc["results"]:
        if f["scenario"] == "idle":
            continue
        name = f"{f['scenario']} {f['system']} {f.get('params')}"
        if f["scenario"] in ("cold", "catchup"):
            if not f["done"] or f["wrong"]:
                problems.append(f"{name}: done={f['done']} wrong={f['wrong']} "
                                f"{f['wrong_examples']}")
            continue
        if f["wrong"] or f["missing"] or f["not_acknowledged_at_end"] or f["load_errors"]:
            problems.append(f"{name}: wrong={f['wrong']} missing={f['missing']} "
                            f"late={f['not_acknowledged_at_end']} load errors="
                            f"{f['load_errors']} {f['wrong_examples']} "
                            f"{f['load_error_examples']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    out = args.out / "quick" if args.quick else args.out
    args.profile_dir = None
    if args.profile:
        args.profile_dir = out / f"{stamp}-profiles"
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    _say("building (cached): testbed binaries, client-go peer")
    ensure_binaries()
    ensure_clientgo_peer()
    workdir = Path(tempfile.mkdtemp(prefix="sniffer-bench-", dir=workdir_root()))
    load0 = Machine.loadavg()
    _say(f"testbed in {workdir}; load average {load0:.1f}")
    tb = Testbed.start(workdir)
    try:
        doc = asyncio.run(_run(args, tb, workdir))
    finally:
        tb.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    doc.update(stamp=stamp, quick=args.quick, commit=_commit(),
               duration_s=time.time() - started,
               machine={"cores": Machine.cores(),
                        "memory_gib": psutil.virtual_memory().total / 2**30,
                        "loadavg_start": load0, "loadavg_end": Machine.loadavg()})
    paths = report.write(doc, out)
    _say("wrote " + ", ".join(str(p) for p in paths))
    problems = _failures(doc)
    for p in problems:
        _say(f"{'FAIL' if args.quick else 'NOTE (not done in time)'} {p}")
    if args.quick:
        _say("bench-quick: " + ("every system ended with every run right" if not problems
                                else f"{len(problems)} trials ended wrong"))
        return 1 if problems else 0
    return 0  # a full run reports late or wrong runs as figures, not as a failure


if __name__ == "__main__":
    sys.exit(main())
