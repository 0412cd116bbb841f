"""The results store's database: an engine from an SQLAlchemy URL, and one error wrapping.

``engine_for`` makes the engine (a SQLite file gets its folder, write-ahead logging, full
sync and a 30 s busy timeout, so the API's threads and the ingest thread can share it).
``Database`` creates the tables (and adds the nullable columns and the indexes a newer
schema has to a database made by an older one) and gives its subclass transactions whose
SQLAlchemy errors arrive as ``StoreError``: ``transient`` for a lost or refused connection
(worth retrying), not for a statement the database refuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.schema import CreateColumn

from workbench.errors import StoreError
from workbench.hub_kernel.tables import metadata

DEFAULT_URL = "sqlite:///hub.sqlite"
_MEMORY = (None, "", ":memory:")


def engine_for(url: str) -> Engine:
    """An engine for ``url`` (tables are not created here).

    Raises:
        StoreError: not a URL, an unknown dialect or driver, or a folder that cannot be made.
    """
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError) as e:
        raise StoreError(f"not a database URL: {url!r}") from e
    sqlite = parsed.get_backend_name() == "sqlite"
    try:
        if sqlite and parsed.database not in _MEMORY:
            Path(str(parsed.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": 30, "check_same_thread": False} if sqlite else {}
        engine = create_engine(parsed, connect_args=connect_args)
    except (SQLAlchemyError, ImportError, ValueError, OSError) as e:
        raise StoreError(f"cannot open the results store {parsed!r}: {e}") from e
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an ack follows the commit: it must be durable
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _upgrade(engine: Engine) -> None:
    """Add the columns and indexes ``metadata`` has and an existing database lacks.

    Only additive changes: every column added after a table's first release is nullable, so
    ``ALTER TABLE ... ADD COLUMN`` is all an older database needs (SQLite and PostgreSQL).
    """
    found = inspect(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            have = {c["name"] for c in found.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                if not column.nullable:
                    raise StoreError(
                        f"the results store's table {table.name} lacks the required column "
                        f"{column.name}: it was made by another version of the workbench"
                    )
                ddl = CreateColumn(column).compile(dialect=engine.dialect)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
            indexes = {i["name"] for i in found.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in indexes:
                    index.create(conn)


class Database:
    """An engine with the store's tables, and error-wrapped transactions."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        with self._errors():
            metadata.create_all(engine)
            _upgrade(engine)

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()

    def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers."""
        with self._read() as conn:
            conn.execute(select(1))

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (OperationalError, InterfaceError) as e:
            raise StoreError(f"results store unavailable: {e.orig}", transient=True) from e
        except DBAPIError as e:
            raise StoreError(f"results store error: {e.orig}", e.connection_invalidated) from e
        except SQLAlchemyError as e:
            raise StoreError(f"results store error: {e}") from e

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A transaction, committed when the block ends without an exception."""
        with self._errors(), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reading."""
        with self._errors(), self._engine.connect() as conn:
            yield conn
