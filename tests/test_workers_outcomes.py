"""watch.workers, the outcome map: each handler outcome becomes one queue operation
and one metric label.

Pure: a recording queue stands in for the work queue, a real `PodStore` holds the pods.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sniffer.kubedecode import KubeError
from sniffer.platform_model import PlatformRejected, PlatformUnavailable
from sniffer.podview import PodView, project
from watch.store import PodStore
from watch.workers import DONE, Outcome, OutcomeMap, Result, outcome_of

NS = "out"
KEY = f"{NS}/p"


def pod(phase: str = "Running") -> PodView:
    now = "2026-01-01T00:00:00Z"
    return project({
        "metadata": {"name": "p", "namespace": NS, "uid": "uid-p", "resourceVersion": "1",
                     "creationTimestamp": now,
                     "labels": {"sniffer.io/run-id": "run-1", "sniffer.io/kind": "job"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main"}]},
        "status": {"phase": phase, "startTime": now}})


class RecordingQueue:
    def __init__(self, requeues: int = 0) -> None:
        self.ops: list[tuple[Any, ...]] = []
        self.requeues = requeues

    def add(self, key: str) -> None:
        self.ops.append(("add", key))

    def add_after(self, key: str, delay: float) -> None:
        self.ops.append(("add_after", key, delay))

    def add_rate_limited(self, key: str, *, at_least: float = 0.0) -> None:
        self.ops.append(("add_rate_limited", key, at_least))

    def forget(self, key: str) -> None:
        self.ops.append(("forget", key))

    def num_requeues(self, key: str) -> int:
        return self.requeues


class RecordingMetrics:
    def __init__(self) -> None:
        self.outcomes: list[str] = []
        self.drops: list[tuple[str, str]] = []

    def outcome(self, result: str) -> None:
        self.outcomes.append(result)

    def dropped(self, state: str, reason: str) -> None:
        self.drops.append((state, reason))


class Harness:
    def __init__(self, *, requeues: int = 0, max_retries: int = 3) -> None:
        self.queue = RecordingQueue(requeues)
        self.store = PodStore((NS,))
        self.metrics = RecordingMetrics()
        self.resolved: list[str] = []
        self.map = OutcomeMap(queue=self.queue, store=self.store, metrics=self.metrics,
                              max_retries=max_retries, resolved=self.resolved.append)


def test_done_forgets_the_key_and_resolves_its_change() -> None:
    h = Harness()
    h.map.finish(KEY, DONE)
    assert h.queue.ops == [("forget", KEY)]
    assert h.metrics.outcomes == ["done"]
    assert h.resolved == [KEY]
    assert (h.map.handled, h.map.dropped) == (1, 0)


def test_requeue_adds_the_key_again_and_leaves_its_change_pending() -> None:
    h = Harness()
    h.map.finish(KEY, Outcome(Result.REQUEUE))
    assert h.queue.ops == [("forget", KEY), ("add", KEY)]
    assert h.metrics.outcomes == ["requeue"]
    assert h.resolved == []


def test_requeue_after_resolves_the_change_and_plans_a_recheck() -> None:
    h = Harness()
    h.map.finish(KEY, Outcome(Result.REQUEUE_AFTER, delay=7.0))
    assert h.queue.ops == [("forget", KEY), ("add_after", KEY, 7.0)]
    assert h.metrics.outcomes == ["requeue_after"]
    assert h.resolved == [KEY]


def test_a_retry_below_the_limit_is_rate_limited_for_at_least_the_retry_after() -> None:
    h = Harness(requeues=2, max_retries=3)
    h.map.finish(KEY, Outcome.retry("platform unavailable: 503", retry_after=30.0))
    assert h.queue.ops == [("add_rate_limited", KEY, 30.0)]
    assert h.metrics.outcomes == ["retry"]
    assert h.resolved == []
    assert h.map.dropped == 0


def test_a_retry_at_the_limit_is_dropped_with_no_retry_pending(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(requeues=3, max_retries=3)
    h.store.upsert(pod())
    with caplog.at_level(logging.ERROR):
        h.map.finish(KEY, Outcome.retry("platform unavailable: 503"))
    assert h.queue.ops == [("forget", KEY)]
    assert h.metrics.outcomes == ["drop"]
    assert h.metrics.drops == [("Running", "platform unavailable: 503")]
    assert h.resolved == [KEY]
    assert h.map.dropped == 1
    # The reliability verdict counts drops by this message; operators filter on the name.
    [record] = caplog.records
    assert record.name == "watch.controller"
    assert record.getMessage() == "dropping change after retries; the reconciler will repair it"


def test_a_dropped_change_of_a_deleted_pod_forgets_its_tombstone() -> None:
    h = Harness()
    view = pod("Succeeded")
    h.store.upsert(view)
    h.store.delete(view, now=0.0)
    assert h.store.is_deleted(KEY)
    h.map.finish(KEY, Outcome(Result.DROP, error="platform rejected the update: 400"))
    assert h.store.get(KEY) is None
    assert h.metrics.drops == [("Succeeded", "platform rejected the update: 400")]


def test_a_dropped_change_of_an_uncached_pod_is_counted_as_unknown() -> None:
    h = Harness()
    h.map.finish(KEY, Outcome(Result.DROP, error="x"))
    assert h.metrics.drops == [("unknown", "x")]


def test_an_unavailable_platform_is_retried_after_its_retry_after() -> None:
    outcome = outcome_of(KEY, PlatformUnavailable("503", retry_after=12.0))
    assert (outcome.result, outcome.delay) == (Result.RETRY, 12.0)


def test_a_platform_rejection_is_dropped_not_retried() -> None:
    outcome = outcome_of(KEY, PlatformRejected(400, "bad_request", "no"))
    assert outcome.result is Result.DROP
    assert outcome.error is not None
    assert outcome.error.startswith("platform rejected")


def test_a_kubernetes_api_error_is_retried() -> None:
    assert outcome_of(KEY, KubeError(500, "boom")).result is Result.RETRY


def test_an_unexpected_exception_is_retried_and_logged_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    error = ValueError("bad object")
    with caplog.at_level(logging.ERROR):
        outcome = outcome_of(KEY, error)
    assert outcome == Outcome.retry("ValueError: bad object")
    [record] = caplog.records
    assert (record.name, record.getMessage()) == ("watch.controller", "handler failed")
    assert record.exc_info is not None
    assert record.exc_info[1] is error
