"""cli.uninstall against a real kube-apiserver: every tracked pod loses Sniffer's
finalizer, across pages (the listing is slim)."""

from __future__ import annotations

import uuid

from cli.uninstall import remove_all
from sniffer.kube import KubeClient
from sniffer.podview import project
from tests.fixtures.watcher import Pods
from watch.finalizer_patch import Finalizers


async def test_remove_all_takes_the_finalizer_off_every_tracked_pod_across_pages(
        kube: KubeClient, namespace: str) -> None:
    pods = Pods(kube, namespace)
    finalizers = Finalizers(kube, enabled=True)
    for i in range(5):
        view = project(await pods.create(f"p{i}", f"run-{uuid.uuid4().hex[:12]}"))
        if i % 2 == 0:
            await finalizers.ensure(view)
    report = await remove_all(kube, namespaces=(namespace,),
                              label_selector="sniffer.io/run-id", page_size=2)
    assert (report.scanned, report.removed, report.failed) == (5, 3, 0)
    for i in range(5):
        assert await pods.finalizers(f"p{i}") == []
