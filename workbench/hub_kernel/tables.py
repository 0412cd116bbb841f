"""The results store's schema, in SQLAlchemy Core: one ``MetaData`` for SQLite and PostgreSQL.

::

    spokes            id | allowed | first_seen_at | last_heartbeat_at | heartbeat_sent_at
                      | queued | running | participants (heartbeat)
                      | manifest_participants | manifest_series | manifest_instances
                      | acquisition | manifest_at (participant.manifest)
                      | audit_seq | audit_head | audit_head_at | last_key_id (the latest
                      audit-chain head a result carried, and the key that signed it)
    algorithms        id | name | version | image | digest | description | output_schema
                      | args_schema | signature | registered_at  UNIQUE (name, version)
    experiments       id | study | manifest | manifest_hash | state | created_at | cancelled_at
    experiment_spokes experiment_id | spoke_id | order_message_id | order_sent_at
                      | cancel_sent_at | accepted_at | participants | cases
                      (``experiment.accepted``: the cases the spoke planned)
                                                               PK (experiment_id, spoke_id)
    case_statuses     experiment_id | spoke_id | participant_id | algorithm | attempt | state
                      | rank | error_code | updated_at
                      PK (experiment_id, spoke_id, participant_id, algorithm): latest state
    results           id | experiment_id | spoke_id | participant_id | algorithm | attempt
                      | output | reference | output_sha256 | image_digest | manifest_hash
                      | seconds | message_id | signer_key_id | audit_head | received_at
                      UNIQUE (experiment_id, spoke_id, participant_id, algorithm, attempt)
    rejections        id | message_id | spoke_id | message_type | experiment_id | code
                      | reason | key_id | body_sha256 | body_bytes | received_at

Columns added after a table was first created are nullable, so ``database.py`` can add them
to an existing database (``ALTER TABLE ... ADD COLUMN``) when it opens it.

Times are stored as naive UTC and read back as aware UTC (``UtcDateTime``), so that SQLite
(which has no time zones) and PostgreSQL behave the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

SPOKE = 63
NAME = 128
HASH = 64
DIGEST = 71
KEY_ID = 16
HEAD = 90  # an audit-chain head, "SEQ:HASH"


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and returned as an aware UTC ``datetime``."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: give a time zone")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


metadata = MetaData()

spokes = Table(
    "spokes",
    metadata,
    Column("id", String(SPOKE), primary_key=True),
    Column("allowed", Boolean, nullable=False, default=False),
    Column("first_seen_at", UtcDateTime),
    Column("last_heartbeat_at", UtcDateTime),
    Column("heartbeat_sent_at", String(40)),
    Column("queued", Integer),
    Column("running", Integer),
    Column("participants", Integer),
    Column("manifest_participants", Integer),
    Column("manifest_series", Integer),
    Column("manifest_instances", Integer),
    Column("acquisition", JSON),
    Column("manifest_at", UtcDateTime),
    Column("audit_seq", BigInteger),
    Column("audit_head", String(HEAD)),
    Column("audit_head_at", UtcDateTime),
    Column("last_key_id", String(KEY_ID)),
)

algorithms = Table(
    "algorithms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(NAME), nullable=False),
    Column("version", String(NAME), nullable=False),
    Column("image", String(512), nullable=False),
    Column("digest", String(DIGEST), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("output_schema", JSON, nullable=False),
    Column("args_schema", JSON),
    Column("signature", JSON),
    Column("registered_at", UtcDateTime, nullable=False),
    UniqueConstraint("name", "version", name="algorithms_name_version"),
)

experiments = Table(
    "experiments",
    metadata,
    Column("id", String(NAME), primary_key=True),
    Column("study", String(NAME), nullable=False),
    Column("manifest", JSON, nullable=False),
    Column("manifest_hash", String(HASH), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("cancelled_at", UtcDateTime),
)

experiment_spokes = Table(
    "experiment_spokes",
    metadata,
    Column("experiment_id", String(NAME), ForeignKey("experiments.id"), primary_key=True),
    Column("spoke_id", String(SPOKE), primary_key=True),
    Column("order_message_id", String(64), nullable=False),
    Column("order_sent_at", UtcDateTime),
    Column("cancel_sent_at", UtcDateTime),
    Column("accepted_at", UtcDateTime),
    Column("participants", Integer),
    Column("cases", Integer),
)

case_statuses = Table(
    "case_statuses",
    metadata,
    Column("experiment_id", String(NAME), ForeignKey("experiments.id"), primary_key=True),
    Column("spoke_id", String(SPOKE), primary_key=True),
    Column("participant_id", String(NAME), primary_key=True),
    Column("algorithm", String(NAME), primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("error_code", String(40)),
    Column("updated_at", UtcDateTime, nullable=False),
    # Progress counts read only this index (a covering index for GROUP BY spoke, state).
    Index("case_statuses_progress", "experiment_id", "spoke_id", "state", "error_code"),
)

results = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment_id", String(NAME), ForeignKey("experiments.id"), nullable=False),
    Column("spoke_id", String(SPOKE), nullable=False),
    Column("participant_id", String(NAME), nullable=False),
    Column("algorithm", String(NAME), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("output", JSON, nullable=False),
    Column("reference", JSON, nullable=False),
    Column("output_sha256", String(HASH), nullable=False),
    Column("image_digest", String(DIGEST), nullable=False),
    Column("manifest_hash", String(HASH), nullable=False),
    Column("seconds", Float, nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("signer_key_id", String(KEY_ID)),
    Column("audit_head", String(HEAD)),
    Column("received_at", UtcDateTime, nullable=False),
    # Replay detection looks results up by message id, one batch at a time.
    Index("results_message_id", "message_id"),
    UniqueConstraint(
        "experiment_id",
        "spoke_id",
        "participant_id",
        "algorithm",
        "attempt",
        name="results_natural_key",
    ),
)

rejections = Table(
    "rejections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(200), nullable=False),
    Column("spoke_id", String(SPOKE)),
    Column("message_type", String(40)),
    Column("experiment_id", String(NAME)),
    Column("code", String(40)),
    Column("reason", String(300), nullable=False),
    Column("key_id", String(KEY_ID)),
    Column("body_sha256", String(HASH), nullable=False),
    Column("body_bytes", Integer, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Index("rejections_by_experiment", "experiment_id", "code"),
)
