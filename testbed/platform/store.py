"""Durable storage of runs and of the update log, in one SQLite database.

Promises:

* Every write is one SQLite transaction: a request either changes everything it should or
  nothing (no half-written run, no update-log row without its state change and vice versa).
* Committed data survives the process being stopped or killed (WAL journal,
  ``synchronous=NORMAL``: durable against process crashes; a power loss may lose the last
  few commits, which a test platform accepts).
* ``version`` starts at 1 and grows by exactly 1 per applied change (state change,
  attempts raise, or first cancel request). ``updated_at`` changes iff ``version`` does.
* ``attempts`` never decreases; ``attempt_pod`` changes only with a higher count (the
  pod of the newest attempt), or when none is stored yet (see `rules`).
* The update log holds exactly one row per applied state change (an attempts-only raise
  is no state change and has none), with ``seq`` strictly
  increasing in commit order, ``received_at`` the time the request arrived and
  ``traceparent`` the request's W3C trace context header (None if it had none).
* Listing is keyset-paginated on ``id`` (runs are never deleted and ids never change), so a
  run that matches the filter during a whole listing is returned exactly once, however the
  other runs change meanwhile.

The store is used from one thread (the server's event loop); each call is a few tens of
microseconds, so it runs inline rather than in an executor. The one slow operation, the
WAL checkpoint (it fsyncs the database), runs in a background thread with its own
connection once :meth:`Store.start_checkpointer` was called, so a write never waits for a
disk flush.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import rules
from .rules import Decision, PatchRequest, RunView, check_transition
from .wire import PatchBody, format_time

__all__ = ["AlreadyExists", "PatchOutcome", "Store", "check_transition"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id               TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    version          INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    reason           TEXT,
    message          TEXT,
    exit_code        INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pod_namespace    TEXT,
    pod_name         TEXT,
    pod_uid          TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    attempt_pod      TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, id);
CREATE TABLE IF NOT EXISTS updates (
    seq         INTEGER PRIMARY KEY,  -- rows are never deleted, so max+1 only grows
    run_id      TEXT NOT NULL,
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    received_at REAL NOT NULL,
    version     INTEGER NOT NULL,
    traceparent TEXT
);
"""

