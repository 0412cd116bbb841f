"""The effect of a batch of inbox messages on the results store, in one transaction.

``apply_batch`` checks every message (a known spoke, an existing experiment the spoke takes
part in, an algorithm of that experiment, the manifest hash and image digest it was run
with) and writes the accepted ones idempotently on their natural key:

- ``case.result``: one row per (experiment, spoke, participant, algorithm, attempt);
  a second copy is ignored (``INSERT ... ON CONFLICT DO NOTHING``). The case becomes ``done``.
- ``case.status``: the case's latest state, keyed without the attempt; a higher attempt
  wins, and within one attempt a later state (``queued < running < cancelled < failed <
  done``) wins, so a stale redelivery never moves a case backwards.
- ``experiment.accepted``: how many participants and cases the spoke planned, which is
  what the experiment's progress counts against.
- ``spoke.heartbeat`` / ``participant.manifest``: the spoke's last-seen time and counts.

Everything refused becomes a row in ``rejections``, written in the same transaction, so
the caller may ``reject()`` it to the dead-letter queue once that transaction committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from workbench.core.messages import (
    CaseResult,
    CaseStatus,
    ExperimentAccepted,
    Message,
    ParticipantManifest,
    SpokeHeartbeat,
)
from workbench.hub_kernel import tables as t

RANK = {"queued": 0, "running": 1, "cancelled": 2, "failed": 3, "done": 4}
_CASE_KEY = ("experiment_id", "spoke_id", "participant_id", "algorithm")
_RESULT_KEY = (*_CASE_KEY, "attempt")


@dataclass(frozen=True)
class Inbound:
    """One delivery on its way into the store: its parsed message, or why it did not parse."""

    message_id: str
    body_sha256: str
    body_bytes: int
    received_at: datetime
    message: Message | None = None
    problem: str | None = None
    spoke_hint: str | None = None
    type_hint: str | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class Outcome:
    """Whether a message was accepted (stored, or a harmless duplicate) and if not, why."""

    accepted: bool
    reason: str | None = None


@dataclass(frozen=True)
class ExperimentFacts:
    """What checking a message against its experiment needs (immutable once launched)."""

    manifest_hash: str
    spokes: frozenset[str]
    digests: dict[str, str]


@dataclass
class _Writes:
    spokes: dict[str, dict[str, Any]] = field(default_factory=dict)
    cases: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    accepted: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def case(self, row: dict[str, Any]) -> None:
        key = tuple(row[k] for k in _CASE_KEY)
        old = self.cases.get(key)
        if old is None or (row["attempt"], row["rank"]) > (old["attempt"], old["rank"]):
            self.cases[key] = row


def apply_batch(
    conn: Connection,
    items: Sequence[Inbound],
    known_spokes: Callable[[Connection, set[str]], set[str]],
    experiment: Callable[[Connection, str], ExperimentFacts | None],
    enrol_on_heartbeat: bool = True,
) -> list[Outcome]:
    """Check and write ``items`` inside the caller's transaction; one outcome per item."""
    named = {i.message.spoke_id for i in items if i.message is not None}
    known = known_spokes(conn, named)
    writes = _Writes()
    outcomes = []
    for item in items:
        reason = _check(conn, item, known, experiment, enrol_on_heartbeat)
        if reason is None:
            assert item.message is not None
            _collect(item, writes)
            if isinstance(item.message, SpokeHeartbeat):
                known.add(item.message.spoke_id)
            outcomes.append(Outcome(True))
        else:
            writes.rejections.append(_rejection(item, reason))
            outcomes.append(Outcome(False, reason))
    _write(conn, writes)
    return outcomes


def _check(
    conn: Connection,
    item: Inbound,
    known: set[str],
    experiment: Callable[[Connection, str], ExperimentFacts | None],
    enrol: bool,
) -> str | None:
    message = item.message
    if item.refusal is not None:
        return item.refusal
    if message is None:
        return f"malformed: {item.problem or 'unreadable'}"
    if isinstance(message, SpokeHeartbeat):
        return None if enrol or message.spoke_id in known else "unknown spoke"
    if not isinstance(message, CaseStatus | CaseResult | ParticipantManifest | ExperimentAccepted):
        return f"not a spoke-to-hub message: {message.type}"
    if message.spoke_id not in known:
        return "unknown spoke"
    if isinstance(message, ParticipantManifest):
        return None
    facts = experiment(conn, message.experiment_id)
    if facts is None:
        return "unknown experiment"
    if message.spoke_id not in facts.spokes:
        return "spoke not in experiment"
    if isinstance(message, ExperimentAccepted):
        return None
    digest = facts.digests.get(message.algorithm)
    if digest is None:
        return "algorithm not in experiment"
    if isinstance(message, CaseResult):
        if message.manifest_hash != facts.manifest_hash:
            return "manifest hash mismatch"
        if message.image_digest != digest:
            return "image digest mismatch"
    return None


