"""sniffer.nullmetrics: any metric call is accepted and does nothing."""

from __future__ import annotations

import copy

import pytest

from sniffer.nullmetrics import NULL_METRICS
from sniffer.platform import PlatformMetrics


def test_any_metric_call_is_accepted_and_returns_none() -> None:
    sink: PlatformMetrics = NULL_METRICS  # the type checker accepts it for a protocol
    sink.request("PUT", "/api/v1/runs/{id}", 200, None, 0.01)
    sink.update("applied")
    assert NULL_METRICS.depth(3) is None
    assert NULL_METRICS.acknowledged("running", observed_at=1.0, changed_at=None) is None


def test_dunder_names_are_not_answered() -> None:
    with pytest.raises(AttributeError):
        NULL_METRICS.__length_hint__  # noqa: B018
    assert copy.copy(NULL_METRICS) is not None
