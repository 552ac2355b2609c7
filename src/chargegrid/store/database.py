"""Creating the database engine: SQLite in WAL mode by default, PostgreSQL for scale."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry


def create_engine(
    database_url: str,
    *,
    sqlite_synchronous: str = "FULL",
    connect_timeout: float | None = None,
    statement_timeout: float | None = None,
) -> AsyncEngine:
    """An async engine for ``database_url``, configured for many short write transactions.

    SQLite: WAL so readers never block the writer, a busy timeout instead of instant
    ``database is locked`` errors, foreign keys on, and ``synchronous`` as configured (FULL keeps
    an acknowledged write even across a power cut; NORMAL only across a process crash).

    PostgreSQL: ``connect_timeout`` and ``statement_timeout`` (seconds, asyncpg's ``timeout`` and
    ``command_timeout``) bound a database that stops answering without closing its sockets;
    without them a commit waits forever and so does every charge point behind it. A statement
    cut short fails its batch: the charge points get a CALLERROR and retry, and a retry of a
    commit that did land is de-duplicated (guarantee 2).
    """
    if database_url.startswith("sqlite"):
        engine = create_async_engine(database_url, connect_args={"timeout": 30})
        _configure_sqlite(engine, sqlite_synchronous)
        return engine
    connect_args: dict[str, Any] = {}
    if connect_timeout is not None:
        connect_args["timeout"] = connect_timeout
    if statement_timeout is not None:
        connect_args["command_timeout"] = statement_timeout
    return create_async_engine(
        database_url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def configure_sqlite_connection(dbapi_connection: Any, synchronous: str) -> None:
    """Every SQLite connection's settings: the engine's pool and the writer thread's
    (store/sqlite_writer.py) alike."""
    # Take transaction control away from the sqlite3 module so SQLAlchemy's BEGIN and
    # SAVEPOINT work as written (SQLAlchemy docs, "Serializable isolation / Savepoints").
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Checkpoint the WAL every ~40 MB instead of SQLite's 4 MB: a group commit of a few
    # hundred charge points' values dirties about one index page per charge point, so at
    # the default nearly every commit also ran a checkpoint (docs/benchmarks.md: 10-20 %
    # more round trips/s at N=500). Readers are unaffected; the WAL file is bigger.
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    # A page cache of up to 64 MiB (SQLite's default: 2 MiB), allocated as pages are used.
    # The writer touches the tail page of the sample index for every charge point in a
    # batch and the inner pages above them; at the default they were evicted between
    # commits and read back each time (raw SQLite, 500 charge points: 29 -> 20 us of CPU
    # per value; docs/benchmarks.md).
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def _configure_sqlite(engine: AsyncEngine, synchronous: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        configure_sqlite_connection(dbapi_connection, synchronous)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # See writing(): a transaction that will write takes the write lock up front.
        mode = connection.get_execution_options().get("sqlite_begin", "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())


def writing(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool), for transactions that write.

    On SQLite they start with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then
    writes fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT, which busy_timeout does
    not retry) if another connection committed since its read. Taking the write lock first makes
    it wait its turn instead. Reads keep deferred transactions, so they never wait for writers.
    PostgreSQL ignores the option.
    """
    return engine.execution_options(sqlite_begin="IMMEDIATE")
