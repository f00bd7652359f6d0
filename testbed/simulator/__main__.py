"""``python -m testbed.simulator`` (and ``python -m testbed simulate``): the pod simulator CLI.

Contract:

* `main(argv)` returns the exit status: 0 when every pod reached its end, 1 when some
  pod's calls failed for good (see the summary), 2 for bad options (the message names the
  option), 130 when interrupted.
* Connection defaults come from the environment the testbed exports (``.testbed/env``):
  KUBECONFIG, SNIFFER_PLATFORM_URL, SNIFFER_PLATFORM_TOKEN_FILE.
* Progress goes to stderr (one updating line on a terminal, a line every 5 s otherwise);
  the summary goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO, TypeVar

from sniffer.kube import KubeClient
from testbed.simulator.config import Distribution, SimConfig, parse_kinds, parse_mix
from testbed.simulator.driver import Progress, simulate
from testbed.simulator.lifecycles import CATALOGUE, DEFAULT_KINDS, DEFAULT_MIX
from testbed.simulator.records import SimResult

T = TypeVar("T")


def _option(parse: Callable[[str], T]) -> Callable[[str], T]:
    """argparse shows an ArgumentTypeError's message (a ValueError's would be lost)."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def _weights(weights: Mapping[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in weights.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m testbed.simulator",
        description="Create platform runs and their pods, and drive the pods through the "
                    "lifecycles a real kubelet produces (the kubelet we don't have).")
    p.add_argument("--jobs", type=int, default=100, help="runs/pods to create (default 100)")
    p.add_argument("--rate", type=float, default=50.0, metavar="PER_SECOND",
                   help="pod creations per second; 0 = as fast as possible (default 50)")
    p.add_argument("--duration", type=_option(Distribution.parse), default="uniform:0.5,3",
                   metavar="DIST", help="time in running (or stuck pending): fixed:S, S, "
                   "uniform:LO,HI, exp:MEAN (default uniform:0.5,3)")
    p.add_argument("--step-delay", type=_option(Distribution.parse), default="fixed:0.05",
                   metavar="DIST", help="time between start-up steps, and for the kubelet to "
                   "stop containers after a deletion (default fixed:0.05)")
    p.add_argument("--mix", type=_option(parse_mix), default=None, metavar="NAME=W,...",
                   help="lifecycle weights; unnamed lifecycles get 0 (default "
                   f"{_weights(DEFAULT_MIX)}); see --list-lifecycles")
    p.add_argument("--kinds", type=_option(parse_kinds), default=None, metavar="KIND=W,...",
                   help="kind weights (default "
                   f"{_weights({k.value: w for k, w in DEFAULT_KINDS.items()})})")
    p.add_argument("--seed", type=int, default=None, help="seed of every random choice")
    p.add_argument("--namespace", default="sniffer-sim", help="pod namespace (created if "
                   "missing; default sniffer-sim)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig (default $KUBECONFIG)")
    p.add_argument("--platform-url", default=os.environ.get("SNIFFER_PLATFORM_URL"),
                   help="Platform API base URL (default $SNIFFER_PLATFORM_URL)")
    p.add_argument("--platform-token-file", type=Path,
                   default=os.environ.get("SNIFFER_PLATFORM_TOKEN_FILE"),
                   help="file holding the platform bearer token "
                   "(default $SNIFFER_PLATFORM_TOKEN_FILE)")
    p.add_argument("--delete-finished", action="store_true",
                   help="delete each pod the moment it reaches a terminal phase")
    p.add_argument("--records", type=Path, default=None, metavar="PATH",
                   help="write every change and expected outcome as JSON lines")
    p.add_argument("--concurrency", type=int, default=64,
                   help="most API requests in flight (default 64)")
    p.add_argument("--grace-period", type=int, default=30, metavar="S",
                   help="gracePeriodSeconds of deletions (default 30)")
    p.add_argument("--nodes", type=int, default=3, help="simulated nodes (default 3)")
    p.add_argument("--run-prefix", default=None,
                   help="run ids are PREFIX-nnnnn (default sim-<random>)")
    p.add_argument("--image-pull-failure-after", type=float, default=None, metavar="S",
                   help="the platform fails stuck image pulls after S seconds (Sniffer's "
                   "states.image_pull_failure_after_s): image-pull pods then stay stuck past "
                   "it and are expected to fail; by default users cancel them first")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--list-lifecycles", action="store_true",
                   help="print the lifecycle catalogue and exit")
    return p


