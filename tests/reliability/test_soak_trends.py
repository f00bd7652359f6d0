"""The soak's verdict on resource trends (`tests.reliability.soak.trends`) and how it
counts a watcher's connections to the platform (`connections_to`)."""

from __future__ import annotations

import os
import socket
from typing import Any

from tests.reliability.soak import POOL_CAPS, connections_to, trends


def samples(measure: str, values: list[int]) -> list[dict[str, Any]]:
    """One watcher sampled every 10 s from t=0, with these values of `measure`."""
    return [{"t": 10.0 * i, "watcher": "w", "pid": 1, measure: n}
            for i, n in enumerate(values)]


def verdict(found: list[dict[str, Any]], measure: str = "other_fds") -> str:
    return next(t["verdict"] for t in found if t["measure"] == measure)


# Descriptors a fault held and gave back: up while it lasts, down once it is over.
HELD = [20] * 8 + [50] * 12 + [42] * 8 + [20] * 4


def test_descriptors_a_fault_held_and_gave_back_are_flat_once_the_faults_are_over():
    assert verdict(trends(samples("other_fds", HELD), 0.0, quiet_from=280.0)) == "flat"


def test_without_a_quiet_tail_the_last_quarter_is_judged():
    assert verdict(trends(samples("other_fds", HELD), 0.0, quiet_from=None)) == "GROWS"


def test_descriptors_still_open_after_the_faults_are_a_leak():
    leak = [20] * 8 + [30] * 8 + [40] * 8 + [50] * 8
    assert verdict(trends(samples("other_fds", leak), 0.0, quiet_from=280.0)) == "GROWS"


def test_a_quiet_tail_of_fewer_than_three_samples_falls_back_to_the_last_quarter():
    found = trends(samples("other_fds", HELD[:-2]), 0.0, quiet_from=290.0)
    assert verdict(found) == "GROWS"


def test_a_pool_that_stays_at_its_high_water_mark_is_bounded():
    for measure in POOL_CAPS:
        pool = [3] * 8 + [POOL_CAPS[measure]] * 24
        found = trends(samples(measure, pool), 0.0, quiet_from=280.0)
        assert verdict(found, measure) == "bounded"


def test_more_platform_connections_than_the_pool_allows_are_over_its_cap():
    pool = [10] * 8 + [40] * 23 + [POOL_CAPS["platform_conns"] + 1]
    found = trends(samples("platform_conns", pool), 0.0, quiet_from=280.0)
    assert verdict(found, "platform_conns") == "OVER CAP"


def test_connections_to_counts_this_processs_open_connections_to_one_port_only():
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_server(("127.0.0.1", 0)) as other:
        port = server.getsockname()[1]
        before = connections_to(os.getpid(), port)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        bystander = socket.create_connection(("127.0.0.1", other.getsockname()[1]))
        try:
            assert connections_to(os.getpid(), port) == before + 3
            clients.pop().close()
            assert connections_to(os.getpid(), port) == before + 2
        finally:
            for s in [*clients, bystander]:
                s.close()
