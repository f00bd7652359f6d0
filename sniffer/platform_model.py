"""The Platform API's values and errors (docs/platform-api.yaml), as the client hands them over.

Contract:

* `Run.from_json` accepts exactly the contract's Run object and raises only ``ValueError``,
  naming what is wrong; the times of a `Run` are aware UTC datetimes.
* A `StateUpdate` is valid once constructed (a known state, a run id, aware datetimes;
  else ``ValueError``) and `StateUpdate.to_json` is its PATCH body, without ``None`` fields.
* `UpdateResult.run` is None iff the outcome is `Outcome.NOT_FOUND`.
* Every error a Platform API call raises is a `PlatformError`: `PlatformUnavailable` when
  repeating it later may succeed, `PlatformRejected` when repeating it as is will not.
* The answer readers (`read_run`, `read_field`, `rejection`, `error_code`, `error_text`)
  turn a body the contract does not allow into `PlatformRejected` (code
  ``"malformed_response"``, or ``"unexpected_status"`` for an error without the contract's
  error object), never into ``ValueError``/``KeyError``/``TypeError``: one bad reply must
  not kill the caller's loop. `parse_retry_after` reads a ``Retry-After`` header (seconds,
  decimal seconds or an HTTP-date) into `PlatformUnavailable.retry_after`.
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # only the attributes are read; states needs nothing of the platform
    from sniffer.states import Derived

STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
KINDS: tuple[str, ...] = ("job", "notebook", "app")


# -- errors ------------------------------------------------------------------------------

class PlatformError(Exception):
    """Base of every error a :class:`PlatformClient` call raises."""


class PlatformUnavailable(PlatformError):
    """A retryable failure. ``status`` is None for transport errors and timeouts."""

    def __init__(self, message: str, *, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class PlatformRejected(PlatformError):
    """The platform refused the request, or answered something unusable; don't repeat as is.

    ``status`` is the HTTP status (0 when no request was sent), ``code`` the contract's
    error code (``"malformed_response"`` for an unparsable body).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


# -- values ------------------------------------------------------------------------------

def _opt_time(data: Mapping[str, Any], key: str) -> datetime | None:
    value = data[key]
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{key} has no time zone")
    return parsed.astimezone(UTC)


def _opt(data: Mapping[str, Any], key: str, kind: type) -> Any:
    """``data[key]`` if it is None or exactly of ``kind`` (a bool is not an int here)."""
    value = data[key]
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ValueError(f"{key} is not {kind.__name__} or null")
    return value


def _count(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} is not a count")
    return value


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data[key]
    if not isinstance(value, bool):
        raise ValueError(f"{key} is not a boolean")
    return value


