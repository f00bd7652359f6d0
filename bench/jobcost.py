"""``python -m bench.jobcost``: what the watcher spends on a run backed by a Job, beside a
run of one bare pod (issue 14: "the watcher's cost per Job beside its cost per pod").

Contract:

* One testbed (kube-apiserver and the reference platform). Each trial starts, for each
  kind, a fresh namespace and a fresh ``sniffer watch`` of it alone (the bench's `sniffer`
  system: 64 workers, finalizers off, as every peer row of docs/benchmarks.md; with
  ``--finalizers`` its shipped mode), so the two costs are never mixed in one process.
* Once the watcher says "caches synced" and its CPU is idle: the baseline CPU and RSS.
  Then ``--runs`` runs are played, at most ``--concurrency`` at once, each to its end:

  - ``pod``: the run, its pod (Pending on a node), Running, Succeeded: 3 writes of one pod.
  - ``job``: the run, its Job, Job active, attempt 1 (created, Running, Failed), Job active
    with one failure, attempt 2 (created, Running, Succeeded), Job complete: 10 writes of
    one Job and two pods, in the Job controller's shapes (`testbed.jobshapes`). The run is
    bound to the Job and ends succeeded with 2 attempts: a retried failure is no end.

* A trial is done when every run is succeeded on the platform and the watcher has used
  no CPU for ``--quiet`` seconds; it fails (exit 1) if a run ended otherwise, a Job run
  was ever shown failed, or shows other than 2 attempts: a cost of wrong work is no cost.
* Per run: the watcher's CPU (ms), the platform calls it made (the platform's request
  count minus the harness's own), and its RSS growth once quiet (what caching a finished
  run costs, pods and Job together). With ``--trials`` N > 1 each figure is the median,
  with the range beside it.
* Prints a markdown table and writes the figures as JSON under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.env import Testbed, workdir_root
from bench.kube import JSON, Kube
from bench.systems import SYSTEMS, Running, Target
from testbed.build import ensure_binaries
from testbed.jobshapes import active_status, attempt_manifest, complete_status, job_manifest
from testbed.simulator.lifecycles import Shape
from testbed.simulator.shapes import render

KINDS = ("pod", "job")
WRITES = {"pod": 3, "job": 10}
"""API writes per run of each kind (see the module docstring): what the watcher sees."""
_REPO = Path(__file__).resolve().parents[1]


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bare_pod(namespace: str, name: str, run_id: str) -> JSON:
    """A run's one bare pod, the same container and node as a Job's attempt."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"sniffer.io/run-id": run_id, "sniffer.io/kind": "job"}},
            "spec": {"nodeName": "sim-node-1", "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "registry.local/work:1"}]}}


class Play:
    """Plays one run of each kind against the API server (the controller and kubelet's
    writes) and the platform (the user's create)."""

    def __init__(self, kube: Kube, session: aiohttp.ClientSession, platform_url: str,
                 token: str) -> None:
        self.kube = kube
        self._session = session
        self._url = platform_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json"}
        self.platform_calls = 0

    async def create_run(self, run_id: str, namespace: str, name: str) -> None:
        body = {"id": run_id, "kind": "job", "pod_namespace": namespace, "pod_name": name}
        self.platform_calls += 1
        async with self._session.post(f"{self._url}/api/v1/runs", data=json.dumps(body),
                                      headers=self._headers) as response:
            if response.status != 201:
                raise RuntimeError(f"creating run {run_id}: {response.status} "
                                   f"{await response.text()}")

    async def _pod_to(self, pod: JSON, shape: Shape) -> JSON:
        meta = pod["metadata"]
        return await self.kube.patch_status(meta["namespace"], meta["name"],
                                            render(shape, pod, time.time()))

    async def pod_run(self, namespace: str, run_id: str) -> None:
        name = f"{run_id}-pod"
        await self.create_run(run_id, namespace, name)
        pod = await self.kube.create_pod(bare_pod(namespace, name, run_id))
        pod = await self._pod_to(pod, Shape.RUNNING)
        await self._pod_to(pod, Shape.SUCCEEDED)

    async def job_run(self, namespace: str, run_id: str) -> None:
        name = f"{run_id}-job"
        await self.create_run(run_id, namespace, name)
        jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
        job = await self.kube.call("POST", jobs, job_manifest(namespace, name, run_id))
        started = await self._job_status(jobs, name, active_status(None))
        for attempt, shape in (("a", Shape.FAILED_ERROR), ("b", Shape.SUCCEEDED)):
            pod = await self.kube.create_pod(attempt_manifest(job, f"{name}-{attempt}",
                                                              run_id))
            pod = await self._pod_to(pod, Shape.RUNNING)
            await self._pod_to(pod, shape)
            if shape is Shape.FAILED_ERROR:
                await self._job_status(jobs, name, active_status(started, failed=1))
        await self._job_status(jobs, name, complete_status(failed=1))

    async def _job_status(self, jobs: str, name: str, status: JSON) -> str:
        job = await self.kube.call("PATCH", f"{jobs}/{name}/status", {"status": status},
                                   content_type="application/merge-patch+json")
        return str(job["status"]["startTime"])


async def _bounded(step: Callable[[str, str], Awaitable[None]], namespace: str,
                   run_ids: list[str], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(run_id: str) -> None:
        async with gate:
            await step(namespace, run_id)

    await asyncio.gather(*(one(r) for r in run_ids))


async def _idle(running: Running, quiet_s: float, limit_s: float) -> bool:
    """Wait until the watcher used < 10 ms of CPU over `quiet_s`; False if never."""
    deadline = time.monotonic() + limit_s
    last = running.cpu_s()
    while running.alive and time.monotonic() < deadline:
        await asyncio.sleep(quiet_s)
        now = running.cpu_s()
        if now - last < 0.01:
            return True
        last = now
    return False


def _wrong(tb: Testbed, run_ids: set[str], kind: str) -> list[str]:
    """Runs that did not end as played (see the module docstring), described."""
    out = []
    runs = {r["id"]: r for r in tb.admin.runs() if r["id"] in run_ids}
    for run_id in sorted(run_ids):
        run = runs.get(run_id)
        if run is None or run["state"] != "succeeded":
            out.append(f"{run_id}: {None if run is None else run['state']}")
        elif kind == "job" and run.get("attempts") != 2:
            out.append(f"{run_id}: attempts {run.get('attempts')}")
    if kind == "job":
        updates, _ = tb.admin.updates(0)
        shown_failed = {u["run_id"] for u in updates if u["to_state"] == "failed"}
        out.extend(f"{r}: shown failed" for r in sorted(shown_failed & run_ids))
    return out


async def trial(tb: Testbed, kube: Kube, session: aiohttp.ClientSession, kind: str,
                n: int, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    namespace = f"cost-{kind}-{n}"
    await kube.ensure_namespace(namespace)
    system = SYSTEMS["sniffer-finalizers" if args.finalizers else "sniffer"]
    target = Target(tb.api.kubeconfig, namespace, tb.platform.url, tb.platform.token_file,
                    logdir)
    running = system.start(target)
    try:
        started = time.monotonic()
        while running.ready_at is None and running.alive:  # ready_at: set by a thread
            if time.monotonic() - started > 120:
                raise RuntimeError(f"{system.label} not synced in 120 s:\n{running.log_tail()}")
            await asyncio.sleep(0.05)
        await _idle(running, args.quiet, 60)
        cpu0, rss0, calls0 = running.cpu_s(), running.rss(), tb.admin.requests_total()
        play = Play(kube, session, tb.platform.url, tb.platform.token)
        run_ids = [f"{kind}{n}-{i:05d}" for i in range(args.runs)]
        step = play.pod_run if kind == "pod" else play.job_run
        t0 = time.monotonic()
        await _bounded(step, namespace, run_ids, args.concurrency)
        played_s = time.monotonic() - t0
        if not await _idle(running, args.quiet, 600):
            raise RuntimeError(f"{system.label} never went idle:\n{running.log_tail()}")
        if not running.alive:
            raise RuntimeError(f"{system.label} exited:\n{running.log_tail()}")
        cpu, rss = running.cpu_s() - cpu0, running.rss() - rss0
        # The harness's own platform calls: the creates, and the three stats/list reads.
        calls = tb.admin.requests_total() - calls0 - play.platform_calls - 1
        wrong = _wrong(tb, set(run_ids), kind)
    finally:
        running.stop()
    return {"kind": kind, "runs": args.runs, "writes_per_run": WRITES[kind],
            "played_s": round(played_s, 2), "cpu_ms_per_run": 1000 * cpu / args.runs,
            "cpu_us_per_write": 1e6 * cpu / (args.runs * WRITES[kind]),
            "platform_calls_per_run": calls / args.runs, "rss_bytes_per_run": rss / args.runs,
            "wrong": wrong}


def _cell(values: list[float], fmt: str) -> str:
    med, low, high = (format(v, fmt) for v in (statistics.median(values), min(values),
                                               max(values)))
    return med if low == high else f"{med} ({low}-{high})"


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| run backed by | writes per run | CPU per run | CPU per write | "
            "platform calls per run | RSS per finished run |", "|---|--:|--:|--:|--:|--:|"]
    for kind in KINDS:
        mine = [r for r in results if r["kind"] == kind]
        if not mine:
            continue
        rows.append(
            f"| {'a Job (2 attempts)' if kind == 'job' else 'a bare pod'} "
            f"| {WRITES[kind]} "
            f"| {_cell([r['cpu_ms_per_run'] for r in mine], '.2f')} ms "
            f"| {_cell([r['cpu_us_per_write'] for r in mine], '.0f')} µs "
            f"| {_cell([r['platform_calls_per_run'] for r in mine], '.2f')} "
            f"| {_cell([r['rss_bytes_per_run'] for r in mine], ',.0f')} B |")
    return "\n".join(rows)


async def main_async(args: argparse.Namespace) -> int:
    ensure_binaries()
    root = Path(workdir_root()) / f"sniffer-jobcost-{int(time.time())}"
    logdir = root / "logs"
    logdir.mkdir(parents=True)
    tb = Testbed.start(root / "testbed")
    kube = Kube(tb.api, concurrency=args.concurrency)
    results: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession() as session:
            for n in range(1, args.trials + 1):
                for kind in KINDS:
                    _say(f"trial {n}/{args.trials}: {args.runs} runs backed by a {kind}")
                    result = await trial(tb, kube, session, kind, n, args, logdir)
                    _say(f"  {kind}: {result['cpu_ms_per_run']:.2f} ms CPU, "
                         f"{result['platform_calls_per_run']:.2f} platform calls, "
                         f"{result['rss_bytes_per_run']:,.0f} B per run; "
                         f"wrong {len(result['wrong'])}")
                    results.append(result)
    finally:
        await kube.close()
        tb.stop()
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"jobcost-{stamp}.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                "results": results}, indent=1))
    _say(f"wrote {path}")
    wrong = [w for r in results for w in r["wrong"]]
    for line in wrong[:20]:
        _say(f"WRONG {line}")
    return 1 if wrong else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.jobcost",
                                description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2000, help="runs per kind and trial")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32, help="runs played at once")
    p.add_argument("--quiet", type=float, default=2.0,
                   help="seconds without watcher CPU that mean it is done")
    p.add_argument("--finalizers", action="store_true",
                   help="the shipped finalizer mode instead of the peers' setting")
    p.add_argument("--out", type=Path, default=_REPO / "bench" / "results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
