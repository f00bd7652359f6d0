"""Measure the reference server's update throughput: ``python -m testbed.platform.loadtest``.

Starts a server in a temporary directory (or uses ``--url``/``--token-file``), creates
``--runs`` runs, then sends every run ``queued → running → succeeded`` as conditional
PATCHes from ``--concurrency`` concurrent workers over a pooled aiohttp session, and prints
one JSON line: applied updates, seconds, updates/s, latency percentiles and, for a server
it started, the server's CPU time per request. The load is bounded by ``--runs`` and only
ever sent to the loopback server it was given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from .launcher import launch


async def _run(url: str, token: str, runs: int, concurrency: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as session:
        prefix = f"load-{time.time_ns()}-"
        ids = [f"{prefix}{i:07d}" for i in range(runs)]

        async def create(chunk: list[str]) -> None:
            for run_id in chunk:
                async with session.post("/api/v1/runs", json={"id": run_id}) as r:
                    assert r.status == 201, await r.text()

        chunks = [ids[i::concurrency] for i in range(concurrency)]
        await asyncio.gather(*(create(c) for c in chunks))

        latencies: list[float] = []
        applied = 0

        async def drive(chunk: list[str]) -> None:
            nonlocal applied
            for run_id in chunk:
                for expected, target in (("queued", "running"), ("running", "succeeded")):
                    started = time.perf_counter()
                    async with session.patch(
                        f"/api/v1/runs/{run_id}",
                        json={"state": target, "expected_state": expected, "exit_code": 0},
                    ) as r:
                        body = await r.json()
                    latencies.append(time.perf_counter() - started)
                    assert r.status == 200 and body["applied"], body
                    applied += 1

        started = time.perf_counter()
        await asyncio.gather(*(drive(c) for c in chunks))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "updates": applied,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "updates_per_s": round(applied / elapsed, 1),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
    }


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a local process (Linux), or None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.platform.loadtest")
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--token-file", type=Path)
    args = parser.parse_args(argv)
    if args.url:
        token = args.token_file.read_text(encoding="utf-8").split()[0]
        result = asyncio.run(_run(args.url, token, args.runs, args.concurrency))
    else:
        with tempfile.TemporaryDirectory() as tmp, launch(Path(tmp)) as server:
            cpu_before = _cpu_seconds(server.pid)
            result = asyncio.run(_run(server.url, server.token, args.runs, args.concurrency))
            cpu_after = _cpu_seconds(server.pid)
        if cpu_before is not None and cpu_after is not None:
            requests = args.runs * 3  # one create and two updates per run
            result["server_cpu_us_per_request"] = round(
                (cpu_after - cpu_before) / requests * 1e6, 1
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