def _format_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass an aware (UTC) datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Run:
    """A run as the platform has it. Times are aware UTC datetimes."""

    id: str
    state: str
    version: int
    kind: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None
    message: str | None
    exit_code: int | None
    cancel_requested: bool
    pod_namespace: str | None
    pod_name: str | None
    pod_uid: str | None
    attempts: int = 0
    """How many pods a Job-backed run has used (0 for a run of one pod); never decreases."""
    attempt_pod: str | None = None
    """The name of the Job's newest attempt pod, None for a run of one pod."""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, data: Any) -> Run:
        """Parse the contract's Run object; ``ValueError`` names what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("run is not a JSON object")
        try:
            if data["state"] not in STATES:
                raise ValueError(f"unknown state {data['state']!r}")
            created_at = _opt_time(data, "created_at")
            updated_at = _opt_time(data, "updated_at")
            if created_at is None or updated_at is None:
                raise ValueError("created_at/updated_at missing")
            version = data["version"]
            if isinstance(version, bool) or not isinstance(version, int):
                raise ValueError("version is not an integer")
            run_id = data["id"]
            if not isinstance(run_id, str):
                raise ValueError("id is not a string")
            return cls(
                id=run_id,
                state=data["state"],
                version=version,
                kind=str(data["kind"]),
                created_at=created_at,
                updated_at=updated_at,
                started_at=_opt_time(data, "started_at"),
                finished_at=_opt_time(data, "finished_at"),
                reason=_opt(data, "reason", str),
                message=_opt(data, "message", str),
                exit_code=_opt(data, "exit_code", int),
                cancel_requested=_bool(data, "cancel_requested"),
                pod_namespace=_opt(data, "pod_namespace", str),
                pod_name=_opt(data, "pod_name", str),
                pod_uid=_opt(data, "pod_uid", str),
                attempts=_count(data, "attempts"),
                attempt_pod=_opt(data, "attempt_pod", str),
            )
        except KeyError as exc:
            raise ValueError(f"run lacks field {exc.args[0]!r}") from None


class NamedPod(Protocol):
    """What `StateUpdate.derived` reads of a pod (a `PodView`, a reconcile `PodRef`)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def uid(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """The state (and details) to report for one run. ``None`` fields are not sent.

    ``state`` may also be a ``str``-valued enum member; it is stored as its value.
    Raises ``ValueError`` for an unknown state or a naive datetime.
    """

    run_id: str
    state: str
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    pod_uid: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    attempts: int | None = None
    """A Job-backed run's attempt count (`sniffer.jobs.attempts`); the platform keeps the
    largest it was sent, so a stale count is harmless."""
    attempt_pod: str | None = None

    def __post_init__(self) -> None:
        state = getattr(self.state, "value", self.state)
        if state not in STATES:
            raise ValueError(f"unknown state {self.state!r}; expected one of {STATES}")
        object.__setattr__(self, "state", state)
        if not self.run_id:
            raise ValueError("run_id is empty")
        if self.attempts is not None and self.attempts < 0:
            raise ValueError(f"attempts is negative ({self.attempts})")
        for name in ("started_at", "finished_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} is a naive datetime")

    @classmethod
    def derived(cls, run_id: str, derived: Derived, pod: NamedPod | None = None, *,
                attempts: int | None = None, attempt_pod: str | None = None) -> StateUpdate:
        """The update that reports `derived` for `run_id`, naming `pod` (if given) as the
        run's pod (for a Job-backed run: the Job, which the run stays bound to while its
        attempt pods come and go); epoch-second times become UTC datetimes."""
        return cls(run_id=run_id, state=derived.state.value, reason=derived.reason,
                   message=derived.message, exit_code=derived.exit_code,
                   started_at=_utc(derived.started_at), finished_at=_utc(derived.finished_at),
                   pod_uid=pod.uid if pod else None, pod_name=pod.name if pod else None,
                   pod_namespace=pod.namespace if pod else None, attempts=attempts,
                   attempt_pod=attempt_pod)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state}
        for name in ("reason", "message", "exit_code", "pod_uid", "pod_name", "pod_namespace",
                     "attempts", "attempt_pod"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        for name in ("started_at", "finished_at"):
            value = getattr(self, name)
            if value is not None:
                body[name] = _format_time(value)
        return body


class Outcome(enum.Enum):
    """What a state update did (see the module docstring for the status mapping)."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"
    CONFLICT = "conflict"
    PRECONDITION_FAILED = "precondition_failed"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """``run`` is the platform's current run (None iff NOT_FOUND); ``code`` is the error code
    of a CONFLICT (``"conflict"`` or ``"pod_mismatch"``) or PRECONDITION_FAILED."""

    outcome: Outcome
    run: Run | None
    code: str | None = None


# -- reading answers ---------------------------------------------------------------------
# Each takes the HTTP status and the route (the method and path template) so that the
# error it raises says which exchange went wrong.

def read_field(status: int, data: Any, key: str, route: str) -> Any:
    """``data[key]`` of a JSON object body, else `PlatformRejected` (malformed_response)."""
    if not isinstance(data, dict) or key not in data:
        raise PlatformRejected(status, "malformed_response", f"{route}: no {key!r} in body")
    return data[key]


def read_run(status: int, data: Any, route: str) -> Run:
    """The `Run` a body holds, else `PlatformRejected` (malformed_response)."""
    try:
        return Run.from_json(data)
    except ValueError as exc:
        raise PlatformRejected(status, "malformed_response", f"{route}: {exc}") from None


def error_code(data: Any) -> str | None:
    """The contract's ``error.code`` of a body, if it has one."""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        code = data["error"].get("code")
        return code if isinstance(code, str) else None
    return None


def rejection(status: int, data: Any, route: str) -> PlatformRejected:
    """The error for an answer the caller did not expect: the body's error code and message
    (and field), or ``unexpected_status`` with the start of the body."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return PlatformRejected(status, "unexpected_status", f"{route}: {str(data)[:200]}")
    message = str(error.get("message", ""))
    if isinstance(error.get("field"), str):
        message = f"field {error['field']}: {message}"
    return PlatformRejected(status, str(error.get("code", "unknown")), f"{route}: {message}")


def error_text(raw: bytes) -> str:
    """The error message of a raw body for a log or an exception: the contract's
    ``error.message`` if it parses, else the start of the body."""
    try:
        data = json.loads(raw)
        return str(data["error"]["message"])[:200]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return raw[:200].decode(errors="replace")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` → seconds to wait (≥ 0), or None if absent or unparsable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)
