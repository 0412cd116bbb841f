"""Results held for a person to review before they leave the spoke (``pending.sqlite``).

When the spoke's policy asks for manual release, a result that passed the release gate is
*held* here instead of going to the outbox. A person lists the held results
(``workbench spoke pending``), then *releases* one (its message goes to the spoke's outbox)
or *rejects* it (the hub is told ``RELEASE_REJECTED``, and nothing else). When the hub
cancels the experiment, its held results are rejected by ``hub`` (``withdraw``), and a
release that races the cancel is refused. Every transition is recorded with its time and
the operator's login name, and happens at most once: a second release of the same result
is an error, never a second send.

The store is its own SQLite file in the spoke's state folder, so the review tools never
touch the spoke's own tables except through ``enqueue_released``/``enqueue_rejected``, which
add to the outbox of ``state.sqlite`` in one transaction; the running spoke's outbox thread
picks them up within a second.

>>> # store = PendingStore.open(config.state_dir)
>>> # held_id = store.hold(CaseKey.of(result), m.encode(result), verdict.summary)
>>> # queue = lambda held, body: enqueue_released(config.state_dir, body, held.case)
>>> # store.release(held_id, deliver=queue)
"""

from __future__ import annotations

import builtins
import getpass
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workbench.core import messages as m
from workbench.core.run_errors import Error, RunErrorCode
from workbench.errors import WorkbenchError
from workbench.spoke_service.sqlite_tx import immediate

log = logging.getLogger(__name__)

PENDING_FILE = "pending.sqlite"
STATE_FILE = "state.sqlite"  # the spoke's own database (``SpokeConfig.state_path``)
HELD_STATE = "held"  # the spoke's case state while its result waits here
WITHDRAWN_BY = "hub"  # who rejected the held results of an experiment the hub cancelled
WITHDRAWN_REASON = "withdrawn: the hub cancelled the experiment"
_MAX_REASON = 500

State = Literal["held", "released", "rejected"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spoke_id TEXT NOT NULL, experiment_id TEXT NOT NULL, participant_id TEXT NOT NULL,
    algorithm TEXT NOT NULL, attempt INTEGER NOT NULL,
    message BLOB NOT NULL, summary TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('held', 'released', 'rejected')),
    held_at REAL NOT NULL, held_by TEXT NOT NULL,
    decided_at REAL, decided_by TEXT, reason TEXT,
    UNIQUE (experiment_id, participant_id, algorithm, attempt)
);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, held_id INTEGER NOT NULL REFERENCES held (id),
    state TEXT NOT NULL, at REAL NOT NULL, operator TEXT NOT NULL, reason TEXT
);
"""
_COLUMNS = (
    "id, spoke_id, experiment_id, participant_id, algorithm, attempt, summary, state, "
    "held_at, held_by, decided_at, decided_by, reason"
)


class PendingError(WorkbenchError):
    """A held result cannot be found, or was already released or rejected."""


@dataclass(frozen=True)
class CaseKey:
    """The natural key of one case's result (what the hub deduplicates on)."""

    spoke_id: str
    experiment_id: str
    participant_id: str
    algorithm: str
    attempt: int

    @classmethod
    def of(cls, message: m.CaseResult) -> CaseKey:
        """The key of a result message."""
        return cls(message.spoke_id, message.experiment_id, message.participant_id,
                   message.algorithm, message.attempt)  # fmt: skip


@dataclass(frozen=True)
class HeldResult:
    """One result in the store and where it stands (``reason`` is local, never sent)."""

    id: int
    case: CaseKey
    summary: str
    state: State
    held_at: float
    held_by: str
    decided_at: float | None
    decided_by: str | None
    reason: str | None


@dataclass(frozen=True)
class Transition:
    """One recorded step of a held result: its new state, when, and by whom."""

    state: State
    at: float
    operator: str
    reason: str | None


Deliver = Callable[[HeldResult, bytes], object]


