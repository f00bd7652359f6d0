"""The batch/v1 Job calls the watcher makes: list, watch, and the outcome finalizer.

Contract:
* `JobSource` is a `watch.reflector.Source` of `sniffer.jobview.JobView`s: paginated LIST
  and WATCH (with bookmarks) of ``/apis/batch/v1`` Jobs, in JSON (Jobs are few beside
  pods; no slim or protobuf decoding). The LIST and watch semantics are the pods' ones
  (`sniffer.pods.list_pages`, `sniffer.kube.KubeClient.watch_pods`): an expired continue
  token or 410 raises `Gone`, silence for `read_timeout` raises `WatchStalled`, a
  malformed line is yielded as `MalformedEvent`.
* `add_finalizer` / `release_finalizer` put Sniffer's outcome finalizer on a Job or take
  it off, with a strategic-merge patch carrying the Job's uid (never a resourceVersion:
  it never conflicts with the Job controller's status writes). Both answer True iff the
  patch landed, False iff the Job is gone or its name is another Job's now; anything
  else is raised for the caller to retry.
* Least privilege: these need `get, list, watch, patch` on `jobs` in `batch`, nothing
  on `jobs/status`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from urllib.parse import quote

import aiohttp

from sniffer.jobview import JobView, project_job
from sniffer.kube import KubeClient, watch_query
from sniffer.kubedecode import (
    JSON,
    MalformedEvent,
    NotFound,
    Page,
    Timeout,
    UidChanged,
    WatchEvent,
    WatchStalled,
    decode_event,
    decode_pod_list,
    read_body,
    watch_lines,
)
from sniffer.podview import OUTCOME_FINALIZER


def jobs_path(namespace: str | None, name: str | None = None) -> str:
    base = (f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs" if namespace
            else "/apis/batch/v1/jobs")
    return f"{base}/{quote(name)}" if name else base


class JobSource:
    """Tracked Jobs, as the reflector reads them."""

    what = "jobs"

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def pages(self, namespace: str | None, *, label_selector: str,
                    page_size: int) -> AsyncGenerator[Page, None]:
        path = jobs_path(namespace)
        token: str | None = None
        while True:
            response = await self._kube.request("GET", path, query={
                "labelSelector": label_selector or None, "limit": page_size,
                "continue": token}, client_timeout=aiohttp.ClientTimeout(total=120))
            page = decode_pod_list(await read_body(response, "GET", path))
            token = page.continue_token
            yield page
            if token is None:
                return

    async def watch(self, namespace: str | None, *, label_selector: str,
                    resource_version: str, timeout_seconds: int, read_timeout: float,
                    send_initial_events: bool = False,
                    ) -> AsyncGenerator[WatchEvent | MalformedEvent, None]:
        query = watch_query(label_selector, resource_version, timeout_seconds,
                            send_initial_events)
        try:
            response = await self._kube.request(
                "GET", jobs_path(namespace), query=query,
                client_timeout=aiohttp.ClientTimeout(total=None, sock_connect=read_timeout,
                                                     sock_read=read_timeout))
        except Timeout as exc:
            raise WatchStalled(0, f"watch did not open within {read_timeout:g}s") from exc
        try:
            async for line in watch_lines(response.content, read_timeout):
                try:
                    yield decode_event(line, read_at=time.monotonic())
                except MalformedEvent as bad:
                    yield bad
        finally:
            response.release()

    def project(self, obj: dict[str, object]) -> JobView:
        return project_job(obj)


async def _patch(kube: KubeClient, job: JobView, meta: JSON) -> bool:
    try:
        await kube.request_json(
            "PATCH", jobs_path(job.namespace, job.key[len(job.namespace) + 1:]),
            body={"metadata": {"uid": job.uid, **meta}},
            content_type="application/strategic-merge-patch+json")
    except (NotFound, UidChanged):  # gone, or the name is another Job's now
        return False
    return True


async def add_finalizer(kube: KubeClient, job: JobView) -> bool:
    """Put Sniffer's outcome finalizer on `job` (ObjectMeta.finalizers merges as a set)."""
    return await _patch(kube, job, {"finalizers": [OUTCOME_FINALIZER]})


async def release_finalizer(kube: KubeClient, job: JobView) -> bool:
    """Take Sniffer's outcome finalizer off `job`."""
    return await _patch(kube, job, {"$deleteFromPrimitiveList/finalizers": [OUTCOME_FINALIZER]})


class KubeJobFinalizers:
    """`watch.jobhandler.JobFinalizers` over one client."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def add(self, job: JobView) -> bool:
        return await add_finalizer(self._kube, job)

    async def release(self, job: JobView) -> bool:
        return await release_finalizer(self._kube, job)
