"""JSON shapes in and out of the reference Platform server (docs/platform-api.yaml).

Promises:

* Every request body is checked completely before anything is written; the first problem
  raises :class:`Invalid` naming the offending field (``"body"`` when the body itself is not
  a JSON object). Unknown fields are rejected by name.
* Times leave the server as RFC 3339 UTC strings with ``Z`` and microseconds
  (``2026-01-02T03:04:05.000006Z``), a format that also sorts as text. Times sent by
  clients may carry any offset and are normalised to that format.
* No function here does I/O or reads the clock except :func:`now`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .rules import KINDS, STATES

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$")
MAX_TEXT = 4096
MAX_NAME = 253


class Invalid(Exception):
    """A request that the server refuses with 400; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": "invalid", "field": self.field, "message": self.message}}


def now() -> float:
    """Server wall clock, epoch seconds."""
    return time.time()


def format_time(epoch: float) -> str:
    """Epoch seconds → ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_time(field: str, value: Any) -> str:
    """Validate an RFC 3339 timestamp and return it normalised to UTC with microseconds."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise Invalid(field, "must be an RFC 3339 timestamp such as 2026-01-02T03:04:05Z")
    text = value.upper()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    main, _, rest = text.partition(".")
    if rest:  # Python parses at most 6 fraction digits; keep the offset, trim the fraction.
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = f"{main}.{digits.group()[:6].ljust(6, '0')}{rest[digits.end():]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise Invalid(field, f"not a valid date/time: {exc}") from None
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid("body", "must be a JSON object")
    return body


def _reject_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    for key in body:
        if key not in allowed:
            raise Invalid(str(key), "unknown field")


def _opt_str(body: dict[str, Any], field: str, max_len: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(field, "must be a string or null")
    if len(value) > max_len:
        raise Invalid(field, f"longer than {max_len} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(field, "is not valid Unicode (lone surrogate)") from None
    return value


def _opt_int(body: dict[str, Any], field: str, minimum: int, maximum: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON does not tell 3 from 3.0
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(field, "must be an integer or null")
    if not minimum <= value <= maximum:
        raise Invalid(field, f"must be between {minimum} and {maximum}")
    return value


def _opt_state(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if value not in STATES:
        raise Invalid(field, f"must be one of {', '.join(STATES)}")
    return str(value)


def check_run_id(field: str, value: Any) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise Invalid(field, "must be 1-253 characters of [A-Za-z0-9._:-], starting alphanumeric")
    return value


@dataclass(frozen=True, slots=True)
class CreateBody:
    """A validated ``POST /api/v1/runs`` body."""

    id: str | None
    kind: str
    pod_namespace: str | None
    pod_name: str | None


_CREATE_FIELDS = frozenset({"id", "kind", "pod_namespace", "pod_name"})


def parse_create(raw: Any) -> CreateBody:
    body = _object(raw)
    _reject_unknown(body, _CREATE_FIELDS)
    run_id = check_run_id("id", body["id"]) if "id" in body else None
    kind = body.get("kind", "job")
    if kind not in KINDS:
        raise Invalid("kind", f"must be one of {', '.join(KINDS)}")
    return CreateBody(
        id=run_id,
        kind=str(kind),
        pod_namespace=_opt_str(body, "pod_namespace", MAX_NAME),
        pod_name=_opt_str(body, "pod_name", MAX_NAME),
    )


@dataclass(frozen=True, slots=True)
class PatchBody:
    """A validated ``PATCH /api/v1/runs/{id}`` body; ``None`` means "not given"."""

    state: str
    expected_state: str | None = None
    expected_version: int | None = None
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    pod_uid: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    attempts: int | None = None
    attempt_pod: str | None = None


_PATCH_FIELDS = frozenset(PatchBody.__slots__)


def parse_patch(raw: Any) -> PatchBody:
    body = _object(raw)
    _reject_unknown(body, _PATCH_FIELDS)
    if "state" not in body or body["state"] is None:
        raise Invalid("state", "is required")
    state = _opt_state(body, "state")
    assert state is not None
    started_at = body.get("started_at")
    finished_at = body.get("finished_at")
    return PatchBody(
        state=state,
        expected_state=_opt_state(body, "expected_state"),
        expected_version=_opt_int(body, "expected_version", 1, 2**62),
        reason=_opt_str(body, "reason", MAX_TEXT),
        message=_opt_str(body, "message", MAX_TEXT),
        exit_code=_opt_int(body, "exit_code", -(2**31), 2**31 - 1),
        started_at=None if started_at is None else parse_time("started_at", started_at),
        finished_at=None if finished_at is None else parse_time("finished_at", finished_at),
        pod_uid=_opt_str(body, "pod_uid", MAX_NAME),
        pod_name=_opt_str(body, "pod_name", MAX_NAME),
        pod_namespace=_opt_str(body, "pod_namespace", MAX_NAME),
        attempts=_opt_int(body, "attempts", 0, 2**31 - 1),
        attempt_pod=_opt_str(body, "attempt_pod", MAX_NAME),
    )


@dataclass(frozen=True, slots=True)
class ListQuery:
    states: tuple[str, ...]
    limit: int
    after: str | None


def parse_list_query(states: list[str], limit: str | None, after: str | None) -> ListQuery:
    """Validate ``GET /api/v1/runs`` query parameters (``state`` repeated or comma list)."""
    wanted: list[str] = []
    for value in states:
        for part in value.split(","):
            part = part.strip()
            if part not in STATES:
                raise Invalid("state", f"must be one of {', '.join(STATES)}")
            if part not in wanted:
                wanted.append(part)
    if limit is None:
        size = 500
    else:
        try:
            size = int(limit)
        except ValueError:
            raise Invalid("limit", "must be an integer") from None
        if not 1 <= size <= 1000:
            raise Invalid("limit", "must be between 1 and 1000")
    if after is not None and after == "":
        after = None
    if after is not None and len(after) > MAX_NAME:
        raise Invalid("after", f"longer than {MAX_NAME} characters")
    return ListQuery(states=tuple(wanted), limit=size, after=after)


def check_query(names: Iterable[str], allowed: frozenset[str]) -> None:
    """Reject a query parameter the endpoint does not define, naming it."""
    for name in names:
        if name not in allowed:
            raise Invalid(name, "unknown query parameter")


def _opt_number(
    body: dict[str, Any], field: str, minimum: float, maximum: float
) -> float | None:
    if field not in body:
        return None
    value = body[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(field, "must be a number")
    if not minimum <= value <= maximum:
        raise Invalid(field, f"must be between {minimum:g} and {maximum:g}")
    return float(value)


def parse_number_fields(
    raw: Any, limits: dict[str, tuple[float, float]], extra: frozenset[str] = frozenset()
) -> tuple[dict[str, float], dict[str, Any]]:
    """Validate a JSON object of numbers within ``limits``; ``extra`` fields are returned raw.

    Used by the admin faults endpoint.
    """
    body = _object(raw)
    _reject_unknown(body, frozenset(limits) | extra)
    numbers: dict[str, float] = {}
    for field, (low, high) in limits.items():
        value = _opt_number(body, field, low, high)
        if value is not None:
            numbers[field] = value
    return numbers, {k: body[k] for k in extra if k in body}
