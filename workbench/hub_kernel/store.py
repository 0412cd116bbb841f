"""``ResultsStore``: the hub's database through SQLAlchemy 2 (SQLite by default, or any URL).

The store holds spokes, registered algorithms, experiments, the latest state of every case,
received results and rejected messages (schema in ``tables.py``). Progress is counted with
SQL aggregates over an index, never by loading results; ``iter_results`` streams.

Database errors are wrapped once (``database.py``) into ``StoreError``; ``transient`` is
set for a lost or refused connection, which the ingest loop retries.

>>> store = ResultsStore.open("sqlite:///hub.sqlite")      # doctest: +SKIP
>>> store.allow_spokes(["site-01"])                         # doctest: +SKIP
>>> store.results_frame("exp-20260101-ab12cd").shape         # doctest: +SKIP
(1200, 17)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from workbench.core.deadline import DeadlineError, parse_utc
from workbench.core.messages import Manifest
from workbench.errors import ConflictError, StoreError
from workbench.hub_kernel import tables as t
from workbench.hub_kernel.database import DEFAULT_URL, Database, engine_for
from workbench.hub_kernel.effects import ExperimentFacts, Inbound, Outcome, apply_batch
from workbench.hub_kernel.models import (
    Algorithm,
    AlgorithmSpec,
    ExperimentRecord,
    Rejection,
    ResultRow,
    SpokeProgress,
    SpokeRecord,
)
from workbench.hub_kernel.results import to_frame

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_URL", "ResultsStore"]

_STATES = ("queued", "running", "done", "failed", "cancelled")


class ResultsStore(Database):
    """The hub's database. Safe to share between threads (one connection pool)."""

    def __init__(self, engine: Engine, enrol_on_heartbeat: bool = True) -> None:
        super().__init__(engine)
        self.enrol_on_heartbeat = enrol_on_heartbeat
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._facts: dict[str, ExperimentFacts] = {}

    @classmethod
    def open(cls, url: str = DEFAULT_URL, enrol_on_heartbeat: bool = True) -> ResultsStore:
        """Open (creating tables if needed) the database at an SQLAlchemy ``url``.

        Raises:
            StoreError: not a usable URL, or the database cannot be reached.
        """
        return cls(engine_for(url), enrol_on_heartbeat)

    # -- spokes ----------------------------------------------------------------------------

    def allow_spokes(self, spoke_ids: Iterable[str]) -> None:
        """Add spokes to the allow-list (they are known before their first heartbeat)."""
        with self._begin() as conn:
            for spoke_id in spoke_ids:
                done = conn.execute(
                    update(t.spokes).where(t.spokes.c.id == spoke_id).values(allowed=True)
                )
                if done.rowcount == 0:
                    conn.execute(insert(t.spokes).values(id=spoke_id, allowed=True))

    def known_spokes(self, conn: Connection, spoke_ids: set[str]) -> set[str]:
        """Those of ``spoke_ids`` the hub knows (allow-listed or seen)."""
        with self._lock:
            known = spoke_ids & self._known
        missing = spoke_ids - known
        if missing:
            found = set(conn.scalars(select(t.spokes.c.id).where(t.spokes.c.id.in_(missing))))
            with self._lock:
                self._known |= found
            known |= found
        return known

    def is_known_spoke(self, spoke_id: str) -> bool:
        """Whether ``spoke_id`` is allow-listed or has sent a heartbeat."""
        with self._read() as conn:
            return bool(self.known_spokes(conn, {spoke_id}))

    def spokes(self) -> list[SpokeRecord]:
        """Every known spoke with its last heartbeat and catalog counts, by id."""
        s = t.spokes.c
        with self._read() as conn:
            rows = conn.execute(select(t.spokes).order_by(s.id)).mappings().all()
        return [
            SpokeRecord(
                spoke_id=r["id"],
                allowed=bool(r["allowed"]),
                first_seen_at=r["first_seen_at"],
                last_heartbeat_at=r["last_heartbeat_at"],
                heartbeat_sent_at=r["heartbeat_sent_at"],
                queued=r["queued"],
                running=r["running"],
                participants=r["manifest_participants"],
                series=r["manifest_series"],
                instances=r["manifest_instances"],
                manifest_at=r["manifest_at"],
                audit_head=r["audit_head"],
                audit_head_at=r["audit_head_at"],
                last_key_id=r["last_key_id"],
                clock_skew_s=_skew(r["heartbeat_sent_at"], r["last_heartbeat_at"]),
            )
            for r in rows
        ]

    # -- algorithms ------------------------------------------------------------------------

    def add_algorithm(self, spec: AlgorithmSpec) -> tuple[Algorithm, bool]:
        """Register ``spec``; returns the record and whether it is new.

        The same name, version and digest registered again with an image signature sets
        that signature (a re-signed image); without one, it leaves the stored one.

        Raises:
            ConflictError: the name and version are registered with another digest.
        """
        existing = self.algorithms(spec.name, spec.version)
        if not existing:
            row = {**spec.model_dump(), "registered_at": t.utcnow()}
            try:
                with self._begin() as conn:
                    conn.execute(insert(t.algorithms).values(row))
                return Algorithm(**row), True
            except StoreError as e:
                if not isinstance(e.__cause__, IntegrityError):
                    raise
                existing = self.algorithms(spec.name, spec.version)  # registered meanwhile
        found = existing[0]
        if found.digest != spec.digest:
            raise ConflictError(
                f"{spec.name}:{spec.version} is registered with digest {found.digest}, "
                f"not {spec.digest}: give the new image a new version",
                code="algorithm_conflict",
            )
        if spec.signature is not None and spec.signature != found.signature:
            a = t.algorithms.c
            with self._begin() as conn:
                conn.execute(
                    update(t.algorithms)
                    .where(a.name == spec.name, a.version == spec.version)
                    .values(signature=spec.signature)
                )
            log.info("image signature of %s:%s replaced", spec.name, spec.version)
            found = found.model_copy(update={"signature": spec.signature})
        return found, False

    def algorithms(self, name: str | None = None, version: str | None = None) -> list[Algorithm]:
        """Registered algorithms (all, one name's versions, or one version), oldest first."""
        a = t.algorithms.c
        query = select(t.algorithms).order_by(a.name, a.registered_at, a.id)
        if name is not None:
            query = query.where(a.name == name)
        if version is not None:
            query = query.where(a.version == version)
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        fields = set(Algorithm.model_fields)
        return [Algorithm(**{k: v for k, v in r.items() if k in fields}) for r in rows]

    # -- experiments -----------------------------------------------------------------------

    def add_experiment(self, manifest: Manifest, digest: str, order_ids: dict[str, str]) -> None:
        """Store a frozen manifest and one pending order (by message id) per spoke."""
        with self._begin() as conn:
            conn.execute(
                insert(t.experiments).values(
                    id=manifest.experiment_id,
                    study=manifest.study,
                    manifest=manifest.model_dump(mode="json"),
                    manifest_hash=digest,
                    state="running",
                    created_at=t.utcnow(),
                )
            )
            conn.execute(
                insert(t.experiment_spokes),
                [
                    {"experiment_id": manifest.experiment_id, "spoke_id": s, "order_message_id": m}
                    for s, m in order_ids.items()
                ],
            )

    def experiment(self, experiment_id: str) -> ExperimentRecord | None:
        """One experiment, or ``None``."""
        found = self._experiments(t.experiments.c.id == experiment_id)
        return found[0] if found else None

    def experiments(self) -> list[ExperimentRecord]:
        """Every experiment, newest first."""
        return self._experiments(None)

    def _experiments(self, where: Any) -> list[ExperimentRecord]:
        e = t.experiments.c
        query = select(t.experiments).order_by(e.created_at.desc(), e.id)
        if where is not None:
            query = query.where(where)
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            ExperimentRecord(
                experiment_id=r["id"],
                study=r["study"],
                manifest=Manifest.model_validate(r["manifest"]),
                manifest_hash=r["manifest_hash"],
                created_at=r["created_at"],
                cancelled_at=r["cancelled_at"],
            )
            for r in rows
        ]

    def experiment_facts(self, conn: Connection, experiment_id: str) -> ExperimentFacts | None:
        """The immutable facts ingestion checks a message against (cached)."""
        with self._lock:
            facts = self._facts.get(experiment_id)
        if facts is not None:
            return facts
        e = t.experiments.c
        row = conn.execute(
            select(e.manifest, e.manifest_hash, e.cancelled_at).where(e.id == experiment_id)
        ).first()
        if row is None:
            return None
        manifest = Manifest.model_validate(row.manifest)
        facts = ExperimentFacts(
            manifest_hash=row.manifest_hash,
            spokes=frozenset(manifest.spokes),
            digests={a.name: a.digest for a in manifest.algorithms},
            deadline=parse_utc(manifest.deadline) if manifest.deadline else None,
            cancelled_at=row.cancelled_at,
        )
        with self._lock:
            self._facts[experiment_id] = facts
        return facts

    def pending_orders(self) -> list[tuple[str, str]]:
        """``(experiment_id, spoke_id)`` of orders stored but not yet confirmed sent."""
        x, e = t.experiment_spokes.c, t.experiments.c
        return self._unsent(x.order_sent_at.is_(None), e.cancelled_at.is_(None))

    def pending_cancels(self) -> list[tuple[str, str]]:
        """``(experiment_id, spoke_id)`` of cancels decided but not yet confirmed sent."""
        x, e = t.experiment_spokes.c, t.experiments.c
        return self._unsent(x.cancel_sent_at.is_(None), e.cancelled_at.is_not(None))

    def _unsent(self, *where: Any) -> list[tuple[str, str]]:
        """``(experiment_id, spoke_id)`` pairs matching ``where``, oldest experiment first."""
        x, e = t.experiment_spokes.c, t.experiments.c
        query = (
            select(x.experiment_id, x.spoke_id)
            .join(t.experiments, e.id == x.experiment_id)
            .where(*where)
            .order_by(e.created_at, x.spoke_id)
        )
        with self._read() as conn:
            return [(r.experiment_id, r.spoke_id) for r in conn.execute(query)]

    def order_message_id(self, experiment_id: str, spoke_id: str) -> str:
        """The message id the order to ``spoke_id`` was (or will be) sent with."""
        x = t.experiment_spokes.c
        with self._read() as conn:
            found = conn.scalar(
                select(x.order_message_id).where(
                    x.experiment_id == experiment_id, x.spoke_id == spoke_id
                )
            )
        if found is None:
            raise StoreError(f"no order of {experiment_id} for {spoke_id}")
        return str(found)

    def mark_sent(self, experiment_id: str, spoke_id: str, what: str) -> None:
        """Record that the broker confirmed the ``order`` or ``cancel`` to one spoke."""
        column = {"order": "order_sent_at", "cancel": "cancel_sent_at"}[what]
        x = t.experiment_spokes.c
        with self._begin() as conn:
            conn.execute(
                update(t.experiment_spokes)
                .where(x.experiment_id == experiment_id, x.spoke_id == spoke_id)
                .values({column: t.utcnow()})
            )

    def mark_cancelled(self, experiment_id: str) -> list[str]:
        """Mark an experiment cancelled (once); returns the spokes still owed a cancel."""
        e, x = t.experiments.c, t.experiment_spokes.c
        with self._begin() as conn:
            conn.execute(
                update(t.experiments)
                .where(e.id == experiment_id, e.cancelled_at.is_(None))
                .values(state="cancelled", cancelled_at=t.utcnow())
            )
            owed = list(
                conn.scalars(
                    select(x.spoke_id)
                    .where(x.experiment_id == experiment_id, x.cancel_sent_at.is_(None))
                    .order_by(x.spoke_id)
                )
            )
        with self._lock:
            self._facts.pop(experiment_id, None)  # read again, with its cancelled_at
        return owed

    # -- progress and results --------------------------------------------------------------

    def progress(self, experiment_id: str) -> list[SpokeProgress]:
        """Per-spoke counts of case states, error codes and results (SQL aggregates)."""
        c, r, x = t.case_statuses.c, t.results.c, t.experiment_spokes.c
        with self._read() as conn:
            spokes = conn.execute(
                select(x.spoke_id, x.order_sent_at, x.accepted_at, x.participants, x.cases)
                .where(x.experiment_id == experiment_id)
                .order_by(x.spoke_id)
            ).all()
            states = conn.execute(
                select(c.spoke_id, c.state, c.error_code, func.count())
                .where(c.experiment_id == experiment_id)
                .group_by(c.spoke_id, c.state, c.error_code)
            ).all()
            results: dict[str, tuple[int, int]] = {
                spoke_id: (n, verified)
                for spoke_id, n, verified in conn.execute(
                    select(r.spoke_id, func.count(), func.count(r.signer_key_id))
                    .where(r.experiment_id == experiment_id)
                    .group_by(r.spoke_id)
                )
            }
        counts: dict[str, dict[str, Any]] = {}
        for spoke_id, state, error_code, n in states:
            entry = counts.setdefault(spoke_id, {"errors": {}})
            entry[state] = entry.get(state, 0) + n
            if error_code is not None:
                entry["errors"][error_code] = entry["errors"].get(error_code, 0) + n
        out = []
        for spoke_id, sent_at, accepted_at, participants, cases in spokes:
            entry = counts.get(spoke_id, {"errors": {}})
            reported = sum(entry.get(s, 0) for s in _STATES) if spoke_id in counts else None
            out.append(
                SpokeProgress(
                    spoke_id=spoke_id, order_sent=sent_at is not None,
                    accepted=accepted_at is not None, participants=participants,
                    expected=cases if accepted_at is not None else reported,
                    results=results.get(spoke_id, (0, 0))[0],
                    results_verified=results.get(spoke_id, (0, 0))[1], **entry,
                )
            )  # fmt: skip
        return out

    def iter_results(
        self, experiment_id: str, after: int = 0, limit: int | None = None
    ) -> Iterator[tuple[int, ResultRow]]:
        """``(row id, result)`` in arrival order after row id ``after``, streamed."""
        r = t.results.c
        query = (
            select(
                r.id,
                r.experiment_id,
                r.spoke_id,
                r.participant_id,
                r.algorithm,
                r.attempt,
                r.output,
                r.reference,
                r.output_sha256,
                r.image_digest,
                r.received_at,
            )
            .where(r.experiment_id == experiment_id, r.id > after)
            .order_by(r.id)
            .limit(limit)
        )
        with self._read() as conn:
            for row in conn.execution_options(yield_per=2000).execute(query).mappings():
                values = dict(row)
                yield values.pop("id"), ResultRow(**values)

    def results_frame(self, experiment_id: str) -> Any:
        """A ``pandas.DataFrame`` with one row per result, ``output.<key>`` and
        ``reference.<key>`` columns (see ``workbench.hub_kernel.results``)."""
        return to_frame(row.model_dump() for _, row in self.iter_results(experiment_id))

    def result_count(self, experiment_id: str) -> int:
        """How many results an experiment has received."""
        with self._read() as conn:
            n = conn.scalar(
                select(func.count())
                .select_from(t.results)
                .where(t.results.c.experiment_id == experiment_id)
            )
        return int(n or 0)

    # -- ingestion -------------------------------------------------------------------------

    def apply(self, items: Sequence[Inbound]) -> list[Outcome]:
        """Check and write a batch of inbox messages in one transaction (see ``effects``).

        Raises:
            StoreError: nothing of the batch was written (``transient`` if worth retrying).
        """
        with self._begin() as conn:
            return apply_batch(
                conn, items, self.known_spokes, self.experiment_facts, self.enrol_on_heartbeat
            )

    def rejections(
        self, limit: int = 100, experiment_id: str | None = None, code: str | None = None
    ) -> list[Rejection]:
        """The latest rejected messages (of one experiment, with one code), newest first."""
        j = t.rejections.c
        query = select(t.rejections).order_by(j.id.desc()).limit(limit)
        if experiment_id is not None:
            query = query.where(j.experiment_id == experiment_id)
        if code is not None:
            query = query.where(j.code == code)
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [Rejection(**dict(r)) for r in rows]

    def rejection_counts(self, experiment_id: str) -> dict[str, int]:
        """How many messages of one experiment were refused, by reason code."""
        j = t.rejections.c
        query = (
            select(j.code, func.count())
            .where(j.experiment_id == experiment_id)
            .group_by(j.code)
            .order_by(j.code)
        )
        with self._read() as conn:
            return {str(code or "unclassified"): int(n) for code, n in conn.execute(query)}


def _skew(sent_at: str | None, received_at: datetime | None) -> float | None:
    """The spoke's clock minus the hub's: a heartbeat's ``sent_at`` against its receipt.

    Both come from the same heartbeat (they are written together). Transit and outbox delay
    make the figure read low; a ``sent_at`` that is not a timestamp with a zone gives
    ``None``. For display only: no decision uses a spoke's clock.
    """
    if sent_at is None or received_at is None:
        return None
    try:
        sent = parse_utc(sent_at)
    except DeadlineError:
        return None
    return round((sent - received_at).total_seconds(), 3)
