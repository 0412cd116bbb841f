"""Many rows in one statement, through the SQLite driver itself: ingestion's hot writes.

For every row, SQLAlchemy builds a parameter dictionary and runs each value through its
type's bind processor; for a ``case.result`` (a results row and a case-status row) that
costs more than SQLite's own insert (cProfile of 5,000 results: ~40 µs of the hub's
~90 µs per message in ``ResultsStore.apply``). On SQLite, ``executemany`` therefore compiles
the statement once (SQLAlchemy still writes the SQL), converts each value by its column's
type here, the way SQLAlchemy's SQLite dialect would, and hands the rows to the driver's
``executemany``. On other databases it is ``conn.execute(statement, rows)``.

The conversions match what SQLAlchemy's SQLite dialect stores, so rows written either way
read back the same (``tests/unit/test_hub_bulk.py`` checks it column by column):

- ``JSON``: ``json.dumps`` (the dialect's default serialiser; ``None`` is JSON ``null``
  unless the type says ``none_as_null``);
- ``UtcDateTime``: naive UTC as ``YYYY-MM-DD HH:MM:SS.ffffff`` (the SQLite ``DATETIME``
  storage format);
- ``Boolean``: 0 or 1; everything else as it is.
"""

from __future__ import annotations

import functools
import json
import operator
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Connection, Table
from sqlalchemy.sql import Executable

from workbench.hub_kernel.tables import UtcDateTime

_Convert = Callable[[Any], Any]
_Compiled = tuple[str, tuple[str, ...], tuple[_Convert | None, ...]]

_cache: dict[tuple[int, tuple[str, ...]], tuple[Executable, _Compiled]] = {}
_lock = threading.Lock()


def executemany(
    conn: Connection, statement: Executable, table: Table, rows: Sequence[dict[str, Any]]
) -> None:
    """Run ``statement`` once per row of ``rows`` (each with the same keys), in ``conn``.

    ``statement`` should be built once and reused (its compiled form is cached by identity).
    """
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(statement, list(rows))
        return
    sql, names, converters = _compile(conn, statement, table, tuple(rows[0]))
    values = operator.itemgetter(*names) if len(names) > 1 else lambda row: (row[names[0]],)
    converted = [(i, convert) for i, convert in enumerate(converters) if convert is not None]
    if not converted:
        params = [values(row) for row in rows]
    else:
        params = []
        for row in rows:
            param = list(values(row))
            for i, convert in converted:
                param[i] = convert(param[i])
            params.append(tuple(param))
    conn.exec_driver_sql(sql, params)


def _compile(
    conn: Connection, statement: Executable, table: Table, keys: tuple[str, ...]
) -> _Compiled:
    key = (id(statement), keys)
    with _lock:
        held = _cache.get(key)
    if held is not None and held[0] is statement:
        return held[1]
    compiled = statement.compile(dialect=conn.dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    names = tuple(compiled.positiontup or ())
    if set(names) - set(keys):
        raise ValueError(f"the statement binds {sorted(set(names) - set(keys))} beyond the rows")
    converters = tuple(_converter(table.c[name].type) for name in names)
    result: _Compiled = (str(compiled), names, converters)
    with _lock:
        _cache[key] = (statement, result)  # the statement is kept, so its id stays its own
    return result


def _converter(column_type: Any) -> _Convert | None:
    if isinstance(column_type, UtcDateTime):
        return _datetime
    if isinstance(column_type, JSON):
        return _json_or_null if column_type.none_as_null else _json
    if isinstance(column_type, Boolean):
        return _boolean
    return None


def _datetime(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored: give a time zone")
    return _utc_text(value)


@functools.lru_cache(maxsize=1024)
def _utc_text(value: datetime) -> str:
    # Cached: a result's row and its case's row carry the same time of receipt.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _json(value: Any) -> str:
    return json.dumps(value)  # None too: JSON's null, as SQLAlchemy's JSON type stores it


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _boolean(value: bool | None) -> int | None:
    return None if value is None else int(value)