class PendingStore:
    """The held results of one spoke; safe to share between threads and processes.

    Args:
        path: the database file (``pending.sqlite`` in the spoke's state folder).
        operator: who acts through this store; the login name (``getpass``) if ``None``.
    """

    def __init__(self, path: Path | str, operator: str | None = None) -> None:
        self.operator = operator or _login()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    @classmethod
    def open(cls, state_dir: Path, operator: str | None = None) -> PendingStore:
        """The store in a spoke's state folder, which must exist."""
        if not Path(state_dir).is_dir():
            raise PendingError(f"no spoke state folder at {state_dir}")
        return cls(Path(state_dir) / PENDING_FILE, operator)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> PendingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db, self._lock)

    def hold(self, case: CaseKey, message_bytes: bytes, summary: str) -> int:
        """Keep a result for review; returns its id.

        Holding the same case (same natural key) again returns the first id and keeps the
        first message, whatever became of it: a re-run after a crash is not a new result.
        """
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, state FROM held WHERE experiment_id = ? AND participant_id = ?"
                " AND algorithm = ? AND attempt = ?",
                (case.experiment_id, case.participant_id, case.algorithm, case.attempt),
            ).fetchone()
            if row is not None:
                log.info("result of %s already in the pending store (%s)", case, row[1])
                return int(row[0])
            cursor = db.execute(
                "INSERT INTO held (spoke_id, experiment_id, participant_id, algorithm, attempt,"
                " message, summary, state, held_at, held_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (case.spoke_id, case.experiment_id, case.participant_id, case.algorithm,
                 case.attempt, message_bytes, summary, "held", now, self.operator),
            )  # fmt: skip
            held_id = int(cursor.lastrowid or 0)
            _record(db, held_id, "held", now, self.operator, None)
            return held_id

    def list(self, state: State | None = "held") -> builtins.list[HeldResult]:
        """Results in ``state`` (all of them if ``None``), oldest first."""
        query = f"SELECT {_COLUMNS} FROM held"
        params: tuple[str, ...] = ()
        if state is not None:
            query, params = query + " WHERE state = ?", (state,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [_held(r) for r in rows]

    def get(self, held_id: int) -> HeldResult:
        """One result by id; ``PendingError`` if there is none."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM held WHERE id = ?", (held_id,))
            found = row.fetchone()
        if found is None:
            raise PendingError(f"no held result with id {held_id}")
        return _held(found)

    def message(self, held_id: int) -> bytes:
        """The held message's bytes, exactly as they would be sent."""
        with self._lock:
            row = self._db.execute("SELECT message FROM held WHERE id = ?", (held_id,)).fetchone()
        if row is None:
            raise PendingError(f"no held result with id {held_id}")
        return bytes(row[0])

    def history(self, held_id: int) -> builtins.list[Transition]:
        """Every recorded transition of one result, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, at, operator, reason FROM transitions WHERE held_id = ?"
                " ORDER BY seq",
                (held_id,),
            ).fetchall()
        return [Transition(*r) for r in rows]

    def release(self, held_id: int, deliver: Deliver | None = None) -> bytes:
        """Mark a held result released and return its message bytes.

        ``deliver(held, message_bytes)``, if given, runs inside the store's transaction: if
        it raises, the result stays held. Pass ``enqueue_released`` there so that a result
        is never marked released without being queued for sending.

        Raises:
            PendingError: no such id, or it was already released or rejected.
        """
        return self._decide(held_id, "released", None, deliver)

    def reject(self, held_id: int, reason: str = "", deliver: Deliver | None = None) -> bytes:
        """Mark a held result rejected; ``reason`` stays in this store, never sent.

        ``deliver`` works as for ``release`` (pass ``enqueue_rejected`` to tell the hub).
        Returns the message that will now never be sent.
        """
        return self._decide(held_id, "rejected", reason.strip()[:_MAX_REASON] or None, deliver)

    def withdraw(self, experiment_id: str, released: Collection[tuple[str, str, int]] = ()) -> int:
        """The hub cancelled the experiment: its held results are rejected, by ``hub``.

        Nothing is sent (the spoke reports the cases ``cancelled``); the reason is recorded
        with each transition. Returns how many were withdrawn; results already released or
        rejected are left as they are, and so are those whose ``(participant_id, algorithm,
        attempt)`` is in ``released``: the spoke's own database says they were queued to
        send (a release that crashed before recording it here; releasing again completes it).
        """
        now = time.time()
        with self._transaction() as db:
            ids = [
                int(held_id)
                for held_id, participant_id, algorithm, attempt in db.execute(
                    "SELECT id, participant_id, algorithm, attempt FROM held"
                    " WHERE experiment_id = ? AND state = 'held'",
                    (experiment_id,),
                )
                if (participant_id, algorithm, int(attempt)) not in released
            ]
            for held_id in ids:
                db.execute(
                    "UPDATE held SET state = 'rejected', decided_at = ?, decided_by = ?,"
                    " reason = ? WHERE id = ?",
                    (now, WITHDRAWN_BY, WITHDRAWN_REASON, held_id),
                )
                _record(db, held_id, "rejected", now, WITHDRAWN_BY, WITHDRAWN_REASON)
        if ids:
            log.info("%d held result(s) of cancelled experiment %s withdrawn", len(ids),
                     experiment_id)  # fmt: skip
        return len(ids)

    def _decide(
        self, held_id: int, state: State, reason: str | None, deliver: Deliver | None
    ) -> bytes:
        now = time.time()
        with self._transaction() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM held WHERE id = ?", (held_id,)).fetchone()
            if row is None:
                raise PendingError(f"no held result with id {held_id}")
            held = _held(row)
            if held.state != "held":
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.decided_at or 0))
                raise PendingError(
                    f"result {held_id} was already {held.state} by {held.decided_by} at {when}"
                )
            db.execute(
                "UPDATE held SET state = ?, decided_at = ?, decided_by = ?, reason = ?"
                " WHERE id = ? AND state = 'held'",
                (state, now, self.operator, reason, held_id),
            )
            _record(db, held_id, state, now, self.operator, reason)
            body = bytes(
                db.execute("SELECT message FROM held WHERE id = ?", (held_id,)).fetchone()[0]
            )
            if deliver is not None:
                deliver(held, body)
        log.info("result %d %s by %s", held_id, state, self.operator)
        return body


def release_held(state_dir: Path, held_id: int, operator: str | None = None) -> HeldResult:
    """Release a held result into the spoke's outbox (``workbench spoke release``).

    The outbox insert and the store's transition commit together or not at all, as far as
    two databases allow: a crash between the two leaves the result held *and* queued, and
    releasing it again then only records the transition (``enqueue_released`` is a no-op).

    Raises:
        PendingError: no such id, already released or rejected, or no spoke state.
    """
    with PendingStore.open(state_dir, operator) as store:
        store.release(held_id, lambda held, body: enqueue_released(state_dir, body, held.case))
        return store.get(held_id)


def reject_held(
    state_dir: Path, held_id: int, reason: str = "", operator: str | None = None
) -> HeldResult:
    """Reject a held result and tell the hub ``RELEASE_REJECTED`` (``workbench spoke reject``).

    Raises:
        PendingError: no such id, already released or rejected, or no spoke state.
    """
    with PendingStore.open(state_dir, operator) as store:
        store.reject(held_id, reason, lambda held, _: enqueue_rejected(state_dir, held.case))
        return store.get(held_id)


def enqueue_released(state_dir: Path, message_bytes: bytes, case: CaseKey | None = None) -> bool:
    """Queue a released result in the spoke's outbox (``state.sqlite``), in one transaction.

    The running spoke's outbox thread sends it to ``/queue/elic.hub.inbox``. Queuing the same
    bytes twice is a no-op (returns ``False``), so a release retried after a crash between
    this commit and the pending store's cannot send twice. With ``case``, the spoke's case
    row moves from ``held`` to ``done`` in the same transaction.
    """
    return _into_outbox(Path(state_dir), [message_bytes], case, "done", None)


def enqueue_rejected(state_dir: Path, case: CaseKey) -> bool:
    """Tell the hub a reviewer declined the result: a ``failed`` status, ``RELEASE_REJECTED``.

    Only the code and its fixed reason travel; the reviewer's words stay in the pending
    store. The case row moves from ``held`` to ``failed`` in the same transaction.
    """
    rejected = Error.of(RunErrorCode.RELEASE_REJECTED)
    error = m.ErrorInfo(code=rejected.code, reason=rejected.reason)
    status = m.CaseStatus(
        experiment_id=case.experiment_id, spoke_id=case.spoke_id,
        participant_id=case.participant_id, algorithm=case.algorithm, attempt=case.attempt,
        state="failed", error=error,
    )  # fmt: skip
    return _into_outbox(
        Path(state_dir), [m.encode(status)], case, "failed", RunErrorCode.RELEASE_REJECTED.value
    )


def _into_outbox(
    state_dir: Path,
    bodies: Sequence[bytes],
    case: CaseKey | None,
    case_state: str,
    error_code: str | None,
) -> bool:
    path = state_dir / STATE_FILE
    try:
        # mode=rw: never create an empty database where the spoke's should be.
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=30.0)
    except sqlite3.OperationalError as e:
        raise PendingError(f"cannot open the spoke's state {path}: {e}") from e
    try:
        db.execute("PRAGMA synchronous=FULL")
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone() is None:
            raise PendingError(f"{path} has no outbox: is it a spoke's state database?")
        with immediate(db):
            if case is not None and _case_state(db, case) == "running":
                # Held a moment ago, and the spoke is still recording the case's outcome.
                raise PendingError(
                    f"the spoke is still recording case {case.participant_id}/{case.algorithm};"
                    " try again in a moment"
                )
            if case is not None and _cancelled(db, case.experiment_id):
                if case_state == "done":
                    raise PendingError(
                        f"the hub cancelled experiment {case.experiment_id}: its results are"
                        " not released (reject this one to close its review)"
                    )
                return False  # a rejection: the hub knows the case as cancelled already
            fresh = [body for body in bodies if not _queued(db, body)]
            if len(fresh) < len(bodies):
                log.info(
                    "%d message(s) already in the outbox of %s", len(bodies) - len(fresh), path
                )
            now = time.time()
            db.executemany(
                "INSERT INTO outbox (destination, body, created_at) VALUES (?, ?, ?)",
                [(m.HUB_INBOX, body, now) for body in fresh],
            )
            if case is not None:
                db.execute(
                    "UPDATE cases SET state = ?, error_code = ?, updated_at = ?"
                    " WHERE experiment_id = ? AND participant_id = ? AND algorithm = ?"
                    " AND attempt = ? AND state = ?",
                    (case_state, error_code, now, case.experiment_id, case.participant_id,
                     case.algorithm, case.attempt, HELD_STATE),
                )  # fmt: skip
        return bool(fresh)
    except sqlite3.Error as e:
        raise PendingError(f"cannot queue the message in {path}: {e}") from e
    finally:
        db.close()


def _case_state(db: sqlite3.Connection, case: CaseKey) -> str | None:
    row = db.execute(
        "SELECT state FROM cases WHERE experiment_id = ? AND participant_id = ?"
        " AND algorithm = ? AND attempt = ?",
        (case.experiment_id, case.participant_id, case.algorithm, case.attempt),
    ).fetchone()
    return None if row is None else str(row[0])


def _cancelled(db: sqlite3.Connection, experiment_id: str) -> bool:
    row = db.execute(
        "SELECT cancelled FROM orders WHERE experiment_id = ?", (experiment_id,)
    ).fetchone()
    return bool(row and row[0])


def _queued(db: sqlite3.Connection, body: bytes) -> bool:
    row = db.execute(
        "SELECT 1 FROM outbox WHERE destination = ? AND length(body) = ? AND body = ? LIMIT 1",
        (m.HUB_INBOX, len(body), body),
    ).fetchone()
    return row is not None


def _record(
    db: sqlite3.Connection, held_id: int, state: State, at: float, operator: str,
    reason: str | None,
) -> None:  # fmt: skip
    db.execute(
        "INSERT INTO transitions (held_id, state, at, operator, reason) VALUES (?, ?, ?, ?, ?)",
        (held_id, state, at, operator, reason),
    )


def _held(row: Any) -> HeldResult:
    (held_id, spoke_id, experiment_id, participant_id, algorithm, attempt, summary, state,
     held_at, held_by, decided_at, decided_by, reason) = row  # fmt: skip
    return HeldResult(
        id=int(held_id),
        case=CaseKey(spoke_id, experiment_id, participant_id, algorithm, int(attempt)),
        summary=summary,
        state=state,
        held_at=float(held_at),
        held_by=held_by,
        decided_at=None if decided_at is None else float(decided_at),
        decided_by=decided_by,
        reason=reason,
    )


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no LOGNAME/USER and no passwd entry (some containers)
        return f"uid-{os.getuid()}"
