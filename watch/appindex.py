"""Which cached pods are which cached app controller's replicas, and which key a change wakes.

Contract:
* One index per controller kind ("Deployment" or "StatefulSet").
* `app_changed(key)` (the controller reflector's callback) remembers the run
  (namespace, run id) → the controller's key and passes the key on (`on_app(key,
  priority)`, the app pool's `on_change`).
* `pod_changed(key)` (beside the pod pool's `on_change`, on the pod reflector's callback)
  files a replica pod of this kind (`sniffer.apps.replica_owner`) under its run and wakes
  the run's controller key if one is cached; a pod cached before its controller is filed
  all the same, and the controller's arrival wakes its key. A filed pod's deletion wakes
  the key too (its tombstone still names the run). Other pods pass nothing on.
* `replicas(app)` are the cached pods filed under `app`'s run (tombstones included: the
  derivation ignores them); keys found gone or no longer replicas are unfiled.
* `adopts(app, uid)`: the run is bound to `uid`, a replica of `app` (bound while the kind
  was not watched, when the pod path reported the replica as a bare pod). Once seen it
  is remembered until `forget(app)`, so the replica's replacement keeps the adoption;
  after a restart it is seen again only while that replica is cached.
* `forget(app)` unfiles a controller whose deletion is handled.
* Never awaits; single-threaded asyncio use.

Invariant: a pod key is in `_pods[run]` iff it is `_run_of[key] == run`, and it was last
seen as a replica of this kind with that run (or has not been looked at since).
"""

from __future__ import annotations

from collections.abc import Callable

from sniffer.apps import replica_owner
from sniffer.appview import AppView
from sniffer.podview import PodView
from watch.store import ObjectStore, PodStore
from watch.workqueue import Priority

Run = tuple[str, str]
"""(namespace, run id): what ties a controller to its replicas."""


class AppIndex:
    """Ties replica pods to their controller. Constructing starts nothing."""

    def __init__(self, *, controller: str, pods: PodStore, apps: ObjectStore[AppView],
                 on_app: Callable[[str, Priority], None]) -> None:
        self._controller = controller
        self._pods = pods
        self._apps = apps
        self._on_app = on_app
        self._keys: dict[Run, str] = {}
        """run → the key of the controller cached (or tombstoned) for it."""
        self._pods_of: dict[Run, set[str]] = {}
        """run → keys of the pods seen as its replicas."""
        self._run_of: dict[str, Run] = {}
        """pod key → the run it is filed under."""
        self._adopted: dict[Run, str] = {}
        """run → the uid of the replica it is bound to (`adopts`)."""

    def app_changed(self, key: str, priority: Priority = Priority.LIVE) -> None:
        app = self._apps.get(key)
        if app is not None and app.run_id is not None:
            self._keys[(app.namespace, app.run_id)] = key
        self._on_app(key, priority)

    def pod_changed(self, key: str, priority: Priority = Priority.LIVE) -> None:
        pod = self._pods.get(key)
        run = self._run_of.get(key)
        if (isinstance(pod, PodView) and pod.run_id is not None
                and replica_owner(pod) == self._controller):
            run = (pod.namespace, pod.run_id)
            self._file(key, run)
        if run is not None and (app_key := self._keys.get(run)) is not None:
            self._on_app(app_key, priority)

    def _file(self, key: str, run: Run) -> None:
        old = self._run_of.get(key)
        if old is not None and old != run:
            self._pods_of.get(old, set()).discard(key)
        self._run_of[key] = run
        self._pods_of.setdefault(run, set()).add(key)

    def replicas(self, app: AppView) -> list[PodView]:
        if app.run_id is None:
            return []
        run = (app.namespace, app.run_id)
        found: list[PodView] = []
        for key in list(self._pods_of.get(run, ())):
            pod = self._pods.get(key)
            if (isinstance(pod, PodView) and pod.run_id == app.run_id
                    and replica_owner(pod) == self._controller):
                found.append(pod)
            else:  # gone, settled, or another pod took the name: not a replica now
                self._pods_of[run].discard(key)
                self._run_of.pop(key, None)
        return found

    def deleted(self, key: str) -> bool:
        """Whether the pod cached for `key` is a tombstone."""
        return self._pods.is_deleted(key)

    def adopts(self, app: AppView, uid: str) -> bool:
        if app.run_id is None:
            return False
        run = (app.namespace, app.run_id)
        if self._adopted.get(run) == uid:
            return True
        if any(pod.uid == uid for pod in self.replicas(app)):
            self._adopted[run] = uid
            return True
        return False

    def forget(self, app: AppView) -> None:
        """The controller's deletion is handled: unfile it and its replicas."""
        if app.run_id is None:
            return
        run = (app.namespace, app.run_id)
        self._adopted.pop(run, None)
        if self._keys.get(run) == app.key:
            del self._keys[run]
        for key in self._pods_of.pop(run, ()):
            self._run_of.pop(key, None)
