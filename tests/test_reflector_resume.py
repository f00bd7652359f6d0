"""watch.reflector: a watch that fails resumes from the last version it delivered.

A fake `Source` (pure: no server) scripts the streams: the first delivers two pods and
then breaks or goes silent; the test reads where the second watch was opened. Resuming
from the first watch's start instead would replay what the store already has and, after
a compaction, turn a short break into a 410 and a full relist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import cast

import pytest

from sniffer.kube import KubeClient
from sniffer.kubedecode import (
    KubeError,
    MalformedEvent,
    Page,
    WatchEvent,
    WatchStalled,
    decode_pod_list,
)
from sniffer.podview import PodView, project
from tests.test_fuzz_watch import real_pod
from watch.reflector import Reflector
from watch.store import PodStore

NS = "resume"


class Scripted:
    """Lists nothing at version 10; the first watch delivers pods at 11 and 12, then
    raises `failure`; later watches record where they were opened and wait."""

    what = "pods"

    def __init__(self, failure: Exception) -> None:
        self._failure = failure
        self.opened_at: list[str] = []
        self.reopened = asyncio.Event()

    async def pages(self, namespace: str | None, *, label_selector: str,
                    page_size: int) -> AsyncGenerator[Page, None]:
        yield decode_pod_list(json.dumps({"metadata": {"resourceVersion": "10"},
                                          "items": []}).encode(), slim=True)

    async def watch(self, namespace: str | None, *, label_selector: str,
                    resource_version: str, timeout_seconds: int, read_timeout: float,
                    send_initial_events: bool = False,
                    ) -> AsyncGenerator[WatchEvent | MalformedEvent, None]:
        self.opened_at.append(resource_version)
        if len(self.opened_at) == 1:
            for i, rv in enumerate((11, 12)):
                pod = real_pod(f"job-r-{i}", f"r-{i}", rv=rv)
                pod["metadata"]["namespace"] = NS
                yield WatchEvent("ADDED", pod)
            raise self._failure
        self.reopened.set()
        await asyncio.Event().wait()

    def project(self, obj: dict[str, object]) -> PodView:
        return project(obj)


@pytest.mark.parametrize("failure", [KubeError(0, "watch stream broke: payload cut"),
                                     WatchStalled(0, "watch stream silent for 1s")],
                         ids=["broken", "stalled"])
async def test_a_failed_watch_resumes_from_the_last_version_it_delivered(
        failure: Exception) -> None:
    source = Scripted(failure)
    store = PodStore((NS,))
    changed: list[str] = []
    reflector = Reflector(cast(KubeClient, None), store,
                          lambda key, _priority: changed.append(key), namespaces=(NS,),
                          label_selector="sniffer.io/run-id", source=source)
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(source.reopened.wait(), 30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert source.opened_at == ["10", "12"]
    assert sorted(changed) == [f"{NS}/job-r-0", f"{NS}/job-r-1"]

