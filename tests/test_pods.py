"""sniffer.pods against a real kube-apiserver: every page of a LIST, and the one
finalizer release (the 404 and 422 answers it counts as "not this pod")."""

from __future__ import annotations

import uuid

import pytest

from sniffer.kube import KubeClient
from sniffer.kubedecode import JSON, Conflict
from sniffer.pods import list_pages, release_finalizer
from tests.fixtures.watcher import Pods

OTHER = "example.com/keep-me"


def _run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


async def _hold(pods: Pods, name: str, *finalizers: str) -> None:
    await pods.kube.patch_pod(pods.namespace, name, {"metadata": {"finalizers": list(finalizers)}})


async def test_list_pages_yields_every_pod_once_and_ends_on_the_last_page(
        kube: KubeClient, namespace: str) -> None:
    pods = Pods(kube, namespace)
    for i in range(5):
        await pods.create(f"p{i}", _run_id())
    pages = [page async for page in list_pages(kube, namespace,
                                                label_selector="sniffer.io/run-id",
                                                page_size=2)]
    names = [item["metadata"]["name"] for page in pages for item in page.items]
    assert sorted(names) == [f"p{i}" for i in range(5)]
    assert [len(page.items) for page in pages] == [2, 2, 1]
    assert [page.continue_token is None for page in pages] == [False, False, True]
    assert pages[-1].resource_version, "the list's resourceVersion comes with the last page"


async def test_list_pages_of_nothing_is_one_empty_page(kube: KubeClient, namespace: str) -> None:
    pages = [page async for page in list_pages(kube, namespace,
                                                label_selector="sniffer.io/run-id=none",
                                                page_size=2)]
    assert [page.items for page in pages] == [[]]


async def test_release_finalizer_takes_off_only_that_finalizer(
        kube: KubeClient, namespace: str) -> None:
    pods = Pods(kube, namespace)
    created = await pods.create("p", _run_id())
    await _hold(pods, "p", "sniffer.io/outcome", OTHER)
    assert await release_finalizer(kube, namespace, "p", created["metadata"]["uid"])
    assert await pods.finalizers("p") == [OTHER]
    await _hold(pods, "p")


async def test_release_finalizer_of_a_pod_that_is_gone_answers_false(
        kube: KubeClient, namespace: str) -> None:
    pods = Pods(kube, namespace)
    created = await pods.create("p", _run_id())
    await pods.delete("p", grace_s=0)
    assert await pods.get("p") is None
    assert not await release_finalizer(kube, namespace, "p", created["metadata"]["uid"])


async def test_release_finalizer_never_lands_on_a_new_pod_that_took_the_name(
        kube: KubeClient, namespace: str) -> None:
    pods = Pods(kube, namespace)
    old = await pods.create("p", _run_id())
    await pods.delete("p", grace_s=0)
    await pods.create("p", _run_id())
    await _hold(pods, "p", "sniffer.io/outcome")
    # The API server answers the old uid with 422; that means "not this pod", not failure.
    assert not await release_finalizer(kube, namespace, "p", old["metadata"]["uid"])
    assert await pods.finalizers("p") == ["sniffer.io/outcome"]
    await _hold(pods, "p")


async def test_release_finalizer_without_a_uid_releases_whichever_pod_has_the_name(
        kube: KubeClient, namespace: str) -> None:
    pods = Pods(kube, namespace)
    await pods.create("p", _run_id())
    await _hold(pods, "p", "sniffer.io/outcome")
    assert await release_finalizer(kube, namespace, "p", None)
    assert await pods.finalizers("p") == []


class _GivesUp:
    """A patch the API server gave up retrying on conflicts (409): no real server produces
    that on demand, so this one call is stood in for."""

    async def patch_pod(self, namespace: str, name: str, patch: JSON | list[JSON], *,
                        content_type: str = "") -> JSON:
        raise Conflict(409, "the object has been modified")


async def test_release_finalizer_raises_a_conflict_instead_of_calling_it_done() -> None:
    with pytest.raises(Conflict):
        await release_finalizer(_GivesUp(), "ns", "p", "uid-1")
