"""The simulator's Kubernetes writes, timed, bounded and retried, over `KubeClient`.

Contract:

* Every call returns an `Accepted`: the server's answer (a Pod, or a Status for the
  Eviction and Binding subresources; None when a deletion found nothing), with the client
  wall clock just before the request that succeeded was sent and just after its answer
  arrived. `Accepted.resource_version` is the pod's resourceVersion when the answer is a pod.
* At most as many requests are in flight as the shared semaphore allows (held per attempt,
  never while backing off).
* Transport errors, 429 and 5xx are retried with jittered exponential backoff, up to
  ``attempts`` tries; then the last `KubeError` is raised. A retry that finds its first
  attempt applied counts as success: a create answered 409 AlreadyExists returns the pod as
  it now is, a deletion answered 404 returns None, a binding answered 409 returns None.
* Nothing here sleeps outside the backoff, and nothing holds state but the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

from sniffer.kube import KubeClient
from sniffer.kubedecode import Conflict, KubeError, NotFound

JSON = dict[str, Any]
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
RETRYABLE = frozenset({0, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Accepted:
    obj: JSON | None
    sent_at: float
    accepted_at: float

    @property
    def resource_version(self) -> str | None:
        if self.obj is None or self.obj.get("kind") not in ("Pod", None):
            return None
        rv = (self.obj.get("metadata") or {}).get("resourceVersion")
        return str(rv) if rv else None


@dataclass
class Counters:
    """Requests made (every attempt) and retries, across the Kubernetes and platform APIs."""

    kube_requests: int = 0
    platform_requests: int = 0
    retries: int = 0


def backoff(attempt: int, *, floor: float = 0.0) -> float:
    """Full-jitter exponential backoff: up to 50 ms · 2^attempt, at most 2 s."""
    return max(floor, random.uniform(0, min(2.0, 0.05 * 2 ** attempt)))


class PodApi:
    """Pod and namespace calls for one `KubeClient`; share one semaphore with the platform."""

    def __init__(self, kube: KubeClient, limit: asyncio.Semaphore, *,
                 counters: Counters | None = None, attempts: int = 8) -> None:
        self.kube = kube
        self._limit = limit
        self.counters = counters or Counters()
        self._attempts = attempts

    async def call(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                   body: Any = None, content_type: str = "application/json") -> Accepted:
        """One request with retries; `Conflict`/`NotFound` on the first attempt are raised
        as is (the caller knows what they mean), later ones are raised as `_Repeated`."""
        for attempt in range(self._attempts):
            async with self._limit:
                sent = time.time()
                self.counters.kube_requests += 1
                try:
                    obj = await self.kube.request_json(method, path, query=query, body=body,
                                                       content_type=content_type)
                except KubeError as e:
                    if attempt > 0 and isinstance(e, Conflict | NotFound):
                        raise _Repeated(e.status, e.message) from e
                    if e.status not in RETRYABLE or attempt == self._attempts - 1:
                        raise
                    error = e
                else:
                    return Accepted(obj, sent, time.time())
            self.counters.retries += 1
            await asyncio.sleep(backoff(attempt, floor=0.2 if error.status == 429 else 0.0))
        raise AssertionError("unreachable")

    async def ensure_namespace(self, name: str) -> None:
        """Create the namespace unless it exists."""
        try:
            await self.call("GET", f"/api/v1/namespaces/{name}")
        except NotFound:
            with contextlib.suppress(Conflict, _Repeated):  # somebody else created it
                await self.call("POST", "/api/v1/namespaces", body={
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    async def create_pod(self, manifest: JSON) -> Accepted:
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            return await self.call("POST", KubeClient.pods_path(ns), body=manifest)
        except _Repeated as e:
            if e.status != 409:
                raise
            accepted = await self.call("GET", KubeClient.pods_path(ns, name))
            return accepted

    async def patch_status(self, ns: str, name: str, status: JSON, *, uid: str | None = None,
                           resource_version: str | None = None) -> Accepted:
        """A strategic merge patch of the status subresource (conditions merge by type);
        with `uid` / `resource_version` it applies only to that pod / that version
        (`Conflict` otherwise)."""
        body: JSON = {"status": status}
        meta = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        if meta:
            body["metadata"] = meta
        return await self.call("PATCH", KubeClient.pods_path(ns, name) + "/status",
                               body=body, content_type=STRATEGIC)

    async def annotate(self, ns: str, name: str, annotations: dict[str, str]) -> Accepted:
        return await self.call("PATCH", KubeClient.pods_path(ns, name),
                               body={"metadata": {"annotations": annotations}},
                               content_type=MERGE)

    async def delete(self, ns: str, name: str, *, grace_s: int | None,
                     uid: str | None = None) -> Accepted:
        """DELETE the pod (with `grace_s`, or the pod's own grace period if None; only if
        its uid is still `uid`). The answer is the pod as deletion left it (Terminating, or
        its last state if it is gone), or None if there was no such pod."""
        options: JSON = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_s is not None:
            options["gracePeriodSeconds"] = grace_s
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        sent = time.time()
        try:
            return await self.call("DELETE", KubeClient.pods_path(ns, name), body=options)
        except (NotFound, _Repeated) as e:
            if e.status != 404:
                raise
            return Accepted(None, sent, time.time())

    async def evict(self, ns: str, name: str, *, grace_s: int | None) -> Accepted:
        """The Eviction API: the server adds DisruptionTarget (EvictionByEvictionAPI) and
        deletes the pod gracefully. Answers a Status."""
        body: JSON = {"apiVersion": "policy/v1", "kind": "Eviction",
                      "metadata": {"name": name, "namespace": ns}}
        if grace_s is not None:
            body["deleteOptions"] = {"gracePeriodSeconds": grace_s}
        return await self.call("POST", KubeClient.pods_path(ns, name) + "/eviction", body=body)

    async def bind(self, ns: str, name: str, node: str) -> Accepted:
        """What the scheduler does: the Binding subresource sets nodeName and PodScheduled."""
        sent = time.time()
        try:
            return await self.call("POST", KubeClient.pods_path(ns, name) + "/binding", body={
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
        except _Repeated as e:
            if e.status != 409:
                raise
            return Accepted(None, sent, time.time())

    async def get(self, ns: str, name: str) -> JSON | None:
        try:
            return (await self.call("GET", KubeClient.pods_path(ns, name))).obj
        except NotFound:
            return None


class _Repeated(KubeError):
    """A retried request got 404/409: its first attempt was probably applied."""
