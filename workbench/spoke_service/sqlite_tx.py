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
    propagates; so does a refused ``COMMIT`` (a full disk).
    """
    with lock if lock is not None else nullcontext():
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.Error:
            # A COMMIT refused for a full disk (SQLITE_FULL) may leave the transaction open:
            # roll it back, or every later BEGIN fails with "within a transaction".
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
