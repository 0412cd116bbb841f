"""The spoke's durable state: orders, cases and the outbox, in one local SQLite file.

One database, so that a case's state change and the message announcing it are written in
the same transaction (a transactional outbox): after a crash, either both happened or
neither did. An order is stored before it is acknowledged to the broker; a case moves
``queued -> running -> done | failed | cancelled``; on restart ``running`` cases go back to
``queued`` and run again under the same attempt number, so the hub, which deduplicates on
the natural key, never counts them twice.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.spoke_service.sqlite_tx import immediate

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    experiment_id TEXT PRIMARY KEY, manifest_hash TEXT NOT NULL, body BLOB NOT NULL,
    received_at REAL NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cases (
    experiment_id TEXT NOT NULL, participant_id TEXT NOT NULL, algorithm TEXT NOT NULL,
    attempt INTEGER NOT NULL, patient_id TEXT NOT NULL, state TEXT NOT NULL,
    error_code TEXT, updated_at REAL NOT NULL,
    PRIMARY KEY (experiment_id, participant_id, algorithm, attempt)
);
CREATE INDEX IF NOT EXISTS cases_state ON cases (state);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, body BLOB NOT NULL,
    created_at REAL NOT NULL, sent_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sent_at) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class CaseRow:
    """One case of one experiment at this spoke."""

    experiment_id: str
    participant_id: str
    algorithm: str
    attempt: int
    patient_id: str
    state: str


@dataclass(frozen=True)
class OutboxItem:
    """A message waiting to be sent."""

    seq: int
    destination: str
    body: bytes


class SpokeState:
    """The spoke's local database; safe to share between the spoke's threads."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._unmarked: set[int] = set()  # sent, but a full disk refused to record it

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic unit of work (``BEGIN IMMEDIATE`` ... ``COMMIT``)."""
        return immediate(self._db, self._lock)

    # orders -------------------------------------------------------------------------------

    def store_order(
        self, experiment_id: str, manifest_hash: str, body: bytes, received_at: float | None = None
    ) -> bool:
        """Store an order durably; ``False`` if this experiment's order was already stored.

        ``received_at`` (seconds since the epoch, the spoke's clock; now by default) starts
        the spoke's own measure of how long it has held the order (deadlines).
        """
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, 0)",
                (experiment_id, manifest_hash, body,
                 time.time() if received_at is None else received_at),
            )  # fmt: skip
            return cursor.rowcount == 1

    def order_received_at(self, experiment_id: str) -> float | None:
        """When the order was stored (the spoke's clock, seconds since the epoch)."""
        value = self._order_column(experiment_id, "received_at")
        return None if value is None else float(value)

    def order_body(self, experiment_id: str) -> bytes | None:
        """The stored order's message bytes."""
        value = self._order_column(experiment_id, "body")
        return None if value is None else bytes(value)

    def is_cancelled(self, experiment_id: str) -> bool:
        """Whether the hub cancelled this experiment."""
        return bool(self._order_column(experiment_id, "cancelled"))

    def _order_column(self, experiment_id: str, column: str) -> Any:
        """One column of an order's row (``None`` without such an order)."""
        assert column in ("received_at", "body", "cancelled")  # never from outside
        with self._lock:
            row = self._db.execute(
                f"SELECT {column} FROM orders WHERE experiment_id = ?", (experiment_id,)
            ).fetchone()
        return row[0] if row else None

    # cases --------------------------------------------------------------------------------

    def add_cases(self, rows: list[CaseRow], messages: list[tuple[str, bytes]]) -> int:
        """Insert new cases and their announcements atomically; returns how many were new."""
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO cases VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                [(r.experiment_id, r.participant_id, r.algorithm, r.attempt, r.patient_id,
                  r.state, time.time()) for r in rows],
            )  # fmt: skip
            added = db.total_changes - before
            if added:
                _enqueue(db, messages)
            return added

    def set_case_state(
        self,
        case: CaseRow,
        state: str,
        messages: list[tuple[str, bytes]],
        error_code: str | None = None,
    ) -> None:
        """Move a case to ``state`` and queue ``messages`` in the same transaction."""
        with self.transaction() as db:
            _write_case_state(db, case, state, error_code)
            _enqueue(db, messages)

    def finish(
        self,
        case: CaseRow,
        state: str,
        messages: list[tuple[str, bytes]],
        error_code: str | None,
        if_cancelled: list[tuple[str, bytes]],
    ) -> str:
        """Settle a run: ``state`` and ``messages``, unless the experiment was cancelled.

        Cancelled meanwhile (checked inside the transaction, which a cancel's own
        transaction cannot interleave with), the case becomes ``cancelled`` and only
        ``if_cancelled`` is queued: a result computed for a cancelled case never leaves.
        Returns the state written.
        """
        with self.transaction() as db:
            row = db.execute(
                "SELECT cancelled FROM orders WHERE experiment_id = ?", (case.experiment_id,)
            ).fetchone()
            if row and row[0]:
                state, messages, error_code = "cancelled", if_cancelled, None
            _write_case_state(db, case, state, error_code)
            _enqueue(db, messages)
            return state

    def expire(
        self,
        experiment_id: str,
        error_code: str,
        announce: Callable[[CaseRow], list[tuple[str, bytes]]],
    ) -> int:
        """Fail the experiment's queued cases with ``error_code`` (its deadline passed) and
        queue ``announce(case)`` for each, in one transaction; returns how many."""
        with self.transaction() as db:
            return _settle_waiting(db, experiment_id, ("queued",), "failed", error_code, announce)

    def queued_experiments(self) -> list[str]:
        """The experiments with at least one queued case."""
        return self._experiments("SELECT DISTINCT experiment_id FROM cases WHERE state = 'queued'")

    def cancel(
        self, experiment_id: str, announce: Callable[[CaseRow], list[tuple[str, bytes]]]
    ) -> int:
        """Mark the experiment cancelled, and its queued cases and those whose result is held
        for review (``pending``) ``cancelled``, queuing ``announce(case)`` for each, in one
        transaction; returns how many. The cases are read inside the transaction: a case a
        worker settles as held a moment before is announced too.
        """
        with self.transaction() as db:
            db.execute("UPDATE orders SET cancelled = 1 WHERE experiment_id = ?", (experiment_id,))
            return _settle_waiting(
                db, experiment_id, ("queued", "held"), "cancelled", None, announce
            )

    def cancelled_experiments(self) -> list[str]:
        """The experiments the hub cancelled."""
        return self._experiments("SELECT experiment_id FROM orders WHERE cancelled = 1")

    def _experiments(self, query: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(query).fetchall()]

    def cases(self, state: str | None = None, experiment_id: str | None = None) -> list[CaseRow]:
        """Cases, optionally only those in ``state`` or of one experiment, in a stable order."""
        query = "SELECT experiment_id, participant_id, algorithm, attempt, patient_id, state"
        query += " FROM cases WHERE 1=1"
        params: list[str] = []
        if state is not None:
            query += " AND state = ?"
            params.append(state)
        if experiment_id is not None:
            query += " AND experiment_id = ?"
            params.append(experiment_id)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY rowid", params).fetchall()
        return [CaseRow(*r) for r in rows]

    def claim_next(self, announce: Callable[[CaseRow], list[tuple[str, bytes]]]) -> CaseRow | None:
        """Atomically take the oldest queued case, mark it ``running`` and queue ``announce``."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT experiment_id, participant_id, algorithm, attempt, patient_id, state"
                " FROM cases WHERE state = 'queued' ORDER BY rowid LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            experiment_id, participant_id, algorithm, attempt, patient_id, _ = row
            case = CaseRow(experiment_id, participant_id, algorithm, attempt, patient_id, "running")
            db.execute(
                "UPDATE cases SET state = 'running', updated_at = ? WHERE experiment_id = ?"
                " AND participant_id = ? AND algorithm = ? AND attempt = ?",
                (time.time(), case.experiment_id, case.participant_id, case.algorithm,
                 case.attempt),
            )  # fmt: skip
            _enqueue(db, announce(case))
            return case

    def requeue_interrupted(self) -> int:
        """After a restart: cases left ``running`` go back to ``queued``; returns how many."""
        with self.transaction() as db:
            return db.execute("UPDATE cases SET state = 'queued' WHERE state = 'running'").rowcount

    def counts(self) -> dict[str, int]:
        """How many cases are in each state."""
        with self._lock:
            rows = self._db.execute("SELECT state, count(*) FROM cases GROUP BY state")
            return dict(rows.fetchall())

    # outbox -------------------------------------------------------------------------------

    def enqueue(self, messages: list[tuple[str, bytes]]) -> None:
        """Queue messages for sending on their own (heartbeats, manifests)."""
        with self.transaction() as db:
            _enqueue(db, messages)

    def pending(self, limit: int = 100) -> list[OutboxItem]:
        """The oldest messages not yet confirmed by the broker."""
        with self._lock:
            skip = set(self._unmarked)
            rows = self._db.execute(
                "SELECT seq, destination, body FROM outbox WHERE sent_at IS NULL"
                " ORDER BY seq LIMIT ?",
                (limit + len(skip),),
            ).fetchall()
        found = [OutboxItem(seq, dest, bytes(body)) for seq, dest, body in rows if seq not in skip]
        return found[:limit]

    def mark_sent(self, seqs: list[int]) -> None:
        """The broker confirmed these messages.

        If the database cannot record it (a full disk), the messages are remembered as sent
        for as long as this process runs, so the outbox does not send them again and again;
        the next successful call records them too. After a restart they are sent once more,
        which the hub deduplicates.
        """
        now = time.time()
        with self._lock:
            todo = sorted(self._unmarked | set(seqs))
            try:
                with self.transaction() as db:
                    db.executemany(
                        "UPDATE outbox SET sent_at = ? WHERE seq = ?", [(now, s) for s in todo]
                    )
            except sqlite3.Error as e:
                self._unmarked.update(seqs)
                log.error("outbox: %d sent messages cannot be marked sent (%s)", len(todo), e)
                return
            self._unmarked.clear()

    def sent_bytes(self) -> int:
        """Every byte this spoke has sent (message bodies)."""
        with self._lock:
            row = self._db.execute(
                "SELECT coalesce(sum(length(body)), 0) FROM outbox WHERE sent_at IS NOT NULL"
            ).fetchone()
        return int(row[0])

    # settings -----------------------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        """A small persistent value (e.g. the hash of the last manifest sent)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_setting(self, key: str, value: str) -> None:
        """Store a small persistent value."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))


def _write_case_state(
    db: sqlite3.Connection, case: CaseRow, state: str, error_code: str | None
) -> None:
    db.execute(
        "UPDATE cases SET state = ?, error_code = ?, updated_at = ? WHERE experiment_id = ?"
        " AND participant_id = ? AND algorithm = ? AND attempt = ?",
        (state, error_code, time.time(), case.experiment_id, case.participant_id,
         case.algorithm, case.attempt),
    )  # fmt: skip


def _settle_waiting(
    db: sqlite3.Connection,
    experiment_id: str,
    waiting: tuple[str, ...],
    state: str,
    error_code: str | None,
    announce: Callable[[CaseRow], list[tuple[str, bytes]]],
) -> int:
    """Move the experiment's cases in one of the ``waiting`` states to ``state`` and queue
    ``announce(case)`` for each, inside the caller's transaction; returns how many."""
    marks = ", ".join("?" * len(waiting))
    rows = db.execute(
        "SELECT experiment_id, participant_id, algorithm, attempt, patient_id FROM cases"
        f" WHERE experiment_id = ? AND state IN ({marks}) ORDER BY rowid",
        (experiment_id, *waiting),
    ).fetchall()
    db.execute(
        "UPDATE cases SET state = ?, error_code = ?, updated_at = ?"
        f" WHERE experiment_id = ? AND state IN ({marks})",
        (state, error_code, time.time(), experiment_id, *waiting),
    )
    for experiment, participant_id, algorithm, attempt, patient_id in rows:
        case = CaseRow(experiment, participant_id, algorithm, attempt, patient_id, state)
        _enqueue(db, announce(case))
    return len(rows)


def _enqueue(db: sqlite3.Connection, messages: list[tuple[str, bytes]]) -> None:
    now = time.time()
    db.executemany(
        "INSERT INTO outbox (destination, body, created_at) VALUES (?, ?, ?)",
        [(dest, body, now) for dest, body in messages],
    )
