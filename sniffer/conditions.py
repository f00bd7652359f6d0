"""A controller's status as Jobs and apps/v1 controllers write it: counts and conditions.

Contract:
* `read_count(status, name)` is the non-negative count `status[name]`, 0 when absent (the
  controllers omit zero counts); it raises `MalformedPod` for a mistyped or negative one.
* `read_conditions(status, kept)` are the conditions whose type is in `kept`, the last of
  each type if the status repeats one, in status order; it raises `MalformedPod` naming
  the bad field of a condition without a type or status. Types and statuses are
  interned: a cache of many objects holds each once.
* Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from sniffer.podfields import (
    interned,
    message,
    read_int,
    read_list,
    read_map,
    read_time,
    required_str,
)

__all__ = ["Condition", "read_conditions", "read_count"]


@dataclass(frozen=True, slots=True)
class Condition:
    """One kept controller condition."""

    type: str
    status: str
    reason: str | None
    message: str | None
    last_transition: float | None


def read_count(status: Mapping[str, object], name: str) -> int:
    return read_int(status.get(name), f"status.{name}", minimum=0) or 0


def read_conditions(status: Mapping[str, object],
                    kept: tuple[str, ...]) -> tuple[Condition, ...]:
    found: dict[str, Condition] = {}
    for i, raw in enumerate(read_list(status.get("conditions"), "status.conditions")):
        field = f"status.conditions[{i}]"
        cond = read_map(raw, field, required=True)
        type_ = required_str(cond.get("type"), f"{field}.type")
        status_ = required_str(cond.get("status"), f"{field}.status")
        last = read_time(cond.get("lastTransitionTime"), f"{field}.lastTransitionTime")
        if type_ in kept:
            found.pop(type_, None)  # the last of a repeated type wins, in its place
            found[type_] = Condition(sys.intern(type_), sys.intern(status_),
                                     interned(cond.get("reason"), f"{field}.reason"),
                                     message(cond.get("message"), f"{field}.message"), last)
    return tuple(found.values())
