"""When an active pod counts as failed although Kubernetes still shows it Pending or Running.

A pod can wait forever for an image that cannot be pulled, a Secret that is missing or a
node that never comes; the platform must be told the run failed. This module decides when;
`sniffer.states.derive` applies its answers. Pure: no I/O, no clock (times come in as
arguments), nothing raised for any `PodView`.

Contract (the limits come from `sniffer.states.StatePolicy`):

* InvalidImageName fails at once: the image reference can never be pulled.
* ErrImagePull, ImagePullBackOff, ErrImageNeverPull, CreateContainerConfigError,
  CreateContainerError, RunContainerError, PreStartHookError, PostStartHookError fail after
  `image_pull_failure_after_s`, counted from the later of the pod's start (else creation)
  and the container's last termination: a missing Secret or a registry outage can heal.
* CrashLoopBackOff fails once `restart_count >= crashloop_failure_restarts`, or once the
  crash loop is `crashloop_failure_after_s` old. One snapshot shows only the last run, so
  the age is a lower bound: from the start of the last run if it was shorter than the
  limit (it was part of the loop), else from its end. A wrong terminal state cannot be
  undone, so the rule errs towards waiting.
* With `pending_failure_after_s` set, a pod still Pending that long after creation fails
  with its pending reason (stuck unschedulable, stuck ContainerCreating, ...).
* Each rule is a `FailureRule`: the moment it fires (which may still be in the future, so
  the caller knows when to look again) and the outcome it gives.
* `pending_reason` names the most specific thing a queued pod waits for: the PodScheduled
  reason, "Scheduling", "Initializing", or a container's waiting reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sniffer.podview import ContainerView, PodView

if TYPE_CHECKING:  # states imports this module; the policy is only a parameter type here
    from sniffer.states import StatePolicy

IMMEDIATE_FAILURES = frozenset({"InvalidImageName"})
TIMED_FAILURES = frozenset({
    "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError", "PreStartHookError", "PostStartHookError",
})
CRASHLOOP = "CrashLoopBackOff"
PROBLEMS = IMMEDIATE_FAILURES | TIMED_FAILURES | {CRASHLOOP}
"""Waiting reasons that are a problem (a rule may fail the pod), not a step of starting."""


@dataclass(frozen=True, slots=True)
class FailureRule:
    """A failure rule that applies to the pod: it fires at `at` with this outcome."""

    at: float
    reason: str
    message: str | None
    exit_code: int | None


def first_problem(containers: Iterable[ContainerView]) -> ContainerView | None:
    """The first container waiting for one of the `PROBLEMS` reasons."""
    return next((c for c in containers if c.state == "waiting" and c.reason in PROBLEMS),
                None)


def waiting_rules(pod: PodView, watched: Iterable[ContainerView],
                  policy: StatePolicy) -> list[FailureRule]:
    """The rules of the waiting containers among `watched`, in their order (the caller
    passes init containers first, so spec order breaks ties between equal times)."""
    rules = []
    for c in watched:
        at = _fails_at(pod, c, policy) if c.state == "waiting" else None
        if at is not None and c.reason is not None:
            exit_code = c.last.exit_code if c.last and c.reason == CRASHLOOP else None
            rules.append(FailureRule(at, c.reason,
                                     f"container {c.name}: {c.message or c.reason}",
                                     exit_code))
    return rules


def pending_rule(pod: PodView, policy: StatePolicy, reason: str | None,
                 message: str | None) -> FailureRule | None:
    """The stuck-Pending rule for a queued pod, when `pending_failure_after_s` is set;
    `reason` and `message` are what the pod is waiting for."""
    if policy.pending_failure_after_s is None:
        return None
    return FailureRule(pod.created_at + policy.pending_failure_after_s, reason or "Pending",
                       f"pending for over {policy.pending_failure_after_s:g} s: "
                       f"{message or reason}", None)


def crash_looped(pod: PodView, policy: StatePolicy) -> ContainerView | None:
    """The main container that had hit the crash-loop limit, judged from a stopped pod:
    it restarted at least `crashloop_failure_restarts` times after failing runs."""
    for c in pod.containers:
        last = c.last
        if (c.restart_count >= policy.crashloop_failure_restarts and last is not None
                and last.exit_code):
            return c
    return None


def _fails_at(pod: PodView, c: ContainerView, policy: StatePolicy) -> float | None:
    """When the rule for waiting container `c` fires, or None if no rule applies."""
    anchor = pod.start_time if pod.start_time is not None else pod.created_at
    if c.reason in IMMEDIATE_FAILURES:
        return pod.changed_at if pod.changed_at is not None else anchor
    if c.reason in TIMED_FAILURES:
        if c.last is not None and c.last.finished_at is not None:
            anchor = max(anchor, c.last.finished_at)
        return anchor + policy.image_pull_failure_after_s
    if c.reason != CRASHLOOP:
        return None
    last = c.last
    if c.restart_count >= policy.crashloop_failure_restarts:
        if last is not None and last.finished_at is not None:
            return last.finished_at
        return pod.changed_at if pod.changed_at is not None else anchor
    if last is None or last.finished_at is None:
        return None
    limit = policy.crashloop_failure_after_s
    began = last.finished_at
    if last.started_at is not None and last.finished_at - last.started_at < limit:
        began = last.started_at
    return began + limit


def pending_reason(pod: PodView) -> str:
    """The most specific reason a Pending pod is still queued."""
    scheduled = pod.scheduled
    if scheduled is not None and scheduled.status != "True":
        return scheduled.reason or "Unschedulable"
    for c in pod.init_containers:
        if c.sidecar:
            if c.state == "waiting" and c.reason in PROBLEMS:
                return c.reason or "Initializing"
            if not (c.state == "running" and c.started):
                return "Initializing"
        elif not (c.state == "terminated" and c.exit_code == 0):
            if c.state == "waiting" and c.reason in PROBLEMS:
                return c.reason or "Initializing"
            return "Initializing"
    waiting = [c.reason for c in pod.containers if c.state == "waiting" and c.reason]
    problems = [r for r in waiting if r in PROBLEMS]
    if problems or waiting:
        return (problems or waiting)[0]
    if scheduled is None and not pod.containers:
        return "Scheduling"
    return "ContainerCreating"


def pending_message(pod: PodView) -> str | None:
    """The message that goes with `pending_reason`, if the pod gives one."""
    scheduled = pod.scheduled
    if scheduled is not None and scheduled.status != "True" and scheduled.message:
        return scheduled.message
    for c in (*pod.init_containers, *pod.containers):
        if c.state == "waiting" and c.reason in PROBLEMS and c.message:
            return f"container {c.name}: {c.message}"
    return None
