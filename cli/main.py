"""The `sniffer` command (the console script; also ``python -m cli``).

Subcommands:
* ``sniffer watch``: the long-running watcher (Deployment).
* ``sniffer reconcile``: one level-triggered repair pass (CronJob, or ad hoc).
* ``sniffer finalizers remove``: strip Sniffer's finalizer from every tracked pod
  (uninstall, `cli.uninstall`).

The local test bed is not part of this command: it has its own, ``python -m testbed``.

Contract: configuration errors print one message naming each bad field and exit 2
before anything starts; SIGTERM and SIGINT stop a command cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import ConfigError, Settings, load_settings
from sniffer.kubecredentials import CredentialsError
from sniffer.logs import setup_logging

if TYPE_CHECKING:
    from sniffer.telemetry import Telemetry

log = logging.getLogger("sniffer")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH",
                   help="YAML settings file (default: $SNIFFER_CONFIG; see config/default.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sniffer",
        description="Keeps a job platform's workload states in step with Kubernetes pods.")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="watch pods and update the platform (long-running)")
    _add_config(w)
    r = sub.add_parser("reconcile", help="one pass that repairs every mismatch")
    _add_config(r)
    r.add_argument("--dry-run", action="store_true", help="report, write nothing")
    r.add_argument("--only", nargs="+", metavar="RUN_ID", help="repair only these runs")
    r.add_argument("--output", choices=("table", "json"), default="table")
    f = sub.add_parser("finalizers", help="manage Sniffer's pod finalizers")
    fsub = f.add_subparsers(dest="action", required=True)
    rm = fsub.add_parser("remove", help="remove Sniffer's finalizer from all tracked pods")
    _add_config(rm)
    return parser


def _settings(args: argparse.Namespace, *, require_platform: bool = True) -> Settings:
    return load_settings(args.config, require_platform=require_platform)


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run `main(stop)` with SIGTERM/SIGINT setting `stop` (a second signal is ignored:
    the shutdown is bounded anyway)."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await main(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args, require_platform=args.command != "finalizers")
    except ConfigError as exc:
        print(f"sniffer: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.telemetry.log_level, settings.telemetry.log_format)
    try:
        return _run(args, settings)
    except ConfigError as exc:  # found while starting: a port in use, ...
        print(f"sniffer: {exc}", file=sys.stderr)
        return 2
    except CredentialsError as exc:
        print(f"sniffer: kube.kubeconfig: no usable Kubernetes credentials: {exc}",
              file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "watch":
        return _watch(settings)
    if args.command == "reconcile":
        from reconcile.app import run_reconcile
        from sniffer.telemetry import ReconcileTelemetry
        telemetry = _telemetry("reconcile", settings)
        metrics = ReconcileTelemetry(telemetry.meter) if telemetry.metrics_on else None
        try:
            return run_until_signalled(lambda stop: run_reconcile(
                settings, stop, dry_run=args.dry_run, only=tuple(args.only or ()),
                output=args.output, metrics=metrics))
        finally:
            telemetry.shutdown()  # export everything before exit, after SIGTERM too
    if args.command == "finalizers":
        from cli.uninstall import uninstall
        return run_until_signalled(lambda stop: uninstall(settings))
    raise AssertionError(args.command)


def _telemetry(component: str, settings: Settings) -> Telemetry:
    """OpenTelemetry from the OTEL_* variables; caller duty: `shutdown()` before exit."""
    from sniffer.telemetry import setup_telemetry

    return setup_telemetry(component, prometheus_port=settings.telemetry.prometheus_port)


def _watch(settings: Settings) -> int:
    from sniffer.telemetry import WatchTelemetry
    from watch.app import Watcher, WatchMetrics
    from watch.leader import LeadershipLost

    if not check_token_file(settings):
        return 2
    kubeconfig = settings.kube.kubeconfig
    if kubeconfig and not Path(kubeconfig).is_file():  # before anything starts
        raise ConfigError([f"kube.kubeconfig: {kubeconfig} is not a file"])
    telemetry = _telemetry("watch", settings)
    sinks = (WatchTelemetry(telemetry.meter, leader_election=settings.leader.enabled)
             if telemetry.metrics_on else None)

    async def watch(stop: asyncio.Event) -> int:
        if sinks is None:
            return await Watcher(settings).run(stop)
        metrics = WatchMetrics(reflector=sinks.reflector, controller=sinks.controller,
                               queue=sinks.queue, platform=sinks.platform,
                               finalizer_queue=sinks.finalizer_queue,
                               job_queue=sinks.job_queue, job_controller=sinks.job_controller,
                               job_reflector=sinks.job_reflector,
                               app_queues=sinks.app_queues,
                               app_controllers=sinks.app_controllers,
                               app_reflectors=sinks.app_reflectors)
        try:
            return await Watcher(settings, metrics=metrics, observe=sinks.observe).run(stop)
        finally:
            sinks.final_sample()  # the gauges' values for the export at exit

    try:
        return run_until_signalled(watch)
    except BaseExceptionGroup as group:
        if group.subgroup(LeadershipLost) is None:
            raise
        log.error("exiting after losing the lease; a restart rejoins as a standby")
        return 1
    finally:
        telemetry.shutdown()  # the last spans and a final metric export


def check_token_file(settings: Settings) -> bool:
    """The platform token must come from a readable file (a Secret mount)."""
    path = Path(settings.platform.token_file)
    if path.is_file() and os.access(path, os.R_OK):
        return True
    print(f"sniffer: platform.token_file: {path} is not a readable file", file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(main())
