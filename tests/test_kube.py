"""sniffer.kube's KubeClient against a real kube-apiserver: reading one pod, in full and
slim. (Decoding alone, without a server: tests/test_kube_decode.py.)"""

from __future__ import annotations

import uuid

import pytest

from sniffer.kube import KubeClient
from sniffer.kubedecode import NotFound
from sniffer.podview import CANCEL_ANNOTATION, OUTCOME_FINALIZER, project
from tests.fixtures.watcher import Pods


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


async def test_a_slim_pod_projects_as_the_full_pod_in_every_shape_and_drops_the_rest(
        kube: KubeClient, namespace: str) -> None:
    pods = Pods(kube, namespace)
    await pods.create("pending", run_id())
    await pods.create("running", run_id(), kind="notebook",
                      annotations={CANCEL_ANNOTATION: "true"})
    await pods.running("running")
    await pods.create("oom", run_id())
    await pods.terminated("oom", exit_code=137, reason="OOMKilled")
    await pods.create("evicted", run_id())
    await pods.terminated("evicted", exit_code=1, reason="Error", phase="Failed",
                          pod_reason="Evicted", message="low on memory")
    await pods.create("deleting", run_id())
    await pods.succeeded("deleting")
    await kube.patch_pod(namespace, "deleting", {"metadata": {"finalizers": [OUTCOME_FINALIZER]}})
    await pods.delete("deleting")  # held by the finalizer: a deletionTimestamp, still there
    for name in ("pending", "running", "oom", "evicted", "deleting"):
        full = await kube.get_pod(namespace, name)
        slim = await kube.get_pod(namespace, name, slim=True)
        assert project(slim) == project(full), name
        assert "managedFields" in full["metadata"]
        assert "managedFields" not in slim["metadata"]
        assert "image" not in slim["spec"]["containers"][0]
    assert project(slim).deletion_timestamp is not None


async def test_a_missing_pod_is_not_found_slim_or_full(
        kube: KubeClient, namespace: str) -> None:
    for slim in (False, True):
        with pytest.raises(NotFound):
            await kube.get_pod(namespace, "nothing-here", slim=slim)
