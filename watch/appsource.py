"""The apps/v1 calls the watcher makes for app controllers: list, watch, outcome finalizer.

Contract:
* `AppSource(kube, controller)` is a `watch.reflector.Source` of `sniffer.appview.AppView`s
  for one controller kind ("Deployment" or "StatefulSet"): paginated LIST and WATCH (with
  bookmarks) of ``/apis/apps/v1`` deployments or statefulsets, in JSON, with the Job
  source's semantics (`watch.jobsource.json_pages`, `json_watch`): an expired continue
  token or 410 raises `Gone`, silence for `read_timeout` raises `WatchStalled`, a
  malformed line is yielded as `MalformedEvent`; `send_initial_events` asks for a
  WatchList stream (`sniffer.kube.watch_query`), as for pods and Jobs.
* `KubeAppFinalizers.add` / `release` put Sniffer's outcome finalizer on the controller or
  take it off, with a strategic-merge patch carrying its uid (never a resourceVersion:
  it never conflicts with the controller's status writes). Both answer True iff the
  patch landed, False iff the object is gone or its name is another's now; anything
  else is raised for the caller to retry.
* Least privilege: these need `list, watch, patch` on `deployments` (or `statefulsets`)
  in `apps` (never a GET), nothing on their `status` or `scale`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from urllib.parse import quote

from sniffer.appview import DEPLOYMENT, STATEFULSET, AppView, project_app
from sniffer.kube import KubeClient
from sniffer.kubedecode import MalformedEvent, Page, WatchEvent
from watch.jobsource import json_pages, json_watch, patch_finalizer

RESOURCES = {DEPLOYMENT: "deployments", STATEFULSET: "statefulsets"}
"""The resource (the `kube.kinds` name) of each app controller kind."""


def apps_path(controller: str, namespace: str | None, name: str | None = None) -> str:
    resource = RESOURCES[controller]
    base = (f"/apis/apps/v1/namespaces/{quote(namespace)}/{resource}" if namespace
            else f"/apis/apps/v1/{resource}")
    return f"{base}/{quote(name)}" if name else base


class AppSource:
    """Tracked controllers of one kind, as the reflector reads them."""

    def __init__(self, kube: KubeClient, controller: str) -> None:
        self._kube = kube
        self._controller = controller
        self.what = RESOURCES[controller]

    def pages(self, namespace: str | None, *, label_selector: str,
              page_size: int) -> AsyncGenerator[Page, None]:
        return json_pages(self._kube, apps_path(self._controller, namespace),
                          label_selector=label_selector, page_size=page_size)

    def watch(self, namespace: str | None, *, label_selector: str, resource_version: str,
              timeout_seconds: int, read_timeout: float, send_initial_events: bool = False,
              ) -> AsyncGenerator[WatchEvent | MalformedEvent, None]:
        return json_watch(self._kube, apps_path(self._controller, namespace),
                          label_selector=label_selector, resource_version=resource_version,
                          timeout_seconds=timeout_seconds, read_timeout=read_timeout,
                          send_initial_events=send_initial_events)

    def project(self, obj: dict[str, object]) -> AppView:
        return project_app(obj, controller=self._controller)


class KubeAppFinalizers:
    """`watch.apphandler.AppFinalizers` over one client."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def add(self, app: AppView) -> bool:
        return await patch_finalizer(self._kube, apps_path(app.controller, app.namespace,
                                                           app.name), app.uid, release=False)

    async def release(self, app: AppView) -> bool:
        return await patch_finalizer(self._kube, apps_path(app.controller, app.namespace,
                                                           app.name), app.uid, release=True)
