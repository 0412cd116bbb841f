"""One SQLite write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on error.

The spoke's databases are opened with ``isolation_level=None`` (autocommit), so every unit
of work that must be atomic goes through :func:`immediate`. ``IMMEDIATE`` takes the write
lock at the start, so two writers wait for each other (up to the connection's timeout)
instead of failing half-way with ``database is locked``.

>>> # with immediate(db, lock) as tx:
>>> #     tx.execute("INSERT INTO outbox ...")
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any


@contextmanager
def immediate(
    connection: sqlite3.Connection, lock: AbstractContextManager[Any] | None = None
) -> Iterator[sqlite3.Connection]:
    """Run the block as one transaction on ``connection``, holding ``lock`` if given.

    The lock serialises the threads that share one connection; a connection used by one
    thread only needs none. Any exception, ``KeyboardInterrupt`` included, rolls back and
    propagates.
    """
    with lock if lock is not None else nullcontext():
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
