"""reconcile.snapshot with small in-memory fakes of its two Protocols.

The real listings are exercised on the testbed in tests/test_reconcile.py; these tests
cover what the testbed cannot be made to do on cue (an expired continue token) and the
exact set of runs read one by one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from reconcile.snapshot import take
from sniffer.kubedecode import Gone, Page, decode_pod_list
from sniffer.platform_model import Run
from tests.test_reconcile_diff import NOW, kubelet_status, manifest, run


def raw_pod(name: str, run_id: str, phase: str = "Running", *,
            finalizer: bool = False) -> dict[str, Any]:
    obj = manifest(name, run_id, finalizer=finalizer)
    obj["metadata"].update(uid=f"uid-{name}", resourceVersion="7",
                           creationTimestamp="2026-01-01T00:00:00Z")
    obj["status"] = kubelet_status(phase, NOW - 600)
    return obj


class FakeKube:
    """Serves `pods` in pages; `gone_at` page requests (1-based) answer 410 once each."""

    def __init__(self, pods: list[dict[str, Any]], *, gone_at: Iterable[int] = ()) -> None:
        self._text = [json.dumps(p) for p in pods]
        self._gone_at = set(gone_at)
        self.requests: list[tuple[str | None, str, str | None]] = []
        self.slim: list[bool] = []

    async def list_pods(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None, slim: bool = False) -> Page:
        self.requests.append((namespace, label_selector, continue_token))
        self.slim.append(slim)
        if len(self.requests) in self._gone_at:
            raise Gone(410, "The provided continue parameter is too old")
        start = int(continue_token or 0)
        end = start + limit
        more = f',"continue":"{end}"' if end < len(self._text) else ""
        body = (f'{{"metadata":{{"resourceVersion":"100"{more}}},'
                f'"items":[{",".join(self._text[start:end])}]}}')
        return decode_pod_list(body.encode(), slim=slim)  # as KubeClient decodes it

    async def list_jobs(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None) -> Page:
        """This cluster has no Jobs (the Job listing is tested on the API server)."""
        self.requests.append((namespace, f"jobs:{label_selector}", continue_token))
        return Page([], "100", None)

    async def list_apps(self, resource: str, namespace: str | None, *, label_selector: str,
                        limit: int, continue_token: str | None = None) -> Page:
        """Nor apps (their listing is tested on the API server, tests/test_reconcile_apps)."""
        self.requests.append((namespace, f"{resource}:{label_selector}", continue_token))
        return Page([], "100", None)


class FakePlatform:
    def __init__(self, runs: list[Run]) -> None:
        self._runs = {r.id: r for r in runs}
        self.reads: list[str] = []

    async def list_runs(self, states: Iterable[str], *, page_size: int = 500,
                        ) -> AsyncIterator[Run]:
        wanted = set(states)
        for r in sorted(self._runs.values(), key=lambda r: r.id):
            if r.state in wanted:
                yield r

    async def get_run(self, run_id: str) -> Run | None:
        self.reads.append(run_id)
        return self._runs.get(run_id)


async def snap(kube: FakeKube, platform: FakePlatform, **kw: Any) -> Any:
    return await take(kube, platform, scope=("team-ml",), label_selector="sniffer.io/run-id",
                      page_size=2, concurrency=3, **kw)


async def test_all_pages_are_listed_and_projected() -> None:
    pods = [raw_pod(f"p{i}", f"r{i}") for i in range(5)]
    kube = FakeKube(pods)
    s = await snap(kube, FakePlatform([run(f"r{i}") for i in range(5)]))
    assert sorted(p.name for p in s.pods) == [f"p{i}" for i in range(5)]
    assert [token for _, _, token in kube.requests] == [None, "2", "4"]
    assert s.runs_listed == 5
    assert s.runs_looked_up == 0


async def test_an_expired_continue_token_restarts_the_namespace_listing_without_duplicates(
        ) -> None:
    pods = [raw_pod(f"p{i}", f"r{i}") for i in range(5)]
    kube = FakeKube(pods, gone_at=[2])
    s = await snap(kube, FakePlatform([]))
    assert sorted(p.name for p in s.pods) == [f"p{i}" for i in range(5)]
    assert [token for _, _, token in kube.requests] == [None, "2", None, "2", "4"]


async def test_a_listing_that_keeps_expiring_fails_the_pass() -> None:
    kube = FakeKube([raw_pod(f"p{i}", f"r{i}") for i in range(5)], gone_at=[2, 4, 6, 8])
    with pytest.raises(Gone):
        await snap(kube, FakePlatform([]))


async def test_runs_are_read_one_by_one_only_where_their_state_matters() -> None:
    pods = [raw_pod("open", "r-open"),                        # listed: no read
            raw_pod("done", "r-done", "Succeeded"),           # finished, no finalizer
            raw_pod("held", "r-held", "Succeeded", finalizer=True),
            raw_pod("live", "r-live", "Running"),             # live, run not open
            raw_pod("stray", "r-stray", "Pending")]           # unknown to the platform
    platform = FakePlatform([run("r-open"), run("r-done", "succeeded"),
                             run("r-held", "succeeded"), run("r-live", "failed")])
    s = await snap(FakeKube(pods), platform)
    assert sorted(platform.reads) == ["r-held", "r-live", "r-stray"]
    assert set(s.runs) == {"r-open", "r-held", "r-live"}
    assert s.unknown_run_ids == {"r-stray"}
    assert s.runs_looked_up == 3


async def test_a_malformed_pod_is_kept_as_a_bad_pod_and_the_listing_goes_on() -> None:
    broken = raw_pod("broken", "r1")
    broken["status"]["phase"] = 7
    s = await snap(FakeKube([broken, raw_pod("ok", "r2")]), FakePlatform([]))
    assert [p.name for p in s.pods] == ["ok"]
    [bad] = s.bad_pods
    assert (bad.key, bad.run_id, bad.uid) == ("team-ml/broken", "r1", "uid-broken")
    assert "status.phase" in bad.error


async def test_pods_are_listed_slim_and_project_as_a_full_decode_would() -> None:
    broken = raw_pod("broken", "r1")
    broken["status"]["phase"] = 7
    pods = [broken, *(raw_pod(f"p{i}", f"r{i}", "Succeeded", finalizer=i % 2 == 0)
                      for i in range(4))]
    for pod in pods:  # fields nothing reads, as a real API server sends them
        pod["metadata"]["managedFields"] = [{"manager": "kubelet", "operation": "Update"}]
    slim_kube = FakeKube(pods)
    s = await snap(slim_kube, FakePlatform([]))
    assert slim_kube.slim
    assert all(slim_kube.slim)

    class FullKube(FakeKube):
        async def list_pods(self, namespace: str | None, *, label_selector: str, limit: int,
                            continue_token: str | None = None, slim: bool = False) -> Page:
            return await super().list_pods(namespace, label_selector=label_selector,
                                           limit=limit, continue_token=continue_token)

    full = await snap(FullKube(pods), FakePlatform([]))
    assert s.pods == full.pods
    assert s.bad_pods == full.bad_pods
    assert [b.key for b in s.bad_pods] == ["team-ml/broken"]


async def test_only_lists_the_named_runs_pods_and_reads_those_runs_whatever_their_state(
        ) -> None:
    kube = FakeKube([raw_pod("a", "r-a", "Succeeded", finalizer=True)])
    platform = FakePlatform([run("r-a", "succeeded"), run("r-b")])
    s = await snap(kube, platform, only=("r-a", "r-b", "r-c"))
    assert kube.requests[0][1] == "sniffer.io/run-id,sniffer.io/run-id in (r-a,r-b,r-c)"
    assert s.runs_listed == 0
    assert sorted(platform.reads) == ["r-a", "r-b", "r-c"]
    assert set(s.runs) == {"r-a", "r-b"}
    assert s.unknown_run_ids == {"r-c"}
