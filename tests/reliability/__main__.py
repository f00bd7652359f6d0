"""``python -m tests.reliability``: run fault scenarios (and the soak) on a fresh testbed.

Examples::

    python -m tests.reliability --suite fast               # what `make test` runs
    python -m tests.reliability --suite full --soak 15     # what `make soak` runs
    python -m tests.reliability --only platform-outage --jobs 1200

Results: one JSON file (``--results``, default ``<dir>/results-<suite>.json``) holding
every scenario's `Result` (and the soak's samples); ``--docs PATH`` also renders the
results table into that Markdown file (see `tests.reliability.report`). Exit status 0 iff
every scenario (and the soak) passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from testbed.apiserver import start
from tests.reliability import report
from tests.reliability.harness import Bed, run_scenario
from tests.reliability.model import Result, with_load
from tests.reliability.scenarios import FAST, FULL, by_name
from tests.reliability.soak import SoakConfig, run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("fast", "full", "none"), default="fast")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", default=())
    parser.add_argument("--jobs", type=int, help="override every scenario's job count")
    parser.add_argument("--soak", type=float, metavar="MINUTES",
                        help="also run the soak for this long (>= 15 for the issue's soak)")
    parser.add_argument("--dir", type=Path,
                        help="work folder, emptied first (default .testbed/reliability/SUITE)")
    parser.add_argument("--results", type=Path)
    parser.add_argument("--docs", type=Path, help="render the table into this Markdown file")
    parser.add_argument("--command", default="", help="the command line to quote in --docs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    logging.getLogger("testbed").setLevel(logging.WARNING)
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")

    scenarios = [by_name(n) for n in args.only] if args.only else \
        list({"fast": FAST, "full": FULL, "none": ()}[args.suite])
    if args.jobs:
        scenarios = [with_load(s, jobs=args.jobs) for s in scenarios]
    workdir = (args.dir or Path(".testbed/reliability") / args.suite).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    results_path = args.results or workdir / f"results-{args.suite}.json"
    document: dict[str, Any] = {"suite": args.suite, "started_at": time.time(),
                                "command": args.command or " ".join(sys.argv),
                                "machine": _machine(), "commit": report.current_commit(),
                                "scenarios": [], "soak": None}
    ok = asyncio.run(_run(scenarios, args.soak, workdir, results_path, document))
    if args.docs:
        args.docs.write_text(report.render(document))
    print(report.summary(document))
    return 0 if ok else 1


async def _run(scenarios: list[Any], soak_minutes: float | None, workdir: Path,
               results_path: Path, document: dict[str, Any]) -> bool:
    ok = True
    server = await asyncio.to_thread(start, workdir / "kube")
    try:
        bed = Bed(server)
        for scenario in scenarios:
            logging.info("scenario %s: %s (%s)", scenario.name, scenario.faults,
                         scenario.load.describe())
            result: Result = await run_scenario(scenario, bed, workdir)
            ok &= result.ok
            document["scenarios"].append(result.to_json())
            _save(results_path, document)
            logging.info("scenario %s: %s in %.0fs %s", scenario.name,
                         "passed" if result.ok else "FAILED", result.duration_s,
                         result.problems)
        if soak_minutes:
            soak = await run_soak(replace(SoakConfig(), minutes=soak_minutes), bed, workdir)
            ok &= soak["ok"]
            document["soak"] = soak
            _save(results_path, document)
    finally:
        await asyncio.to_thread(server.stop)
        document["finished_at"] = time.time()
        _save(results_path, document)
    return ok


def _save(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1))
    tmp.replace(path)


def _machine() -> str:
    cores = os.cpu_count()
    try:
        mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text()
                           .splitlines() if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return f"{cores} cores, {mem_kib / 2**20:.0f} GiB, load average {load:.1f} at the start"


if __name__ == "__main__":
    sys.exit(main())
