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

A result also records the key id that signed it and the spoke's audit-chain head it
carried; the spoke's row keeps the head with the highest sequence number (``GET /spokes``).

Everything refused becomes a row in ``rejections`` with a reason code, written in the same
transaction, so the caller may ``reject()`` it to the dead-letter queue once that
transaction committed. The codes (``CODES``)::

    unsigned          no signature header                      } checked by ingest.py on
    malformed         a garbled signature, or not a message    } the delivery thread,
    unknown_key       signed by a key the hub does not trust   } before the body is
    wrong_signer      signed by another spoke's key            } parsed (wrong_signer:
    bad_signature     forged, or the content was altered       } once it is)
    replayed          a result whose message id was committed already (acknowledged: harmless)
    wrong_direction   a hub-to-spoke message on the inbox
    unknown_spoke / unknown_experiment / spoke_not_in_experiment / algorithm_not_in_experiment
    manifest_mismatch / image_mismatch   a result not computed with the experiment's frozen
                      manifest or pinned image
    after_deadline    a result the hub received (its own clock: ``received_at``) after the
                      experiment's deadline; the spoke's clock is never consulted
    experiment_cancelled  a result the hub received after the experiment was cancelled
                      (statuses still count: a spoke reports its cases ``cancelled``)
    store_refused     the database refused the message's values
"""

from __future__ import annotations

import functools
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
    ExperimentOrder,
    Message,
    ParticipantManifest,
    SpokeHeartbeat,
)
from workbench.hub_kernel import bulk
from workbench.hub_kernel import tables as t

RANK = {"queued": 0, "running": 1, "cancelled": 2, "failed": 3, "done": 4}
_CASE_KEY = ("experiment_id", "spoke_id", "participant_id", "algorithm")
_RESULT_KEY = (*_CASE_KEY, "attempt")
_NEWER_COLUMNS = ("attempt", "state", "rank", "error_code", "updated_at")
_MAX_SEQ = 2**62
_ID_CHUNK = 500

CODES = {
    "unsigned": "the message carries no signature",
    "malformed": "a garbled signature, or bytes that are not a valid message",
    "unknown_key": "signed by a key the hub does not trust",
    "wrong_signer": "signed by a trusted key of another spoke than the one the message names",
    "bad_signature": "the signature does not match the body: forged or altered",
    "replayed": "a result whose message id was committed already (acknowledged)",
    "wrong_direction": "a hub-to-spoke message on the hub's inbox",
    "unknown_spoke": "from a spoke neither allow-listed nor enrolled",
    "unknown_experiment": "names no experiment of this hub",
    "spoke_not_in_experiment": "from a spoke the experiment does not include",
    "algorithm_not_in_experiment": "names an algorithm the experiment does not run",
    "manifest_mismatch": "computed under another manifest than the experiment's",
    "image_mismatch": "computed with another image than the experiment pinned",
    "after_deadline": "a result received after the experiment's deadline (hub clock)",
    "experiment_cancelled": "a result received after the experiment was cancelled",
    "store_refused": "the database refused the message's values",
}


@dataclass(frozen=True)
class Inbound:
    """One delivery on its way into the store: its verified, parsed message, or why not.

    ``refusal`` (with its ``code``) is set when the message was refused before the store saw
    it (its signature) or by the store itself; ``problem`` when the bytes are not a message.
    ``signer_key_id`` is the key whose signature verified; the hints are what a refused
    message claimed, for its rejection record.
    """

    message_id: str
    body_sha256: str
    body_bytes: int
    received_at: datetime
    message: Message | None = None
    problem: str | None = None
    spoke_hint: str | None = None
    type_hint: str | None = None
    refusal: str | None = None
    code: str | None = None
    signer_key_id: str | None = None
    experiment_hint: str | None = None
    key_hint: str | None = None
    id_hint: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of a message: ``accepted`` means acknowledge it.

    An accepted message was stored, or is a harmless duplicate; a replay is accepted too,
    but recorded as a rejection (``code`` ``replayed``). A message not accepted goes to the
    dead-letter queue; ``code`` and ``reason`` say why.
    """

    accepted: bool
    reason: str | None = None
    code: str | None = None

    @property
    def recorded(self) -> bool:
        """Whether the message has a row in ``rejections`` (refused, or a replay)."""
        return self.code is not None


@dataclass(frozen=True)
class ExperimentFacts:
    """What checking a message against its experiment needs.

    Fixed at launch, except ``cancelled_at``, which the store refreshes when it cancels.
    """

    manifest_hash: str
    spokes: frozenset[str]
    digests: dict[str, str]
    deadline: datetime | None = None
    cancelled_at: datetime | None = None