def config_from(args: argparse.Namespace) -> SimConfig:
    """The `SimConfig` the parsed options describe (ValueError names a bad field)."""
    extra: dict[str, object] = {}
    if args.mix is not None:
        extra["mix"] = args.mix
    if args.kinds is not None:
        extra["kinds"] = args.kinds
    return SimConfig(jobs=args.jobs, rate=args.rate, duration=args.duration,
                     step_delay=args.step_delay, seed=args.seed, namespace=args.namespace,
                     delete_finished=args.delete_finished, concurrency=args.concurrency,
                     grace_period_s=args.grace_period, nodes=args.nodes,
                     run_prefix=args.run_prefix,
                     image_pull_failure_after_s=args.image_pull_failure_after, **extra)  # type: ignore[arg-type]


class ProgressLine:
    """Renders `Progress` on stderr: created/running/finished and their rates."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._last: Progress | None = None
        self._printed_at = -1e9

    def __call__(self, p: Progress) -> None:
        last = self._last
        dt = p.elapsed_s - last.elapsed_s if last else p.elapsed_s
        created_rate = (p.created - (last.created if last else 0)) / dt if dt > 0 else 0.0
        finished_rate = (p.finished - (last.finished if last else 0)) / dt if dt > 0 else 0.0
        line = (f"{p.elapsed_s:7.1f}s  created {p.created}/{p.total} ({created_rate:.0f}/s)  "
                f"running {p.running}  finished {p.finished} ({finished_rate:.0f}/s)  "
                f"errors {p.errors}  requests {p.requests}")
        self._last = p
        if self._tty:
            print("\r\x1b[2K" + line, end="", file=self._stream, flush=True)
        elif p.elapsed_s - self._printed_at >= 5 or p.finished + p.errors >= p.total:
            self._printed_at = p.elapsed_s
            print(line, file=self._stream, flush=True)

    def close(self) -> None:
        if self._tty and self._last is not None:
            print(file=self._stream)


def summary(result: SimResult, records: Path | None) -> str:
    outcomes = Counter(e.state.value for e in result.expected.values())
    lines = [
        f"simulated {result.created} pods (run prefix {result.run_prefix}, seed "
        f"{result.seed}) in {result.elapsed_s:.1f} s",
        f"  finished {result.finished} ({result.throughput:.1f} pods/s driven to their end), "
        f"errors {len(result.errors)}",
        f"  requests: kubernetes {result.kube_requests}, platform {result.platform_requests}, "
        f"retries {result.retries}",
        "  lifecycles: " + ", ".join(f"{k} {v}" for k, v in sorted(result.by_lifecycle.items())),
        "  expected outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
    ]
    for error in result.errors[:5]:
        lines.append(f"  error: {error.pod} at {error.op}: {error.error}")
    if len(result.errors) > 5:
        lines.append(f"  ... and {len(result.errors) - 5} more errors")
    if records is not None:
        lines.append(f"  records: {records}")
    return "\n".join(lines)


def _catalogue() -> str:
    return "\n".join(f"{lc.name:15} {'/'.join(k.value for k in lc.kinds):18} "
                     f"→ {lc.outcome(lc.kinds[0]).state.value:9} {lc.description}"
                     for lc in CATALOGUE.values())


async def _run(args: argparse.Namespace, config: SimConfig) -> SimResult:
    kube = await KubeClient.connect(kubeconfig=args.kubeconfig, pool_size=config.concurrency)
    line = None if args.quiet else ProgressLine()
    try:
        return await simulate(kube, args.platform_url, args.platform_token_file, config,
                              progress=line, records_path=args.records,
                              keep_records=False)
    finally:
        if line is not None:
            line.close()
        await kube.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_lifecycles:
        print(_catalogue())
        return 0
    if not args.platform_url:
        parser.error("--platform-url (or $SNIFFER_PLATFORM_URL) is required")
    if args.platform_token_file is None:
        parser.error("--platform-token-file (or $SNIFFER_PLATFORM_TOKEN_FILE) is required")
    try:
        config = config_from(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        result = asyncio.run(_run(args, config))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(summary(result, args.records))
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
