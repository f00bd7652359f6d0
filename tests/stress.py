"""`make test-stress`: the tests that talk to real servers, run N times under CPU load.

Contract:
* Runs pytest on the chosen test modules `--runs` times in a row (default 3). By default
  the modules are every ``tests/**/test_*.py`` that starts a real server (its source
  names the ``apiserver`` or ``platform`` fixture, or it is a reliability test): the
  tests that can be timing-sensitive. Pure unit tests are left to `make test`.
* While the runs go, `--load` busy processes (default: one per core) keep every core
  busy. They are started and stopped by this run itself; each also exits on its own when
  its parent is gone, so an interrupted run leaves no load behind.
* Prints a table of failures per test (failed or errored runs out of runs) and exits 1
  iff any test failed in any run; 0 failures means every run passed.
* Each run's JUnit report is kept under `--out` (default ``.testbed/stress``).

A test listed here failed *sometimes*: find its cause (DESIGN.md: never flaky), never
just raise a timeout.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SERVER_FIXTURES = ("apiserver", "platform")


def server_modules() -> list[Path]:
    """Test modules that start a real server (see the contract)."""
    found = []
    for path in sorted(TESTS.rglob("test_*.py")):
        text = path.read_text()
        if "reliability" in path.parts or any(f"{name}:" in text for name in SERVER_FIXTURES):
            found.append(path)
    return found


def _burn(parent: int) -> None:
    # Busy, but check now and then that the run that started us is still there.
    while True:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            pass
        if os.getppid() != parent:
            return


def failures_in(report: Path) -> list[str]:
    """Test ids (module::name) that failed or errored in one JUnit report."""
    failed = []
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="how many runs (default 3)")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2,
                        help="busy processes beside the tests (default: one per core)")
    parser.add_argument("--out", type=Path, default=Path(".testbed/stress"))
    parser.add_argument("paths", nargs="*", help="test paths (default: the server tests)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.load < 0:
        parser.error("--runs must be >= 1 and --load >= 0")
    paths = args.paths or [str(p) for p in server_modules()]
    args.out.mkdir(parents=True, exist_ok=True)
    burners = [multiprocessing.Process(target=_burn, args=(os.getpid(),), daemon=True)
               for _ in range(args.load)]
    for burner in burners:
        burner.start()
    counts: collections.Counter[str] = collections.Counter()
    broken_runs = 0
    try:
        for run in range(1, args.runs + 1):
            report = args.out / f"run-{run}.xml"
            report.unlink(missing_ok=True)
            started = time.monotonic()
            code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "not jaeger",
                                    "-p", "no:cacheprovider", f"--junitxml={report}", *paths])
            failed = failures_in(report) if report.exists() else []
            if code != 0 and not failed:
                broken_runs += 1  # pytest itself failed (collection, usage): say so below
            counts.update(failed)
            print(f"stress: run {run}/{args.runs} exit {code}, {len(failed)} failed, "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        for burner in burners:
            burner.terminate()
        for burner in burners:
            burner.join(5)
    print(f"\n{'failures':>8}  test ({args.runs} runs, {args.load} busy processes)")
    for test, n in counts.most_common():
        print(f"{n:>4}/{args.runs:<3}  {test}")
    if broken_runs:
        print(f"{broken_runs} run(s) ended with an error outside any test")
    if not counts and not broken_runs:
        print("       0  every test passed in every run")
    return 1 if counts or broken_runs else 0


if __name__ == "__main__":
    sys.exit(main())
