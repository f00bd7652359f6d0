"""Which cached pods are which cached Job's attempts, and which Job key a change wakes.

Contract:
* `job_changed(key)` (the Job reflector's callback) remembers the Job's uid → key and
  passes the key on (`on_job(key, priority)`, the Job pool's `on_change`).
* `pod_changed(key)` (beside the pod pool's `on_change`, on the pod reflector's
  callback) files a pod a Job made (`sniffer.jobs.owned_by_job`) under its Job's uid and
  wakes that Job's key if the Job is cached; a pod cached before its Job is filed all
  the same, and the Job's own arrival wakes its key. Pods of no Job pass nothing on.
* `attempts(job)` are the cached pods filed under `job`'s uid that are still cached
  as that Job's (a tombstone counts: the pod's last view); keys found gone are unfiled.
* `forget(job)` unfiles a Job whose run is over (acknowledged terminal, or not reported)
  and forgets its attempts' tombstones: the pod path leaves those to the Job path while
  `holds(uid)` (the Job is filed: cached, or tombstoned and not yet handled), and
  forgets them itself otherwise.
* Never awaits; single-threaded asyncio use.

Invariant: a pod key is in `_attempts[uid]` only if it was last seen as a pod of the Job
with that uid (or has not been looked at since it stopped being one).
"""

from __future__ import annotations

from collections.abc import Callable

from sniffer.jobs import owned_by_job
from sniffer.jobview import JobView
from sniffer.podview import PodView
from watch.store import JobStore, PodStore
from watch.workqueue import Priority


class JobIndex:
    """Ties attempt pods to their Job. Constructing starts nothing."""

    def __init__(self, *, pods: PodStore, jobs: JobStore,
                 on_job: Callable[[str, Priority], None]) -> None:
        self._pods = pods
        self._jobs = jobs
        self._on_job = on_job
        self._keys: dict[str, str] = {}
        """Job uid → Job key, of the Jobs cached (or tombstoned) since last forgotten."""
        self._attempts: dict[str, set[str]] = {}
        """Job uid → keys of the pods seen as its attempts."""

    def job_changed(self, key: str, priority: Priority = Priority.LIVE) -> None:
        job = self._jobs.get(key)
        if job is not None:
            self._keys[job.uid] = key
        self._on_job(key, priority)

    def pod_changed(self, key: str, priority: Priority = Priority.LIVE) -> None:
        pod = self._pods.get(key)
        if not isinstance(pod, PodView) or not owned_by_job(pod) or pod.owner_uid is None:
            return
        self._attempts.setdefault(pod.owner_uid, set()).add(key)
        job_key = self._keys.get(pod.owner_uid)
        if job_key is not None:
            self._on_job(job_key, priority)

    def holds(self, uid: str | None) -> bool:
        """Whether the Job of `uid` is filed here: the Job path will look at (and forget)
        its attempts' tombstones."""
        return uid is not None and uid in self._keys

    def attempts(self, job: JobView) -> list[PodView]:
        keys = self._attempts.get(job.uid)
        if not keys:
            return []
        found: list[PodView] = []
        for key in list(keys):
            pod = self._pods.get(key)
            if isinstance(pod, PodView) and pod.owner_uid == job.uid:
                found.append(pod)
            else:  # gone, settled, or another pod took the name: not an attempt now
                keys.discard(key)
        return found

    def forget(self, job: JobView, *, deleted: bool = True) -> None:
        """Forget the attempts' tombstones; `deleted`: the Job's deletion is handled,
        unfile it too."""
        for key in self._attempts.get(job.uid, ()):
            pod = self._pods.get(key)
            if pod is not None and self._pods.is_deleted(key):
                self._pods.forget_tombstone(key, pod)
        if deleted:
            self._keys.pop(job.uid, None)
            self._attempts.pop(job.uid, None)