_COLUMNS = (
    "id", "state", "version", "kind", "created_at", "updated_at", "started_at",
    "finished_at", "reason", "message", "exit_code", "cancel_requested",
    "pod_namespace", "pod_name", "pod_uid", "attempts", "attempt_pod",
)
# Columns added after the first schema: a database made before them gains them on open.
_ADDED_COLUMNS = (("attempts", "INTEGER NOT NULL DEFAULT 0"), ("attempt_pod", "TEXT"))
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM runs"


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class _Checkpointer(threading.Thread):
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval_s`` on its own connection.

    PASSIVE never blocks writers; sqlite3 releases the GIL while it works.
    """

    def __init__(self, path: Path, interval_s: float) -> None:
        super().__init__(name="sqlite-checkpointer", daemon=True)
        self._path = path
        self._interval_s = interval_s
        self._stopping = threading.Event()

    def run(self) -> None:
        conn = _connect(self._path)
        try:
            while not self._stopping.wait(self._interval_s):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)


class AlreadyExists(Exception):
    """A run with this id exists already; ``run`` is its current JSON."""

    def __init__(self, run: dict[str, Any]) -> None:
        super().__init__(f"run {run['id']!r} already exists")
        self.run = run


@dataclass(frozen=True, slots=True)
class PatchOutcome:
    """What a PATCH did: the decision and the run as it is after the call."""

    decision: Decision
    run: dict[str, Any]


def _to_json(row: Sequence[Any]) -> dict[str, Any]:
    run = dict(zip(_COLUMNS, row, strict=True))
    run["cancel_requested"] = bool(run["cancel_requested"])
    return run


class Store:
    """Runs and the update log. Create with :meth:`open`; call :meth:`close` when done.

    Invariant: ``self._conn`` is in autocommit mode outside :meth:`_write` (no transaction is
    left open between calls).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._checkpointer: _Checkpointer | None = None

    @classmethod
    def open(cls, path: Path | str) -> Store:
        conn = _connect(Path(path))
        conn.executescript(_SCHEMA)
        present = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in present:
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
        return cls(conn, Path(path))

    def start_checkpointer(self, interval_s: float = 0.5) -> None:
        """Move WAL checkpoints off the calling thread (call once; :meth:`close` stops it)."""
        if self._checkpointer is not None:
            raise RuntimeError("checkpointer already started")
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = _Checkpointer(self._path, interval_s)
        self._checkpointer.start()

    def close(self) -> None:
        """Stop the checkpointer, checkpoint the WAL and close the connection."""
        try:
            if self._checkpointer is not None:
                self._checkpointer.stop()
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _get(self, conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
        row = conn.execute(f"{_SELECT} WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _to_json(row)

    # -- reads -------------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._get(self._conn, run_id)

    def list_runs(
        self, states: Sequence[str], after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page ordered by id, strictly after ``after``; ``next`` is None on the last page."""
        where: list[str] = []
        params: list[Any] = []
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(states)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit + 1)
        rows = self._conn.execute(sql, params).fetchall()
        items = [_to_json(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, (items[-1]["id"] if more else None)

    def updates(self, since: int, limit: int) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT seq, run_id, from_state, to_state, received_at, version, traceparent"
            " FROM updates"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (since, limit),
        ).fetchall()
        return [
            {
                "seq": seq,
                "run_id": run_id,
                "from_state": from_state,
                "to_state": to_state,
                "received_at": received_at,
                "received_at_rfc3339": format_time(received_at),
                "version": version,
                "traceparent": traceparent,
            }
            for seq, run_id, from_state, to_state, received_at, version, traceparent in rows
        ]

    def last_seq(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM updates").fetchone()
        return int(row[0])

    def counts_by_state(self) -> dict[str, int]:
        counts = {state: 0 for state in rules.STATES}
        for state, count in self._conn.execute(
            "SELECT state, COUNT(*) FROM runs GROUP BY state"
        ):
            counts[state] = count
        return counts

    # -- writes ------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str | None,
        kind: str,
        pod_namespace: str | None,
        pod_name: str | None,
        at: float,
    ) -> dict[str, Any]:
        """Insert a queued run (id generated when None); raise AlreadyExists on a duplicate."""
        stamp = format_time(at)
        new_id = run_id if run_id is not None else f"run-{uuid.uuid4().hex}"
        with self._write() as conn:
            existing = self._get(conn, new_id)
            if existing is not None:
                raise AlreadyExists(existing)
            conn.execute(
                "INSERT INTO runs (id, state, version, kind, created_at, updated_at,"
                " pod_namespace, pod_name) VALUES (?, 'queued', 1, ?, ?, ?, ?, ?)",
                (new_id, kind, stamp, stamp, pod_namespace, pod_name),
            )
            run = self._get(conn, new_id)
        assert run is not None
        return run

    def request_cancel(self, run_id: str, at: float) -> dict[str, Any] | None:
        """Set ``cancel_requested`` (once; terminal runs are left alone); None if unknown."""
        with self._write() as conn:
            run = self._get(conn, run_id)
            if run is None:
                return None
            if run["cancel_requested"] or rules.is_terminal(run["state"]):
                return run
            conn.execute(
                "UPDATE runs SET cancel_requested = 1, version = version + 1, updated_at = ?"
                " WHERE id = ?",
                (format_time(at), run_id),
            )
            updated = self._get(conn, run_id)
        assert updated is not None
        return updated

    def patch_run(
        self, run_id: str, body: PatchBody, received_at: float, traceparent: str | None = None
    ) -> PatchOutcome | None:
        """Evaluate and maybe apply a PATCH in one transaction; None if the run is unknown.

        When a run enters ``running`` without ``started_at``, or a terminal state without
        ``finished_at``, and has none yet, the arrival time fills it in.
        """
        with self._write() as conn:
            run = self._get(conn, run_id)
            if run is None:
                return None
            decision = rules.decide_patch(
                RunView(state=run["state"], version=run["version"], pod_uid=run["pod_uid"],
                        attempts=run["attempts"]),
                PatchRequest(
                    state=body.state,
                    expected_state=body.expected_state,
                    expected_version=body.expected_version,
                    pod_uid=body.pod_uid,
                    attempts=body.attempts,
                ),
            )
            if decision not in (Decision.APPLY, Decision.ATTEMPTS):
                return PatchOutcome(decision, run)
            stamp = format_time(received_at)
            changes: dict[str, Any] = {"version": run["version"] + 1, "updated_at": stamp}
            changes.update(_attempts(run, body))
            if decision is Decision.ATTEMPTS:
                self._update(conn, run_id, changes)
                run.update(changes)
                return PatchOutcome(decision, run)
            changes["state"] = body.state
            for field in ("reason", "message", "exit_code", "started_at", "finished_at",
                          "pod_uid", "pod_name", "pod_namespace"):
                value = getattr(body, field)
                if value is not None:
                    changes[field] = value
            if body.state == rules.RUNNING and "started_at" not in changes \
                    and run["started_at"] is None:
                changes["started_at"] = stamp
            if rules.is_terminal(body.state) and "finished_at" not in changes \
                    and run["finished_at"] is None:
                changes["finished_at"] = stamp
            self._update(conn, run_id, changes)
            conn.execute(
                "INSERT INTO updates"
                " (run_id, from_state, to_state, received_at, version, traceparent)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, run["state"], body.state, received_at, changes["version"],
                 traceparent),
            )
            run.update(changes)
        return PatchOutcome(Decision.APPLY, run)

    @staticmethod
    def _update(conn: sqlite3.Connection, run_id: str, changes: dict[str, Any]) -> None:
        assignments = ", ".join(f"{name} = ?" for name in changes)
        conn.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*changes.values(), run_id))


def _attempts(run: dict[str, Any], body: PatchBody) -> dict[str, Any]:
    """The attempts fields an applied PATCH writes: a count only ever rises, and the
    attempt pod follows the count (or fills an empty one)."""
    changes: dict[str, Any] = {}
    if body.attempts is not None and body.attempts > run["attempts"]:
        changes["attempts"] = body.attempts
        if body.attempt_pod is not None:
            changes["attempt_pod"] = body.attempt_pod
    elif (body.attempt_pod is not None and run["attempt_pod"] is None
          and (body.attempts is None or body.attempts == run["attempts"])):
        changes["attempt_pod"] = body.attempt_pod
    return changes
