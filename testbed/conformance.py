"""What Sniffer makes of a sequence of pod versions: the yardstick that holds the
simulator to the real kubelet's recorded fixtures (`testbed.kubeletrecord`).

Contract (pure: no I/O, no clock):

* `judge(versions, policy=)` derives the workload state of every version in order, as the
  watcher's store would (a deletion seen while Pending or Running marks the later
  versions `deleted_while_active`), each at the newest timestamp the version carries. It
  returns a `Verdict`: the states visited (consecutive repeats collapsed), the outcome
  (the first terminal state, which the platform keeps for good) and the `Signature` of
  the version that decided it.
* A `Signature` is what `sniffer.states.derive` reads from a pod to decide an outcome:
  phase, pod reason, the DisruptionTarget reason, whether a deletion is under way, and
  the main container's state, reason and exit code (init containers and sidecars differ
  between workload variants, so they are left out).
* `differences(real, simulated, exit_code_fixed=)` lists, in words, how a simulated
  verdict disagrees with a real one: another outcome state or reason, another exit code
  (when the lifecycle fixes it), another deciding signature, or a state the kubelet went
  through that the simulator never shows (the simulator may show more intermediate
  states than one recording caught; never fewer, never in another order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sniffer.podfields import read_time
from sniffer.podview import PodView, project
from sniffer.states import Derived, StatePolicy, derive

JSON = dict[str, Any]
_TIME_FIELDS = frozenset({"lastTransitionTime", "startedAt", "finishedAt", "startTime",
                          "deletionTimestamp", "creationTimestamp"})


@dataclass(frozen=True, slots=True)
class Signature:
    phase: str
    reason: str | None
    disruption: str | None
    deleting: bool
    main_state: str | None
    main_reason: str | None
    main_exit_code: int | None

    def without_exit_code(self) -> Signature:
        return dataclasses.replace(self, main_exit_code=None)


@dataclass(frozen=True, slots=True)
class Verdict:
    visited: tuple[str, ...]
    outcome: tuple[str, str | None, int | None] | None
    """(state, reason, exit code) of the first terminal derivation; None if none."""
    decided_by: Signature | None


def newest_time(obj: Any) -> float:
    """The newest RFC 3339 timestamp anywhere in a pod object (when it was written, to the
    second)."""
    found: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k in _TIME_FIELDS and isinstance(v, str):
                    t = read_time(v, k)
                    if t is not None:
                        found.append(t)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(obj)
    return max(found) if found else 0.0


def signature(pod: PodView) -> Signature:
    main = next((c for c in pod.containers if not c.sidecar), None)
    return Signature(
        phase=pod.phase, reason=pod.reason,
        disruption=pod.disruption.reason if pod.disruption is not None
        and pod.disruption.status == "True" else None,
        deleting=pod.deletion_timestamp is not None,
        main_state=main.state if main else None, main_reason=main.reason if main else None,
        main_exit_code=main.exit_code if main else None)


def judge(versions: Iterable[JSON], *, policy: StatePolicy | None = None,
          cancel_requested: bool = False) -> Verdict:
    """(See the contract; `cancel_requested` is the platform run's cancel flag.)"""
    policy = policy or StatePolicy()
    visited: list[str] = []
    outcome = None
    decided_by = None
    deleted_while_active = False
    for obj in versions:
        pod = project(obj)
        if pod.deletion_timestamp is not None and pod.phase in ("Pending", "Running"):
            deleted_while_active = True
        if deleted_while_active:
            pod = dataclasses.replace(pod, deleted_while_active=True)
        derived = derive(pod, now=newest_time(obj), policy=policy,
                         cancel_requested=cancel_requested)
        if not isinstance(derived, Derived):
            continue
        if not visited or visited[-1] != derived.state.value:
            visited.append(derived.state.value)
        if derived.state.is_terminal and outcome is None:
            outcome = (derived.state.value, derived.reason, derived.exit_code)
            decided_by = signature(pod)
            break  # the platform keeps the first terminal state
    return Verdict(tuple(visited), outcome, decided_by)


def _subsequence(needle: tuple[str, ...], haystack: tuple[str, ...]) -> bool:
    it = iter(haystack)
    return all(any(x == y for y in it) for x in needle)


def differences(real: Verdict, simulated: Verdict, *, exit_code_fixed: bool) -> list[str]:
    out = []
    if real.outcome is None or simulated.outcome is None:
        if real.outcome != simulated.outcome:
            out.append(f"outcome: kubelet {real.outcome}, simulator {simulated.outcome}")
        return out
    if real.outcome[:2] != simulated.outcome[:2]:
        out.append(f"outcome: kubelet {real.outcome[:2]}, simulator {simulated.outcome[:2]}")
    if exit_code_fixed and real.outcome[2] != simulated.outcome[2]:
        out.append(f"exit code: kubelet {real.outcome[2]}, simulator {simulated.outcome[2]}")
    r, s = real.decided_by, simulated.decided_by
    if r is not None and s is not None and not exit_code_fixed:
        r, s = r.without_exit_code(), s.without_exit_code()
    if r != s:
        out.append(f"deciding version: kubelet {r}, simulator {s}")
    if not _subsequence(real.visited, simulated.visited):
        out.append(f"states: kubelet went through {real.visited}, simulator {simulated.visited}")
    return out
