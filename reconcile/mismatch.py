"""What the reconciler finds wrong: the typed mismatch the diff gives and the repairs act on.

Contract:
* `Mismatch` is one thing that is wrong and the repair it calls for; `MismatchKind`
  names it (`reconcile.diff`'s docstring says when each kind is found), and
  `MismatchKind.repairable` says whether the reconciler acts on it or only reports it.
* `PodRef` names the object a mismatch is about: a pod, a Job, or an app controller.
* Plain values: immutable, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sniffer.states import Derived, WorkloadState


class MismatchKind(StrEnum):
    POD_AHEAD = "pod_ahead"
    POD_LOST = "pod_lost"
    FINALIZER_LEFT = "finalizer_left"
    ORPHAN_POD = "orphan_pod"
    UNDERIVABLE = "underivable"
    UID_MISMATCH = "uid_mismatch"
    JOB_AHEAD = "job_ahead"
    JOB_LOST = "job_lost"
    APP_AHEAD = "app_ahead"
    APP_LOST = "app_lost"

    @property
    def repairable(self) -> bool:
        """True iff the reconciler acts on this kind (the others are only reported)."""
        return self in _REPAIRABLE


_REPAIRABLE = frozenset({MismatchKind.POD_AHEAD, MismatchKind.POD_LOST,
                         MismatchKind.FINALIZER_LEFT, MismatchKind.JOB_AHEAD,
                         MismatchKind.JOB_LOST, MismatchKind.APP_AHEAD,
                         MismatchKind.APP_LOST})


@dataclass(frozen=True, slots=True)
class PodRef:
    """Which pod (or, with `kind` "Job", "Deployment" or "StatefulSet", which controller)
    a mismatch is about. `uid` is None when only the run's record names it."""

    namespace: str
    name: str
    uid: str | None
    kind: str = "Pod"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One thing that is wrong, and the repair it calls for.

    `target` is set iff the kind is pod_ahead, pod_lost, job_ahead, job_lost, app_ahead or
    app_lost (the state to write; for job_ahead `pod` is the Job, for job_lost its newest
    attempt pod, for app_ahead the controller, for app_lost its newest replica);
    `attempts`/`attempt_pod` are set iff the kind is job_ahead or job_lost;
    `release_finalizer` is True iff the repair ends by removing Sniffer's finalizer from
    `pod` (finalizer_left, or pod_ahead to a terminal state of a pod that carries it).
    `run_state` is the run's state in the snapshot, None iff the platform does not know
    the run (or, for a malformed pod, its run id could not be read)."""

    kind: MismatchKind
    run_id: str | None
    run_state: WorkloadState | None
    pod: PodRef | None
    detail: str
    target: Derived | None = None
    release_finalizer: bool = False
    attempts: int | None = None
    attempt_pod: str | None = None

    @property
    def sort_key(self) -> tuple[str, str, str]:
        return (self.run_id or "", self.pod.key if self.pod else "", self.kind.value)
