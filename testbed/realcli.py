"""``sniffer testbed simulate --node real ...``: play real-node lifecycles and say how each
ended (and, with ``--record DIR``, store what the kubelet wrote as fixtures).

Contract:

* `main(argv)` returns 0 when every play ended and, with ``--check``, every run on the
  platform holds its expected state, reason and exit code; 1 otherwise (the summary says
  which); 2 for bad options.
* Defaults come from ``.testbed/env`` (KUBECONFIG, SNIFFER_PLATFORM_URL,
  SNIFFER_PLATFORM_TOKEN_FILE, SNIFFER_TESTBED_IMAGE), which `testbed.cli` loads.
* ``--check`` needs a `sniffer watch` running against the same testbed: it waits up to
  ``--check-within`` seconds for the platform to hold every expected outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from sniffer.kube import KubeClient
from testbed import kubeletrecord
from testbed.realcatalogue import CATALOGUE
from testbed.realdriver import RealResult, drive
from testbed.simulator.lifecycles import Expectation


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sniffer testbed simulate --node real",
        description="Play pod lifecycles for real on the testbed's real node: the kubelet, "
                    "the scheduler and the controllers write every status.")
    p.add_argument("--node", choices=["real"], required=True)
    p.add_argument("--lifecycles", default=",".join(CATALOGUE), metavar="NAME,...",
                   help="lifecycles to play, all at once (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="print the catalogue and exit")
    p.add_argument("--namespace", default="sniffer-real", help="pod namespace")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--platform-url", default=os.environ.get("SNIFFER_PLATFORM_URL"))
    p.add_argument("--platform-token-file", type=Path,
                   default=os.environ.get("SNIFFER_PLATFORM_TOKEN_FILE"))
    p.add_argument("--image", default=os.environ.get("SNIFFER_TESTBED_IMAGE"),
                   help="workload image on the node (default $SNIFFER_TESTBED_IMAGE)")
    p.add_argument("--crashloop-restarts", type=int, default=5,
                   help="restarts after which a crash-looping pod is reaped; Sniffer's "
                   "states.crashloop_failure_restarts (default 5)")
    p.add_argument("--decided-within", type=float, default=60.0, metavar="S",
                   help="how long to wait for the platform to decide a stuck pod before "
                   "reaping it anyway (default 60)")
    p.add_argument("--record", type=Path, default=None, metavar="DIR",
                   help="write each lifecycle's pod versions as a kubelet fixture in DIR "
                   f"(the repository's are in {kubeletrecord.FIXTURES})")
    p.add_argument("--check", action="store_true",
                   help="then wait for the platform to hold every expected outcome")
    p.add_argument("--check-within", type=float, default=120.0, metavar="S")
    return p


def _catalogue() -> str:
    return "\n".join(f"{lc.name:24} {lc.kind.value:9} → {lc.outcome.state.value:9} "
                     f"{lc.outcome.reason or '':22} {lc.description}"
                     for lc in CATALOGUE.values())


async def _platform_runs(url: str, token: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
        for run_id in ids:
            async with s.get(f"{url.rstrip('/')}/api/v1/runs/{run_id}") as r:
                if r.status == 200:
                    out[run_id] = await r.json()
    return out


def _wrong(expected: dict[str, Expectation], runs: dict[str, dict[str, Any]]) -> list[str]:
    from testbed.verdict import mismatches
    return [f"{m.run_id}: expected {m.expected}, platform has {m.actual}"
            for m in mismatches(expected, runs)]


async def _run(args: argparse.Namespace, names: list[str]) -> tuple[RealResult, list[str]]:
    kube = await KubeClient.connect(kubeconfig=args.kubeconfig)
    try:
        result = await drive(kube, args.platform_url, args.platform_token_file, names,
                             namespace=args.namespace, image=args.image,
                             crashloop_restarts=args.crashloop_restarts,
                             decided_within_s=args.decided_within)
    finally:
        await kube.close()
    wrong: list[str] = []
    if args.check:
        deadline = time.monotonic() + args.check_within
        token = args.platform_token_file.read_text().strip()
        while True:
            runs = await _platform_runs(args.platform_url, token, list(result.expected))
            wrong = _wrong(result.expected, runs)
            if not wrong or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    return result, wrong


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(_catalogue())
        return 0
    names = [n for n in args.lifecycles.split(",") if n]
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown:
        parser.error(f"--lifecycles: unknown {', '.join(unknown)} (see --list)")
    for option in ("kubeconfig", "platform_url", "platform_token_file", "image"):
        if not getattr(args, option):
            parser.error(f"--{option.replace('_', '-')} is required (or `sniffer testbed up "
                         "--node real` first, whose .testbed/env gives it)")
    result, wrong = asyncio.run(_run(args, names))
    by_run = {p.run_id: p for p in result.plays}
    print(f"played {len(result.plays)} lifecycles on the real node in {result.elapsed_s:.1f} s; "
          f"errors {len(result.errors)}")
    for run_id, play in by_run.items():
        lc = play.lifecycle
        status = result.errors.get(run_id, "ended")
        print(f"  {run_id} {lc.name:24} expect {lc.outcome.state.value}/{lc.outcome.reason}"
              f"  {status}")
        if args.record is not None and run_id not in result.errors:
            kubeletrecord.write(args.record,
                                kubeletrecord.fixture(lc, result.histories[run_id]))
    for line in wrong:
        print(f"  MISMATCH {line}")
    if args.record is not None:
        print(f"  fixtures written to {args.record}")
    return 1 if result.errors or wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
