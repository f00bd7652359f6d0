"""The finalizer patch: adding and releasing Sniffer's pod finalizer, one pod at a time.

No outcome can vanish with its pod. When to patch is the finalizer loop's decision
(`watch.finalizer_loop`); this module only sends the patch.

Contract (the Kubernetes Job controller's pod-tracking technique, KEP-2307):
* `ensure(pod)` adds ``sniffer.io/outcome`` to a live, tracked, not-yet-terminal pod.
  A pod that is already being deleted cannot gain a finalizer (the API forbids it);
  such a pod is reported from its last view like any other.
* `release(pod)` removes it. Callers must only release once the platform has
  acknowledged a terminal state for the pod's run, or the pod stopped being tracked,
  or the run is unknown to the platform: the finalizer never outlives its purpose
  (`watch.finalizer_loop` decides when).
* Both are idempotent strategic-merge patches, one per pod, without a resourceVersion
  precondition, so they never conflict with the kubelet or other controllers touching
  the pod. Both carry the pod's uid: a patch decided for one pod never lands on a new
  pod that took its name (the decision may be made from a cache that lags); the API
  server refuses it as an attempt to change the immutable uid (422). A pod that is
  already gone, or whose name a new pod took, counts as done. `release` is
  `sniffer.pods.release_finalizer`, the one copy the reconciler uses too.
* Uninstall (`sniffer finalizers remove`) is `cli.uninstall`.
"""

from __future__ import annotations

from sniffer.kube import KubeClient
from sniffer.kubedecode import Conflict, NotFound, UidChanged
from sniffer.pods import release_finalizer
from sniffer.podview import OUTCOME_FINALIZER as FINALIZER
from sniffer.podview import PodView


class Finalizers:
    """Adds and removes Sniffer's finalizer on pods."""

    def __init__(self, kube: KubeClient, *, enabled: bool) -> None:
        self._kube = kube
        self.enabled = enabled
        """When False, `ensure` does nothing; `release` still removes leftovers."""

    async def ensure(self, pod: PodView) -> bool:
        """Add the finalizer if missing; True if a patch was sent."""
        if not self.enabled or FINALIZER in pod.finalizers or pod.deletion_timestamp:
            return False
        try:
            await self._kube.patch_pod(pod.namespace, pod.name, {
                "metadata": {"uid": pod.uid, "finalizers": [FINALIZER]}})
        except (NotFound, Conflict, UidChanged):
            return False
        return True

    async def release(self, pod: PodView) -> bool:
        """Remove the finalizer if present; True if a patch was sent."""
        if FINALIZER not in pod.finalizers:
            return False
        return await release_finalizer(self._kube, pod.namespace, pod.name, pod.uid)
