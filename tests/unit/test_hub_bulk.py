"""``bulk.executemany`` writes on SQLite exactly what SQLAlchemy's own execution writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Boolean, Column, Float, Integer, MetaData, String, Table, insert, select
from sqlalchemy.types import JSON

from workbench.hub_kernel import bulk
from workbench.hub_kernel.database import engine_for
from workbench.hub_kernel.tables import UtcDateTime

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(40)),
    Column("doc", JSON),
    Column("at", UtcDateTime),
    Column("flag", Boolean),
    Column("score", Float),
)

ROWS = [
    {"name": "a", "doc": {"x": [1, 2.5, None], "é": "ü"}, "score": 0.25, "flag": True,
     "at": datetime(2026, 11, 28, 9, 0, 1, 123456, tzinfo=UTC)},
    {"name": "b", "doc": {"nested": {"k": True}}, "score": 1e-9, "flag": False,
     "at": datetime(2026, 11, 28, 10, 0, 0, tzinfo=timezone(timedelta(hours=2)))},
    {"name": None, "doc": None, "score": None, "flag": None, "at": None},
]  # fmt: skip


def written(tmp_path: Path, write: str) -> list[tuple[object, ...]]:
    engine = engine_for(f"sqlite:///{tmp_path / write}.sqlite")
    metadata.create_all(engine)
    with engine.begin() as conn:
        if write == "bulk":
            bulk.executemany(conn, insert(things), things, ROWS)
        else:
            conn.execute(insert(things), ROWS)
    with engine.connect() as conn:
        typed = [tuple(r) for r in conn.execute(select(things).order_by(things.c.id))]
        raw = [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM things ORDER BY id")]
    engine.dispose()
    return typed + raw


def test_bulk_rows_read_back_as_sqlalchemy_rows_do(tmp_path: Path) -> None:
    assert written(tmp_path, "bulk") == written(tmp_path, "sqlalchemy")


def test_an_aware_time_is_stored_as_utc(tmp_path: Path) -> None:
    rows = written(tmp_path, "bulk")
    assert rows[1][3] == datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)


def test_a_naive_time_is_refused_as_sqlalchemy_refuses_it(tmp_path: Path) -> None:
    engine = engine_for(f"sqlite:///{tmp_path / 'naive'}.sqlite")
    metadata.create_all(engine)
    with pytest.raises(ValueError, match="naive"), engine.begin() as conn:
        bulk.executemany(conn, insert(things), things, [{**ROWS[0], "at": datetime(2026, 1, 1)}])
    engine.dispose()
