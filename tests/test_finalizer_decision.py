"""watch.finalizer_loop, the decision: where Sniffer's finalizer belongs, as a pure function.

`decide` over pod views and the ledger's answers, including an exhaustive check of the
central invariant (no release of a tracked, known, own pod before the platform
acknowledged a terminal state). The loop that acts on it is tests/test_finalizer_loop.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from sniffer.podview import OUTCOME_FINALIZER, PodView, project
from sniffer.states import StatePolicy, WorkloadState
from watch.finalizer_loop import Action, decide
from watch.ledger import TERMINAL_UNKNOWN, Acked
from watch.store import SettledPod

NS = "fin"
NOW = 1_800_000_000.0
QUEUED, RUNNING, SUCCEEDED = (Acked(WorkloadState.QUEUED), Acked(WorkloadState.RUNNING),
                              Acked(WorkloadState.SUCCEEDED))


def view(phase: str = "Running", *, held: bool = False, run_id: str | None = "run-1",
         deleting: bool = False, uid: str = "uid-p") -> PodView:
    t = "2026-01-01T00:00:00Z"
    state: dict[str, Any] = (
        {"running": {"startedAt": t}} if phase == "Running"
        else {"waiting": {"reason": "ContainerCreating"}} if phase == "Pending"
        else {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": t,
                             "finishedAt": t}})
    labels = {"sniffer.io/kind": "job"} | ({"sniffer.io/run-id": run_id} if run_id else {})
    meta: dict[str, Any] = {"name": "p", "namespace": NS, "uid": uid, "resourceVersion": "7",
                            "creationTimestamp": t, "labels": labels,
                            "finalizers": [OUTCOME_FINALIZER] if held else []}
    if deleting:
        meta |= {"deletionTimestamp": t, "deletionGracePeriodSeconds": 30}
    return project({
        "metadata": meta,
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main"}]},
        "status": {"phase": phase, "startTime": t,
                   "containerStatuses": [{"name": "main", "restartCount": 0,
                                          "ready": phase == "Running", "state": state}]}})


def judge(pod: Any, *, acked: Acked | None = RUNNING, terminal: bool | None = None,
          unknown: bool = False, deleted: bool = False, enabled: bool = True) -> Any:
    if terminal is None:
        terminal = acked is not None and acked.terminal
    return decide(pod, deleted=deleted, acked=acked, terminal_acknowledged=terminal,
                  unknown=unknown, enabled=enabled, now=NOW, policy=StatePolicy())


def test_a_live_tracked_pod_of_an_open_run_gains_the_finalizer() -> None:
    assert judge(view("Running")).action is Action.ADD
    assert judge(view("Pending"), acked=QUEUED).action is Action.ADD


def test_no_add_when_finalizer_mode_is_off_or_the_pod_holds_it_or_is_being_deleted() -> None:
    assert judge(view(), enabled=False).action is Action.NOTHING
    assert judge(view(held=True)).action is Action.NOTHING
    assert judge(view(deleting=True)).action is Action.NOTHING


def test_no_add_for_a_pod_whose_derived_state_is_terminal_it_is_about_to_be_sent() -> None:
    assert judge(view("Succeeded")).action is Action.NOTHING


def test_nothing_for_a_run_whose_state_is_not_known_yet() -> None:
    assert judge(view(), acked=None).action is Action.NOTHING
    assert judge(view(held=True), acked=None).action is Action.NOTHING


def test_release_once_the_platform_acknowledged_a_terminal_state() -> None:
    decision = judge(view("Succeeded", held=True), acked=SUCCEEDED)
    assert (decision.action, decision.why) == (Action.RELEASE, "acknowledged")
    # The seed's rule: not among the open runs at the listing, pod older than it.
    assert judge(view("Succeeded", held=True), acked=TERMINAL_UNKNOWN).action is Action.RELEASE
    assert judge(view("Succeeded", held=True), acked=None, terminal=True).action \
        is Action.RELEASE


def test_a_deleting_pod_is_released_once_acknowledged_and_held_until_then() -> None:
    assert judge(view("Running", held=True, deleting=True), acked=Acked(
        WorkloadState.CANCELLED)).action is Action.RELEASE
    assert judge(view("Running", held=True, deleting=True)).action is Action.NOTHING


def test_untracked_orphaned_and_foreign_pods_are_released() -> None:
    for pod, kw, why in (
            (view(held=True, run_id=None), {}, "untracked"),
            (view(held=True), {"acked": None, "unknown": True}, "orphan"),
            (view(held=True), {"acked": dataclasses.replace(RUNNING, pod_uid="uid-other")},
             "foreign")):
        decision = judge(pod, **kw)
        assert (decision.action, decision.why) == (Action.RELEASE, why)


def test_nothing_to_release_on_a_pod_without_the_finalizer() -> None:
    assert judge(view("Succeeded"), acked=SUCCEEDED).action is Action.NOTHING
    assert judge(view(run_id=None)).action is Action.NOTHING


def test_nothing_for_uncached_keys_tombstones_and_settled_records() -> None:
    held = view("Succeeded", held=True)
    assert judge(None).action is Action.NOTHING
    assert judge(held, acked=SUCCEEDED, deleted=True).action is Action.NOTHING
    record = SettledPod(key=f"{NS}/p", uid="uid-p", rv=7, run_id="run-1", phase="Succeeded",
                        finalizers=(), deletion_timestamp=None, deleted_while_active=False)
    assert judge(record, acked=SUCCEEDED).action is Action.NOTHING


def test_the_finalizer_of_a_known_own_run_never_goes_before_a_terminal_acknowledgement() -> None:
    """The central invariant, over every combination of the decision's inputs."""
    states = [None, *(Acked(s) for s in WorkloadState), TERMINAL_UNKNOWN,
              *(Acked(s, pod_uid="uid-p") for s in WorkloadState),
              *(Acked(s, cancel_requested=True) for s in WorkloadState)]
    pods = [view(phase, held=True, deleting=deleting)
            for phase in ("Pending", "Running", "Succeeded", "Failed")
            for deleting in (False, True)]
    for pod, acked, terminal, enabled in itertools.product(
            pods, states, (False, True), (False, True)):
        if terminal and not (acked is None or acked.terminal):
            continue  # `terminal` is the acknowledgement's terminal flag or the seed's rule
        decision = judge(pod, acked=acked, terminal=terminal, enabled=enabled)
        if decision.action is Action.RELEASE:
            assert terminal, (pod.phase, acked, terminal)


