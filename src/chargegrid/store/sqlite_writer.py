"""A thread of its own with a SQLite connection of its own: a whole transaction in one hop.

Through SQLAlchemy's async adaptation of aiosqlite a group commit of meter values made about
seven trips between the event loop and aiosqlite's thread (cursor, BEGIN, its fetch and close,
the insert, COMMIT, the pool's rollback on return). Each trip waits for the thread to get the
GIL and then for the event loop to come round to the answer: under load, with hundreds of
charge points' messages between two turns of the loop, 80-100 ms per commit of a few hundred
messages, most of it waiting. Here ``BEGIN IMMEDIATE``, the work and ``COMMIT`` run as one
function in this writer's thread: one trip per batch (docs/architecture.md).

Only the group commit's common case uses it (store/group_commit.py, metering/rollups.py): a
batch of nothing but meter values when no rollup merge is due. Everything else keeps SQLAlchemy.
The connection is configured exactly as the engine's (store/database.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.engine import make_url

from chargegrid.store.database import configure_sqlite_connection

T = TypeVar("T")


class Abandon(Exception):
    """Raised by the work to roll its transaction back quietly."""


def database_path(url: str) -> str | None:
    """The file behind a SQLite URL; None for anything else (a second connection to an
    in-memory database would open a different, empty one)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    database = parsed.database
    if not database or database == ":memory:" or parsed.query.get("mode") == "memory":
        return None
    return database


class SqliteWriter:
    """Runs ``work(connection)`` inside ``BEGIN IMMEDIATE`` .. ``COMMIT`` in its own thread."""

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self._path = path
        self._synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None  # made when first used, again after close
        self._connection: sqlite3.Connection | None = None
        self._catch_up = False

    def catch_up_wal(self) -> None:
        """Copy the WAL's last frames into the database file before the next transaction
        (called from the checkpointer's thread once it has copied the rest; a flag, so any
        thread may).

        SQLite starts the WAL from its beginning again only when a write transaction starts
        with every frame copied (https://sqlite.org/wal.html, "Avoiding Excessively Large WAL
        Files"). The checkpointer copies in the background, but under load this writer has
        committed again before it finishes, so that moment never came: the WAL grew to
        ``wal_autocheckpoint`` (10,000 pages) and a commit here ran SQLite's own checkpoint,
        copying up to a second's frames and syncing: 9-23 ms of CPU and 20-67 ms of waiting
        every ~1.6 s at 5,000 messages/s (docs/benchmarks.md, session 9). Copying the few
        frames written since the checkpointer's pass, here, between two transactions, is
        that moment."""
        self._catch_up = True

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """The work's result once committed. Its exception (after a rollback) is raised; an
        :class:`Abandon` too, so the caller can take another way."""
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        return await asyncio.get_running_loop().run_in_executor(executor, self._transaction, work)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection
        if connection is None:
            connection = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
            configure_sqlite_connection(connection, self._synchronous)
            self._connection = connection
        if self._catch_up:
            self._catch_up = False
            # PASSIVE: never waits; if a reader still needs frames, SQLite's own checkpoint
            # stays the safety net, as before.
            with contextlib.suppress(sqlite3.Error):
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = work(connection)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise
        return result

    async def close(self) -> None:
        """Close the connection and end the thread; a later transaction starts both again (a
        node stopped and started again, as an embedding application may)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close)
        executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
