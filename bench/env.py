"""One benchmark testbed: an API server, a platform, and the harness's clients of both.

Contract:

* `Testbed.start(workdir)` starts a kube-apiserver (embedded etcd, fsync off) and a
  reference platform whose files live in `workdir`; `stop()` ends both (idempotent).
* `Admin` is the harness's synchronous view of a platform's admin and list routes. It
  counts its own requests (`calls`), so a system's requests can be told apart from the
  harness's in the platform's request counters.
* `Machine` samples whole-machine CPU (/proc/stat) so that every figure can say how busy
  the machine was, and by whom.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from testbed import apiserver
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer, launch


class Admin:
    """Synchronous admin/list calls to one platform, counted."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.calls = 0

    def _get(self, path: str) -> Any:
        self.calls += 1
        request = urllib.request.Request(self.url + path)
        request.add_header("Authorization", f"Bearer {self._token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def _put(self, path: str, body: Any) -> Any:
        self.calls += 1
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         method="PUT")
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/admin/stats")
        return result

    def requests_total(self) -> int:
        return sum(self.stats()["requests_by_status"].values())

    def last_seq(self) -> int:
        return int(self.stats()["last_update_seq"])

    def updates(self, since: int) -> tuple[list[dict[str, Any]], int]:
        """Update-log entries after `since`, and the last seq seen."""
        items: list[dict[str, Any]] = []
        while True:
            page = self._get(f"/admin/updates?since={since}&limit=10000")
            items.extend(page["items"])
            since = page["last_seq"]
            if not page["more"]:
                return items, since

    def set_latency(self, latency_ms: float) -> None:
        self._put("/admin/faults", {"latency_ms": latency_ms})

    def runs(self, states: tuple[str, ...] = (), *, prefix: str | None = None
             ) -> list[dict[str, Any]]:
        """Every run (in `states`, if given); with `prefix`, only the runs whose id is
        ``<prefix>-...`` (one trial's: the list is ordered by id, so it starts there and
        stops after them instead of paging through every earlier trial's runs)."""
        runs: list[dict[str, Any]] = []
        start = None if prefix is None else prefix + "-"
        after: str | None = start
        while True:
            query = [("state", s) for s in states] + [("limit", "1000")]
            if after is not None:
                query.append(("after", after))
            page = self._get("/api/v1/runs?" + urllib.parse.urlencode(query))
            items = page["items"]
            if start is not None:
                mine = [r for r in items if r["id"].startswith(start)]
                runs.extend(mine)
                if len(mine) < len(items):
                    return runs
            else:
                runs.extend(items)
            after = page["next"]
            if after is None:
                return runs


@dataclass
class Testbed:
    workdir: Path
    api: ApiServer
    platform: PlatformServer
    admin: Admin

    @classmethod
    def start(cls, workdir: Path) -> Testbed:
        workdir.mkdir(parents=True, exist_ok=True)
        api = apiserver.start(workdir / "apiserver")
        try:
            platform = launch(workdir / "platform")
        except BaseException:
            api.stop()
            raise
        return cls(workdir, api, platform, Admin(platform.url, platform.token))

    def stop(self) -> None:
        self.platform.stop()
        self.api.stop()

    def apiserver_cpu_s(self) -> float:
        if self.api.pid is None:
            return 0.0
        t = psutil.Process(self.api.pid).cpu_times()
        return float(t.user + t.system)

    def platform_cpu_s(self) -> float:
        t = psutil.Process(self.platform.pid).cpu_times()
        return float(t.user + t.system)


class Machine:
    """Whole-machine CPU seconds (busy, all cores) and the load average."""

    @staticmethod
    def busy_s() -> float:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def loadavg() -> float:
        return os.getloadavg()[0]

    @staticmethod
    def self_cpu_s() -> float:
        t = os.times()
        return t.user + t.system

    @staticmethod
    def cores() -> int:
        return os.cpu_count() or 1


def workdir_root() -> Path:
    """Where testbeds live: tmpfs when the machine has one (no disk noise), else /tmp."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path("/tmp")


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