@dataclass
class _Writes:
    spokes: dict[str, dict[str, Any]] = field(default_factory=dict)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
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
    committed = _committed_results(conn, items)
    writes = _Writes()
    outcomes = []
    for item in items:
        refused = _check(conn, item, known, experiment, enrol_on_heartbeat)
        message = item.message
        if refused is None and isinstance(message, CaseResult):
            if (message.id, message.spoke_id) in committed:
                refused = ("replayed", f"replayed: result {message.id} was committed already")
            committed.add((message.id, message.spoke_id))
        if refused is None:
            assert message is not None
            facts = None
            if isinstance(message, CaseStatus):
                facts = experiment(conn, message.experiment_id)
            _collect(item, writes, facts)
            if isinstance(message, SpokeHeartbeat):
                known.add(message.spoke_id)
            outcomes.append(Outcome(True))
        else:
            code, reason = refused
            writes.rejections.append(_rejection(item, code, reason))
            outcomes.append(Outcome(code == "replayed", reason, code))
    _write(conn, writes)
    return outcomes


def _committed_results(conn: Connection, items: Sequence[Inbound]) -> set[tuple[str, str]]:
    """``(message id, spoke)`` of the batch's results that are stored already."""
    ids = sorted({i.message.id for i in items if isinstance(i.message, CaseResult)})
    r = t.results.c
    found: set[tuple[str, str]] = set()
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        if conn.dialect.name == "sqlite":  # the driver's own query: SQLAlchemy's costs more
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT message_id, spoke_id FROM results WHERE message_id IN ({marks})"
            found.update((row[0], row[1]) for row in conn.exec_driver_sql(sql, tuple(chunk)))
            continue
        rows = conn.execute(select(r.message_id, r.spoke_id).where(r.message_id.in_(chunk)))
        found.update((row.message_id, row.spoke_id) for row in rows)
    return found


def _check(
    conn: Connection,
    item: Inbound,
    known: set[str],
    experiment: Callable[[Connection, str], ExperimentFacts | None],
    enrol: bool,
) -> tuple[str, str] | None:
    """``(code, reason)`` if ``item`` is refused, else ``None``."""
    message = item.message
    if item.refusal is not None:
        return item.code or "store_refused", item.refusal
    if message is None:
        return "malformed", f"malformed: {item.problem or 'unreadable'}"
    if isinstance(message, SpokeHeartbeat):
        return None if enrol or message.spoke_id in known else ("unknown_spoke", "unknown spoke")
    if not isinstance(message, CaseStatus | CaseResult | ParticipantManifest | ExperimentAccepted):
        return "wrong_direction", f"not a spoke-to-hub message: {message.type}"
    if message.spoke_id not in known:
        return "unknown_spoke", "unknown spoke"
    if isinstance(message, ParticipantManifest):
        return None
    facts = experiment(conn, message.experiment_id)
    if facts is None:
        return "unknown_experiment", "unknown experiment"
    if message.spoke_id not in facts.spokes:
        return "spoke_not_in_experiment", "spoke not in experiment"
    if isinstance(message, ExperimentAccepted):
        return None
    digest = facts.digests.get(message.algorithm)
    if digest is None:
        return "algorithm_not_in_experiment", "algorithm not in experiment"
    if isinstance(message, CaseResult):
        if message.manifest_hash != facts.manifest_hash:
            return "manifest_mismatch", "manifest hash mismatch"
        if message.image_digest != digest:
            return "image_mismatch", "image digest mismatch"
        if facts.cancelled_at is not None and item.received_at >= facts.cancelled_at:
            when = facts.cancelled_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            return "experiment_cancelled", f"received after the experiment was cancelled at {when}"
        if facts.deadline is not None and item.received_at > facts.deadline:
            when = facts.deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
            return "after_deadline", f"received after the deadline {when} (hub clock)"
        if message.audit_head is not None and _head_seq(message.audit_head) is None:
            return "malformed", "malformed: the audit head is out of range"
    return None


def _head_seq(head: str) -> int | None:
    """The sequence number of a ``SEQ:HASH`` head the store can hold, else ``None``."""
    seq = head.partition(":")[0]
    if len(head) > t.HEAD or not seq.isdigit() or int(seq) > _MAX_SEQ:
        return None
    return int(seq)


def _collect(item: Inbound, writes: _Writes, facts: ExperimentFacts | None = None) -> None:
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
        state = message.state
        late = facts is not None and facts.deadline is not None and now > facts.deadline
        if state == "done" and late:
            # Its result came after the deadline too (and was refused): the case did not
            # deliver in time. A result that did arrive in time keeps its case done
            # (``done`` outranks ``failed`` within an attempt).
            state, error = "failed", "DEADLINE_PASSED"
        writes.case(_case_row(message, state, error, now))
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
                "signer_key_id": item.signer_key_id,
                "audit_head": message.audit_head,
                "received_at": now,
            }
        )
        writes.case(_case_row(message, "done", None, now))
        seq = _head_seq(message.audit_head) if message.audit_head is not None else None
        held = writes.heads.get(message.spoke_id)
        if seq is not None and (held is None or seq > held["audit_seq"]):
            writes.heads[message.spoke_id] = {
                "audit_seq": seq, "audit_head": message.audit_head, "audit_head_at": now,
                "last_key_id": item.signer_key_id,
            }  # fmt: skip


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


