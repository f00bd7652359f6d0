"""The two pod operations every part of Sniffer composes from `KubeClient`'s calls.

Contract:
* `list_pages` (pods) and `list_job_pages` (batch/v1 Jobs) yield every page of one
  paginated LIST, in order. The first page is a
  consistent read from etcd; later pages come from the same snapshot through the continue
  token, so together they are one point-in-time list, whose resourceVersion is the last
  page's. An expired token raises `Gone` from the iteration: the caller starts over (a
  partial list is not a list).
* `release_finalizer` removes one finalizer from one pod with a strategic-merge patch,
  without a resourceVersion precondition (it never conflicts with the kubelet or other
  controllers), but with the pod's uid when known: a release decided for one pod never
  lands on a new pod that took its name. It answers True iff the patch landed; False iff
  the pod is gone (404) or its name belongs to another pod now (the API server refuses a
  patch that would change the immutable uid with 422, `UidChanged`). Everything else,
  409 from a patch the server gave up retrying included, is raised: the finalizer is
  still there and the caller must retry or report it. `release_job_finalizer` does the
  same for a batch/v1 Job (the watcher's outcome finalizer on Jobs),
  `release_app_finalizer` for a Deployment or StatefulSet; `list_app_pages` lists those
  as `list_job_pages` lists Jobs.
* Both take the small protocols below, so tests and callers may pass any client that
  has the call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

from sniffer.kubedecode import JSON, NotFound, Page, UidChanged
from sniffer.podview import OUTCOME_FINALIZER


class PageLister(Protocol):
    """The `KubeClient` call `list_pages` makes."""

    async def list_pods(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None, slim: bool = False) -> Page: ...


class JobPageLister(Protocol):
    """The `KubeClient` call `list_job_pages` makes."""

    async def list_jobs(self, namespace: str | None, *, label_selector: str, limit: int,
                        continue_token: str | None = None) -> Page: ...


class JobPatcher(Protocol):
    """The `KubeClient` call `release_job_finalizer` makes."""

    async def patch_job(self, namespace: str, name: str, patch: JSON, *,
                        content_type: str = ...) -> JSON: ...


class PodPatcher(Protocol):
    """The `KubeClient` call `release_finalizer` makes."""

    async def patch_pod(self, namespace: str, name: str, patch: JSON | list[JSON], *,
                        content_type: str = ...) -> JSON: ...


def list_pages(kube: PageLister, namespace: str | None, *, label_selector: str,
                     page_size: int, slim: bool = True) -> AsyncGenerator[Page, None]:
    """Every page of the LIST of `namespace`'s pods (None: all namespaces) that match
    `label_selector`, `page_size` items at most per page; `slim`: as
    `KubeClient.list_pods`."""
    async def fetch(token: str | None) -> Page:
        return await kube.list_pods(namespace, label_selector=label_selector,
                                    limit=page_size, continue_token=token, slim=slim)
    return _paged(fetch)


def list_job_pages(kube: JobPageLister, namespace: str | None, *, label_selector: str,
                         page_size: int) -> AsyncGenerator[Page, None]:
    """Every page of the LIST of `namespace`'s Jobs, as `list_pages` for pods."""
    async def fetch(token: str | None) -> Page:
        return await kube.list_jobs(namespace, label_selector=label_selector,
                                    limit=page_size, continue_token=token)
    return _paged(fetch)


class AppPageLister(Protocol):
    """The `KubeClient` call `list_app_pages` makes."""

    async def list_apps(self, resource: str, namespace: str | None, *, label_selector: str,
                        limit: int, continue_token: str | None = None) -> Page: ...


class AppPatcher(Protocol):
    """The `KubeClient` call `release_app_finalizer` makes."""

    async def patch_app(self, resource: str, namespace: str, name: str, patch: JSON, *,
                        content_type: str = ...) -> JSON: ...


def list_app_pages(kube: AppPageLister, resource: str, namespace: str | None, *,
                   label_selector: str, page_size: int) -> AsyncGenerator[Page, None]:
    """Every page of the LIST of `namespace`'s apps/v1 `resource` ("deployments",
    "statefulsets"), as `list_pages` for pods."""
    async def fetch(token: str | None) -> Page:
        return await kube.list_apps(resource, namespace, label_selector=label_selector,
                                    limit=page_size, continue_token=token)
    return _paged(fetch)


async def release_app_finalizer(kube: AppPatcher, resource: str, namespace: str, name: str,
                                uid: str | None, finalizer: str = OUTCOME_FINALIZER) -> bool:
    """As `release_finalizer`, for the apps/v1 `resource` object `namespace/name`."""
    try:
        await kube.patch_app(resource, namespace, name, _without(finalizer, uid))
    except (NotFound, UidChanged):
        return False
    return True


async def _paged(fetch: Callable[[str | None], Awaitable[Page]]) -> AsyncGenerator[Page, None]:
    """The one paging loop: fetch(None), then fetch(continue token) until there is none."""
    token: str | None = None
    while True:
        page = await fetch(token)
        token = page.continue_token
        yield page
        if token is None:
            return


async def release_finalizer(kube: PodPatcher, namespace: str, name: str, uid: str | None,
                            finalizer: str = OUTCOME_FINALIZER) -> bool:
    """Remove `finalizer` from pod `namespace/name` if that pod still has uid `uid` (None:
    whichever pod has the name, for uninstall). True iff the patch landed."""
    try:
        await kube.patch_pod(namespace, name, _without(finalizer, uid))
    except (NotFound, UidChanged):  # gone, or the name is another pod's now
        return False
    return True


async def release_job_finalizer(kube: JobPatcher, namespace: str, name: str, uid: str | None,
                                finalizer: str = OUTCOME_FINALIZER) -> bool:
    """As `release_finalizer`, for Job `namespace/name`."""
    try:
        await kube.patch_job(namespace, name, _without(finalizer, uid))
    except (NotFound, UidChanged):
        return False
    return True


def _without(finalizer: str, uid: str | None) -> JSON:
    """The strategic-merge patch that removes `finalizer`, on the object with `uid`."""
    meta: JSON = {"$deleteFromPrimitiveList/finalizers": [finalizer]}
    if uid:
        meta["uid"] = uid
    return {"metadata": meta}
