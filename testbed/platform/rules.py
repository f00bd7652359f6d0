"""The Platform's state rules, as pure functions (no I/O, no clock).

Promises:

* States move only forward: ``queued < running < terminal`` where terminal is one of
  ``succeeded``, ``failed``, ``cancelled``. A forward move may skip a rank
  (``queued → succeeded`` is allowed). A terminal state never changes, not even to a
  different terminal state.
* A request for the state a run already has is a no-op success (``NOOP``), whatever its
  precondition says: a repeated update must never look like an error to its sender.
* :func:`decide_patch` is the one place the PATCH evaluation order lives; the store calls
  it inside its write transaction and the HTTP layer maps each :class:`Decision` to exactly
  one status code. The order is::

      (404 is decided by the caller, before this function)
      same state, non-terminal, attempts
        above the stored count, pod_uid
        not another one's                -> ATTEMPTS              200, applied=true
      same state                         -> NOOP                  200, applied=false
      not a forward move                 -> CONFLICT              409 code=conflict
      pod_uid differs from the bound uid -> POD_MISMATCH          409 code=pod_mismatch
      neither expected_state nor _version-> PRECONDITION_REQUIRED 428
      expected_state/_version mismatch   -> PRECONDITION_FAILED   412
      otherwise                          -> APPLY                 200, applied=true

* ``attempts`` (the pods a Job-backed run has used) never decreases: APPLY and ATTEMPTS
  store the larger of the stored and the sent count, and a lower count is ignored (the
  rest of the request is judged as if it had none), never refused: a state change that
  carries a stale count is still a state change, and the watcher and the reconciler
  must not fight over a number. An attempts raise needs no precondition (taking the
  larger of two counts cannot undo another writer's work) and changes no state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STATES: tuple[str, ...] = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_STATES: frozenset[str] = frozenset({SUCCEEDED, FAILED, CANCELLED})
KINDS: tuple[str, ...] = ("job", "notebook", "app")

_RANK: dict[str, int] = {QUEUED: 0, RUNNING: 1, SUCCEEDED: 2, FAILED: 2, CANCELLED: 2}


class Verdict(enum.StrEnum):
    """What the transition rule says about moving ``current → target``."""

    OK = "ok"
    NOOP = "noop"
    CONFLICT = "conflict"


class Decision(enum.StrEnum):
    """The outcome of evaluating one PATCH against the current run (see module docstring)."""

    NOOP = "noop"
    ATTEMPTS = "attempts"
    CONFLICT = "conflict"
    POD_MISMATCH = "pod_mismatch"
    PRECONDITION_REQUIRED = "precondition_required"
    PRECONDITION_FAILED = "precondition_failed"
    APPLY = "apply"


def is_terminal(state: str) -> bool:
    """True iff ``state`` is one of the terminal states."""
    return state in TERMINAL_STATES


def check_transition(current: str, target: str) -> Verdict:
    """Judge the move ``current → target``.

    ``NOOP`` iff ``target == current``; ``OK`` iff ``current`` is not terminal and
    ``target`` ranks strictly higher; ``CONFLICT`` otherwise. Both arguments must be known
    states (``ValueError`` otherwise): callers validate input before asking.
    """
    if current not in _RANK:
        raise ValueError(f"unknown state {current!r}")
    if target not in _RANK:
        raise ValueError(f"unknown state {target!r}")
    if target == current:
        return Verdict.NOOP
    if is_terminal(current) or _RANK[target] <= _RANK[current]:
        return Verdict.CONFLICT
    return Verdict.OK


@dataclass(frozen=True, slots=True)
class RunView:
    """The parts of a stored run that :func:`decide_patch` looks at."""

    state: str
    version: int
    pod_uid: str | None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class PatchRequest:
    """The parts of a PATCH body that :func:`decide_patch` looks at."""

    state: str
    expected_state: str | None = None
    expected_version: int | None = None
    pod_uid: str | None = None
    attempts: int | None = None


def raises_attempts(run: RunView, request: PatchRequest) -> bool:
    """True iff ``request`` carries more attempts than ``run`` has stored."""
    return request.attempts is not None and request.attempts > run.attempts


def decide_patch(run: RunView, request: PatchRequest) -> Decision:
    """Evaluate ``request`` against ``run`` in the documented order (module docstring)."""
    verdict = check_transition(run.state, request.state)
    mismatch = (request.pod_uid is not None and run.pod_uid is not None
                and request.pod_uid != run.pod_uid)
    if verdict is Verdict.NOOP:
        if raises_attempts(run, request) and not is_terminal(run.state) and not mismatch:
            return Decision.ATTEMPTS
        return Decision.NOOP
    if verdict is Verdict.CONFLICT:
        return Decision.CONFLICT
    if mismatch:
        return Decision.POD_MISMATCH
    if request.expected_state is None and request.expected_version is None:
        return Decision.PRECONDITION_REQUIRED
    if request.expected_state is not None and request.expected_state != run.state:
        return Decision.PRECONDITION_FAILED
    if request.expected_version is not None and request.expected_version != run.version:
        return Decision.PRECONDITION_FAILED
    return Decision.APPLY