def _collect(item: Inbound, writes: _Writes) -> None:
    message, now = item.message, item.received_at
    if isinstance(message, SpokeHeartbeat):
        row = writes.spokes.setdefault(message.spoke_id, {})
        row.update(
            last_heartbeat_at=now,
            heartbeat_sent_at=message.sent_at[:40],
            queued=message.queued,
            running=message.running,
            participants=message.participants,
        )
    elif isinstance(message, ParticipantManifest):
        row = writes.spokes.setdefault(message.spoke_id, {})
        row.update(
            manifest_participants=message.participants,
            manifest_series=message.series,
            manifest_instances=message.instances,
            acquisition=message.acquisition,
            manifest_at=now,
        )
    elif isinstance(message, ExperimentAccepted):
        writes.accepted[(message.experiment_id, message.spoke_id)] = {
            "accepted_at": now,
            "participants": message.participants,
            "cases": message.cases,
        }
    elif isinstance(message, CaseStatus):
        error = message.error.code.value if message.error is not None else None
        writes.case(_case_row(message, message.state, error, now))
    elif isinstance(message, CaseResult):
        writes.results.append(
            {
                "experiment_id": message.experiment_id,
                "spoke_id": message.spoke_id,
                "participant_id": message.participant_id,
                "algorithm": message.algorithm,
                "attempt": message.attempt,
                "output": message.output,
                "reference": dict(message.reference),
                "output_sha256": message.output_sha256,
                "image_digest": message.image_digest,
                "manifest_hash": message.manifest_hash,
                "seconds": message.seconds,
                "message_id": message.id,
                "received_at": now,
            }
        )
        writes.case(_case_row(message, "done", None, now))


def _case_row(
    message: CaseStatus | CaseResult, state: str, error: str | None, now: datetime
) -> dict[str, Any]:
    return {
        "experiment_id": message.experiment_id,
        "spoke_id": message.spoke_id,
        "participant_id": message.participant_id,
        "algorithm": message.algorithm,
        "attempt": message.attempt,
        "state": state,
        "rank": RANK[state],
        "error_code": error,
        "updated_at": now,
    }


def _rejection(item: Inbound, reason: str) -> dict[str, Any]:
    message = item.message
    spoke = getattr(message, "spoke_id", None) if message is not None else item.spoke_hint
    kind = message.type if message is not None else item.type_hint
    return {
        "message_id": item.message_id[:200],
        "spoke_id": spoke[: t.SPOKE] if isinstance(spoke, str) else None,
        "message_type": kind[:40] if isinstance(kind, str) else None,
        "reason": reason[:300],
        "body_sha256": item.body_sha256,
        "body_bytes": item.body_bytes,
        "received_at": item.received_at,
    }


def _write(conn: Connection, writes: _Writes) -> None:
    for spoke_id, values in writes.spokes.items():
        done = conn.execute(update(t.spokes).where(t.spokes.c.id == spoke_id).values(values))
        if done.rowcount == 0:
            first = values.get("last_heartbeat_at") or values.get("manifest_at")
            conn.execute(
                insert(t.spokes).values(id=spoke_id, allowed=False, first_seen_at=first, **values)
            )
    x = t.experiment_spokes.c
    for (experiment_id, spoke_id), values in writes.accepted.items():
        conn.execute(
            update(t.experiment_spokes)
            .where(x.experiment_id == experiment_id, x.spoke_id == spoke_id)
            .values(values)
        )
    if writes.results:
        _insert_ignore(conn, t.results, writes.results, _RESULT_KEY)
    if writes.cases:
        _upsert_cases(conn, list(writes.cases.values()))
    if writes.rejections:
        conn.execute(insert(t.rejections), writes.rejections)


def _dialect_insert(conn: Connection) -> Any:
    """The dialect's ``insert`` with ``on_conflict_*`` (SQLite, PostgreSQL), else ``None``."""
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    return None


def _insert_ignore(
    conn: Connection, table: Table, rows: list[dict[str, Any]], key: tuple[str, ...]
) -> None:
    dialect_insert = _dialect_insert(conn)
    if dialect_insert is not None:
        conn.execute(dialect_insert(table).on_conflict_do_nothing(index_elements=key), rows)
        return
    for row in rows:  # other databases: the unique constraint, one savepoint per row
        try:
            with conn.begin_nested():
                conn.execute(insert(table).values(row))
        except IntegrityError:
            pass


def _upsert_cases(conn: Connection, rows: list[dict[str, Any]]) -> None:
    table = t.case_statuses
    newer_columns = ("attempt", "state", "rank", "error_code", "updated_at")
    dialect_insert = _dialect_insert(conn)
    if dialect_insert is not None:
        stmt = dialect_insert(table)
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=_CASE_KEY,
            set_={c: new[c] for c in newer_columns},
            where=(table.c.attempt < new.attempt)
            | ((table.c.attempt == new.attempt) & (table.c.rank < new.rank)),
        )
        conn.execute(stmt, rows)
        return
    for row in rows:
        where = [table.c[k] == row[k] for k in _CASE_KEY]
        old = conn.execute(select(table.c.attempt, table.c.rank).where(*where)).first()
        if old is None:
            conn.execute(insert(table).values(row))
        elif (row["attempt"], row["rank"]) > (old.attempt, old.rank):
            conn.execute(update(table).where(*where).values({c: row[c] for c in newer_columns}))
