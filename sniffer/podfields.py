"""Readers of a raw pod's JSON fields, for `sniffer.podview.project`.

Contract:

* Each reader takes a value as `json.loads` (or `sniffer.podwire`) gives it and the
  field's path, and returns the typed value or raises `MalformedPod` naming that path;
  for any JSON-shaped value it raises nothing else. JSON null and a missing field (the
  caller passes None) read as None, or as the empty value for maps and lists.
* Times are float seconds since the Unix epoch, parsed from RFC 3339; the same text gives
  the same float object (cached), so pods stamped in the same second share it.
* Strings that repeat across pods are interned (`interned`); messages are cut to
  `MESSAGE_LIMIT` characters (`message`); an invalid W3C traceparent reads as None.
* Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache

MESSAGE_LIMIT = 256

_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}"
    r"(?P<more>-.*)?", re.DOTALL)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MalformedPod(ValueError):
    """The object is not a pod Sniffer can use; `reason` names the bad field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def kind_name(value: object) -> str:
    """The JSON-ish name of a value's type, for error messages."""
    return "null" if value is None else type(value).__name__


@lru_cache(maxsize=256)
def _parse_rfc3339(text: str) -> float:
    """Seconds since the epoch; ValueError if `text` is not RFC 3339. Cached, so pods
    stamped in the same second share one float object."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(text)
    base, fraction, offset = m.groups()
    if base.endswith("60"):
        base = base[:-2] + "59"  # a leap second reads as :59
    # fromisoformat checks the ranges (month 13, offset +24:00, ...).
    moment = datetime.fromisoformat(base + ("+00:00" if offset in "Zz" else offset))
    seconds = (moment - _EPOCH).total_seconds()
    return seconds + float(fraction) if fraction else seconds


def read_time(value: object, field: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPod(f"{field}: expected an RFC 3339 timestamp, got {kind_name(value)}")
    try:
        return _parse_rfc3339(str(value))
    except (ValueError, OverflowError):
        raise MalformedPod(f"{field}: unparseable timestamp {value[:64]!r}") from None


def read_map(value: object, field: str, *, required: bool = False) -> Mapping[str, object]:
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedPod(f"{field}: expected an object, got {kind_name(value)}")
    return value


def read_list(value: object, field: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPod(f"{field}: expected a list, got {kind_name(value)}")
    return value


def read_str(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPod(f"{field}: expected a string, got {kind_name(value)}")
    return value if type(value) is str else str.__str__(value)


def required_str(value: object, field: str) -> str:
    if text := read_str(value, field):
        return text
    raise MalformedPod(f"{field}: required, got {'nothing' if value is None else 'empty'}")


def interned(value: object, field: str) -> str | None:
    text = read_str(value, field)
    return None if text is None else sys.intern(text)


def message(value: object, field: str) -> str | None:
    text = read_str(value, field)
    if not text:
        return None
    return text[:MESSAGE_LIMIT] if len(text) > MESSAGE_LIMIT else text


def read_int(value: object, field: str, *, minimum: int | None = None) -> int | None:
    if value is None:
        return None
    if type(value) is not int:  # bool is an int subclass; 1.0 is not an int.
        raise MalformedPod(f"{field}: expected an integer, got {kind_name(value)}")
    if minimum is not None and value < minimum:
        raise MalformedPod(f"{field}: must be >= {minimum}, got {value}")
    return value


def read_bool(value: object, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedPod(f"{field}: expected a boolean, got {kind_name(value)}")
    return value


def traceparent(value: str | None) -> str | None:
    """The W3C traceparent's version-00 fields if valid, else None."""
    m = _TRACEPARENT.fullmatch(value or "")
    if (m is None or m["version"] == "ff" or (m["version"] == "00" and m["more"])
            or m["trace"] == "0" * 32 or m["parent"] == "0" * 16):
        return None
    return m.string[:55]


@lru_cache(maxsize=64)
def shared(names: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple object per distinct list of names: most pods carry the same finalizers."""
    return names