def _rejection(item: Inbound, code: str, reason: str) -> dict[str, Any]:
    message = item.message
    spoke = getattr(message, "spoke_id", None) if message is not None else item.spoke_hint
    kind = message.type if message is not None else item.type_hint
    experiment_id = _experiment_of(message) if message is not None else item.experiment_hint
    key_id = item.signer_key_id or item.key_hint
    return {
        "message_id": _text(item.message_id)[:200],
        "spoke_id": _text(spoke)[: t.SPOKE] if isinstance(spoke, str) else None,
        "message_type": _text(kind)[:40] if isinstance(kind, str) else None,
        "experiment_id": _text(experiment_id)[: t.NAME] if isinstance(experiment_id, str) else None,
        "code": code,
        "reason": _text(reason)[:300],
        "key_id": key_id[: t.KEY_ID] if isinstance(key_id, str) else None,
        "body_sha256": item.body_sha256,
        "body_bytes": item.body_bytes,
        "received_at": item.received_at,
    }


def _text(value: str) -> str:
    # What a refused message claims is unchecked: PostgreSQL text refuses NUL, and one
    # rejection row that cannot be written would block every batch behind it.
    return value.replace("\x00", "\ufffd")


def _experiment_of(message: Message) -> str | None:
    if isinstance(message, ExperimentOrder):
        return message.manifest.experiment_id
    found = getattr(message, "experiment_id", None)
    return found if isinstance(found, str) else None


def _write(conn: Connection, writes: _Writes) -> None:
    for spoke_id, values in writes.spokes.items():
        done = conn.execute(update(t.spokes).where(t.spokes.c.id == spoke_id).values(values))
        if done.rowcount == 0:
            first = values.get("last_heartbeat_at") or values.get("manifest_at")
            conn.execute(
                insert(t.spokes).values(id=spoke_id, allowed=False, first_seen_at=first, **values)
            )
    s = t.spokes.c
    for spoke_id, head in writes.heads.items():  # only ever forward: a late copy is older
        conn.execute(
            update(t.spokes)
            .where(s.id == spoke_id, s.audit_seq.is_(None) | (s.audit_seq < head["audit_seq"]))
            .values(head)
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


@functools.cache
def _insert_ignore_statement(dialect_insert: Any, table: Table, key: tuple[str, ...]) -> Any:
    """``INSERT ... ON CONFLICT (key) DO NOTHING``, built once (``bulk`` caches it compiled)."""
    return dialect_insert(table).on_conflict_do_nothing(index_elements=key)


@functools.cache
def _upsert_cases_statement(dialect_insert: Any) -> Any:
    """A case's state: a higher attempt, or a later state of the same attempt, wins."""
    table = t.case_statuses
    stmt = dialect_insert(table)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=_CASE_KEY,
        set_={c: new[c] for c in _NEWER_COLUMNS},
        where=(table.c.attempt < new.attempt)
        | ((table.c.attempt == new.attempt) & (table.c.rank < new.rank)),
    )


def _insert_ignore(
    conn: Connection, table: Table, rows: list[dict[str, Any]], key: tuple[str, ...]
) -> None:
    dialect_insert = _dialect_insert(conn)
    if dialect_insert is not None:
        bulk.executemany(conn, _insert_ignore_statement(dialect_insert, table, key), table, rows)
        return
    for row in rows:  # other databases: the unique constraint, one savepoint per row
        try:
            with conn.begin_nested():
                conn.execute(insert(table).values(row))
        except IntegrityError:
            pass


def _upsert_cases(conn: Connection, rows: list[dict[str, Any]]) -> None:
    table = t.case_statuses
    dialect_insert = _dialect_insert(conn)
    if dialect_insert is not None:
        bulk.executemany(conn, _upsert_cases_statement(dialect_insert), table, rows)
        return
    for row in rows:
        where = [table.c[k] == row[k] for k in _CASE_KEY]
        old = conn.execute(select(table.c.attempt, table.c.rank).where(*where)).first()
        if old is None:
            conn.execute(insert(table).values(row))
        elif (row["attempt"], row["rank"]) > (old.attempt, old.rank):
            conn.execute(update(table).where(*where).values({c: row[c] for c in _NEWER_COLUMNS}))
