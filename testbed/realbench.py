"""``python -m testbed.realbench --pods N``: how fast the real node drives N short pods to
completion, and what it costs in memory.

Contract:

* Runs against a testbed started with ``sniffer testbed up --node real`` (its ``--dir``,
  default ``.testbed``): creates N pods running ``sh -c 'exit 0'`` in a namespace of its
  own, all at once, waits (bounded by ``--bound``) until the watch shows every one in a
  terminal phase, then deletes the namespace.
* Prints pods per second (N / time from the first create to the last terminal phase) and
  the peak resident memory of the kubelet, containerd, the scheduler, the
  controller-manager and of all containerd shims together, sampled every 0.5 s.
* A measurement, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from sniffer.kube import KubeClient
from testbed import realnode
from testbed.podfeed import feeding
from testbed.simulator.kubeapi import PodApi


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _shims() -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip().startswith("containerd-shim"):
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


async def _sample(pids: dict[str, int], peak: dict[str, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for name, pid in pids.items():
            peak[name] = max(peak.get(name, 0.0), _rss_mib(pid))
        shims = _shims()
        peak["shims"] = max(peak.get("shims", 0.0), sum(_rss_mib(p) for p in shims))
        peak["shim count"] = max(peak.get("shim count", 0.0), float(len(shims)))
        await asyncio.sleep(0.5)


async def bench(testbed: Path, pods: int, bound_s: float) -> int:
    node = realnode.attach(testbed / "node")
    if node is None:
        print(f"no real node in {testbed}: `sniffer testbed up --node real` first",
              file=sys.stderr)
        return 2
    kube = await KubeClient.connect(kubeconfig=str(testbed / "kubeconfig"), pool_size=64)
    namespace = f"bench-{secrets.token_hex(3)}"
    api = PodApi(kube, asyncio.Semaphore(32))
    peak: dict[str, float] = {}
    stop = asyncio.Event()
    try:
        await api.ensure_namespace(namespace)
        async with feeding(kube, namespace) as feed:
            sampler = asyncio.create_task(_sample(node.pids, peak, stop))
            started = time.monotonic()
            names = [f"p-{i:04d}" for i in range(pods)]
            await asyncio.gather(*(api.create_pod({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": n, "namespace": namespace},
                "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                         "automountServiceAccountToken": False,
                         "containers": [{"name": "main", "image": node.image,
                                         "imagePullPolicy": "Never",
                                         "command": ["sh", "-c", "exit 0"]}]}})
                for n in names))
            created = time.monotonic() - started

            def done(pod: dict[str, Any] | None, gone: bool) -> bool:
                phase = ((pod or {}).get("status") or {}).get("phase")
                return gone or phase in ("Succeeded", "Failed")

            await asyncio.wait_for(asyncio.gather(*(feed.until(n, done) for n in names)),
                                   bound_s)
            elapsed = time.monotonic() - started
            stop.set()
            await sampler
    finally:
        stop.set()
        await kube.request("DELETE", f"/api/v1/namespaces/{namespace}")
        await kube.close()
    print(json.dumps({"pods": pods, "created_s": round(created, 1),
                      "all_terminal_s": round(elapsed, 1),
                      "pods_per_s": round(pods / elapsed, 2),
                      "peak_rss_mib": {k: round(v) for k, v in peak.items()}}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.realbench", description=__doc__)
    p.add_argument("--pods", type=int, default=100)
    p.add_argument("--dir", type=Path, default=Path(".testbed"))
    p.add_argument("--bound", type=float, default=900.0, metavar="S")
    args = p.parse_args(argv)
    return asyncio.run(bench(args.dir.resolve(), args.pods, args.bound))


if __name__ == "__main__":
    sys.exit(main())
