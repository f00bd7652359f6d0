"""What a simulation did and what it expects: records, their JSONL form, and `SimResult`.

Contract:

* Every change the simulator makes (to a pod or to a platform run) is one `Change`: when it
  was sent and when the server's answer arrived (client wall clock, epoch seconds), the
  resourceVersion the API server gave it (None for the platform and for answers that are
  not the pod, like the Eviction API's Status), the status shape it produced and the
  platform state that shape should map to (`lifecycles` oracle).
* Each run ends with one `Outcome`: the expected final state, reason and exit code, and
  when the change that decided it was accepted. A run whose steps failed gets an `Error`
  (and still its `Outcome` if its final change was made).
* JSONL: one object per line with ``"type"`` ``change``, ``outcome`` or ``error``; the
  other keys are the dataclass fields. `RecordLog` appends lines as records arrive (a
  benchmark can tail the file) and flushes on `close`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from testbed.simulator.lifecycles import Expectation


@dataclass(frozen=True, slots=True)
class Change:
    run_id: str
    pod: str
    """namespace/name."""
    op: str
    """create, status, bind, annotate, delete, evict, run-create, run-cancel."""
    actor: str
    """Who makes the change: kubelet, scheduler, platform, user, admin, eviction-api."""
    shape: str
    expect: str
    """The platform state a correct Sniffer shows once it has seen this change."""
    sent_at: float
    accepted_at: float
    resource_version: str | None
    lifecycle: str
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "change", **asdict(self)}


@dataclass(frozen=True, slots=True)
class Outcome:
    run_id: str
    pod: str
    lifecycle: str
    kind: str
    state: str
    reason: str | None
    exit_code: int | None
    """None: the lifecycle does not determine an exit code."""
    decided_at: float
    """accepted_at of the change after which the platform should show `state`."""

    def to_json(self) -> dict[str, Any]:
        return {"type": "outcome", **asdict(self)}


@dataclass(frozen=True, slots=True)
class Error:
    run_id: str
    pod: str
    op: str
    error: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"type": "error", **asdict(self)}


Record = Change | Outcome | Error


class RecordLog:
    """Keeps records in memory (unless ``keep=False``) and appends them to a JSONL file.

    Caller duty: `close()` when done (idempotent)."""

    def __init__(self, path: Path | None = None, *, keep: bool = True) -> None:
        self.changes: list[Change] = []
        self.outcomes: list[Outcome] = []
        self.errors: list[Error] = []
        self._keep = keep
        self._file: IO[str] | None = (
            open(path, "w", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
            if path is not None else None)

    def add(self, record: Record) -> None:
        if isinstance(record, Change):
            if self._keep:
                self.changes.append(record)
        elif isinstance(record, Outcome):
            self.outcomes.append(record)
        else:
            self.errors.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file, as dicts (for tests and benchmarks)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class SimResult:
    """What `simulate` did."""

    run_prefix: str
    seed: int
    started_at: float
    finished_at: float
    created: int
    """Pods created."""
    finished: int
    """Pods driven to their end (terminal phase, or deleted)."""
    expected: dict[str, Expectation]
    """run id → the final state, reason and exit code the platform should record."""
    changes: list[Change] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[Error] = field(default_factory=list)
    by_lifecycle: dict[str, int] = field(default_factory=dict)
    kube_requests: int = 0
    platform_requests: int = 0
    retries: int = 0

    @property
    def elapsed_s(self) -> float:
        return self.finished_at - self.started_at

    @property
    def throughput(self) -> float:
        """Pods driven to their end per second of the simulation."""
        return self.finished / self.elapsed_s if self.elapsed_s > 0 else 0.0
