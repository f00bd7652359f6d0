"""watch.finalizer_patch against a real kube-apiserver: adding and releasing."""

from __future__ import annotations

import dataclasses
import uuid

from sniffer.kube import KubeClient
from sniffer.podview import OUTCOME_FINALIZER, project
from tests.fixtures.watcher import Pods
from watch.finalizer_patch import Finalizers


async def test_ensure_then_release_puts_and_takes_the_finalizer(
        kube: KubeClient, namespace: str) -> None:
    pods = Pods(kube, namespace)
    finalizers = Finalizers(kube, enabled=True)
    view = project(await pods.create("p", f"run-{uuid.uuid4().hex[:12]}"))
    assert await finalizers.ensure(view)
    assert await pods.finalizers("p") == [OUTCOME_FINALIZER]
    held = project(await pods.get("p"))
    assert not await finalizers.ensure(held), "already there: no patch"
    assert await finalizers.release(held)
    assert await pods.finalizers("p") == []


async def test_a_release_decided_for_a_pod_never_lands_on_a_new_pod_that_took_its_name(
        kube: KubeClient, namespace: str) -> None:
    pods = Pods(kube, namespace)
    finalizers = Finalizers(kube, enabled=True)
    old = project(await pods.create("p", f"run-{uuid.uuid4().hex[:12]}"))
    await pods.delete("p", grace_s=0)
    new = project(await pods.create("p", f"run-{uuid.uuid4().hex[:12]}"))
    assert await finalizers.ensure(new)
    held_old = dataclasses.replace(old, finalizers=(OUTCOME_FINALIZER,))
    assert not await finalizers.release(held_old), "the uid precondition failed"
    assert not await finalizers.ensure(old), "nor does an add"
    assert await pods.finalizers("p") == [OUTCOME_FINALIZER]
    assert await finalizers.release(project(await pods.get("p")))
    assert await pods.finalizers("p") == []
