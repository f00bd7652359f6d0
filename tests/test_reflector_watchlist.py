"""The reflector's streamed list (WatchList) against real API servers: one that serves it,
and one with the WatchList feature gate off, which must get paginated LISTs instead.

A streamed list arrives as ADDED events on a watch, so the reflector's event counts tell
it from a paginated LIST (which counts none); the loopback proxy's open connections tell
that the live events come on the same stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from sniffer.kube import KubeClient
from testbed.apiserver import ApiServer, start
from tests.fixtures.watcher import Pods, eventually
from tests.test_reflector import Harness, harness
from watch.workqueue import Priority


def streaming(server: ApiServer, namespace: str, tmp_path: Path, *,
              wire: str = "protobuf") -> contextlib.AbstractAsyncContextManager[Harness]:
    """The reflector harness of test_reflector, asking for streamed lists."""
    return harness(server, namespace, tmp_path, wire=wire, watch_list=True)


@pytest.fixture(scope="module")
def apiserver_without_watch_list(tmp_path_factory: pytest.TempPathFactory,
                                 ) -> Iterator[ApiServer]:
    server = start(tmp_path_factory.mktemp("apiserver-no-watchlist"),
                   extra_args=["--feature-gates=WatchList=false"])
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("wire", ["protobuf", "json"])
async def test_a_streamed_list_fills_the_store_at_its_end_bookmark_then_goes_on_live(
        apiserver, namespace, kube, tmp_path, wire):
    pods = Pods(kube, namespace)
    await asyncio.gather(*(pods.create(f"p-{i}", f"run-{i}") for i in range(25)))
    async with streaming(apiserver, namespace, tmp_path, wire=wire) as h:
        await asyncio.wait_for(h.store.wait_synced(), 30)
        assert len(h.store) == 25
        assert h.metrics.events["ADDED"] == 25  # the list came as events, not a LIST
        assert set(h.priorities.values()) == {Priority.LIST}  # a backlog, not news
        assert h.metrics.relists == ["initial"]
        await pods.create("during", "run-during")
        await eventually(lambda: h.store.get(f"{namespace}/during"))
        assert h.priorities[f"{namespace}/during"] is Priority.LIVE
        assert h.proxy.live == 1  # on the stream that listed
        assert h.reflector.watch_list
        assert h.metrics.relists == ["initial"]


async def test_a_cut_after_the_streamed_list_resumes_the_watch_without_listing_again(
        apiserver, namespace, kube, tmp_path):
    pods = Pods(kube, namespace)
    await pods.create("before", "run-before")
    async with streaming(apiserver, namespace, tmp_path) as h:
        await asyncio.wait_for(h.store.wait_synced(), 30)
        h.proxy.cut()
        await pods.create("after", "run-after")
        await eventually(lambda: h.store.get(f"{namespace}/after"))
        assert h.priorities[f"{namespace}/after"] is Priority.LIVE
        assert h.metrics.relists == ["initial"]
        assert h.metrics.events["ADDED"] == 2  # "before" once, "after" once: no relist
        assert "error" in h.metrics.restarts


async def test_a_server_that_forbids_streamed_lists_gets_paginated_lists_from_then_on(
        apiserver_without_watch_list, tmp_path):
    server = apiserver_without_watch_list
    admin = await KubeClient.connect(kubeconfig=str(server.kubeconfig))
    try:
        namespace = "paginated"
        await admin.request_json("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        pods = Pods(admin, namespace)
        await asyncio.gather(*(pods.create(f"p-{i}", f"run-{i}") for i in range(3)))
        async with streaming(server, namespace, tmp_path) as h:
            await asyncio.wait_for(h.store.wait_synced(), 30)
            assert len(h.store) == 3
            assert not h.reflector.watch_list
            assert h.metrics.events["ADDED"] == 0  # listed by LIST, not streamed
            await pods.create("during", "run-during")
            await eventually(lambda: h.store.get(f"{namespace}/during"))
            assert h.priorities[f"{namespace}/during"] is Priority.LIVE
            assert h.metrics.relists == ["initial"]
    finally:
        await admin.close()
