"""``python -m bench``: run the benchmark scenarios side by side and write the results.

``--quick`` is the smoke run `make bench-quick` uses: tiny sizes, one trial, the systems
of a scenario at once, and an exit status that says whether every system ended with every
run right (never a speed). Without it, the full run (three trials of every row, under an
hour on 2 cores: docs/benchmarks.md) scales its rates and its election-night size to the
API server's ceiling measured first. ``--trials N`` sets the trials of every row; they
run interleaved across systems and the report gives each figure's median and min-max.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
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
DEFAULT_SYSTEMS = ["sniffer", "sniffer-finalizers", "sniffer-defaults", "client-go",
                   "client-go-json", "kopf", "baseline-serial"]
FINALIZING = ("sniffer-finalizers", "sniffer-defaults")
"""Systems that add their finalizer to running pods: kept out of the cold start, whose
namespace every system's trials share (later trials would meet pods already carrying it)."""
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
    p.add_argument("--trials", type=int, help="trials of each system per row, interleaved "
                   "(default 3; 1 with --quick)")
    p.add_argument("--out", type=Path, default=_REPO / "bench" / "results",
                   help="results directory (default bench/results)")
    p.add_argument("--cold-sizes", help="comma-separated pod counts for d+e "
                   "(default 10000,100000)")
    p.add_argument("--keep", action="store_true", help="keep the testbed's directory")
    p.add_argument("--slow-burst", action="store_true", help="also run the election-night "
                   "burst with the slow platform (API-server-bound on small machines)")
    p.add_argument("--profile", action="store_true", help="record py-spy profiles of the "
                   "sniffer systems' measured windows into <out>/<stamp>-profiles/")
    return p.parse_args(argv)


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick_run() if args.quick else Sizes.full_run()
    if args.trials is not None:
        if args.trials < 1:
            raise SystemExit("--trials must be at least 1")
        sizes = replace(sizes, trials=args.trials)
    if args.cold_sizes:
        sizes = sizes.with_cold_sizes(tuple(int(v) for v in args.cold_sizes.split(",")))
    return sizes


async def _scenario(name: str, h: Harness, sizes: Sizes, systems: list[str],
                    args: argparse.Namespace, workdir: Path) -> None:
    """One scenario, with the systems it runs (some leave out a variant: see the doc)."""
    if name == "steady":
        await run_steady(h, sizes, systems)
    elif name == "election":
        await run_election(h, sizes, systems)
    elif name == "slow":
        slow_systems = systems if args.quick else [
            s for s in systems if s != "sniffer-finalizers"]
        extra = () if args.quick or "sniffer" not in systems else ("sniffer-w256",)
        await run_slow(h, sizes, slow_systems, burst=args.slow_burst, burst_extra=extra)
    elif name == "catchup":
        catchup_systems = [s for s in systems if s != "sniffer-finalizers"]
        if not args.quick and "sniffer" in systems:
            catchup_systems.insert(1, "sniffer-w256")
        await run_catchup(h, sizes, catchup_systems, workdir)
    elif name == "cold":
        await run_cold(h, sizes, [s for s in systems if s not in FINALIZING], workdir)


async def _run(args: argparse.Namespace, tb: Testbed, workdir: Path) -> dict[str, Any]:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems: {unknown} (known: {', '.join(SYSTEMS)})")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    sizes = _sizes(args)
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    kube = Kube(tb.api, concurrency=256)
    h = Harness(tb, kube, _say, logdir, parallel=args.quick, profile_dir=args.profile_dir,
                trials=sizes.trials)
    doc: dict[str, Any] = {"ceiling": None, "trials": sizes.trials, "scenario_s": {}}
    try:
        t0 = time.monotonic()
        if "ceiling" in scenarios or not args.quick:
            c = await ceiling(h, sizes)
            doc["ceiling"] = c.to_json()
            sizes = sizes.scaled(c)
            doc["scenario_s"]["ceiling"] = time.monotonic() - t0
        doc["sizes"] = sizes.__dict__
        _say(f"sizes: {sizes}; {sizes.trials} trial(s) of each system per row")
        for name in SCENARIOS[1:]:
            if name in scenarios:
                t0 = time.monotonic()
                await _scenario(name, h, sizes, systems, args, workdir)
                doc["scenario_s"][name] = time.monotonic() - t0
    finally:
        await kube.close()
    doc["results"] = h.results
    return doc


def _failures(doc: dict[str, Any]) -> list[str]:
    problems = []
    for f in doc["results"]:
        if f["scenario"] == "idle":
            continue
        name = f"{f['scenario']} {f['system']} {f.get('params')} #{f.get('trial', 0) + 1}"
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
