"""The WAL checkpointer (store/sqlite_checkpoint.py) on a real SQLite file: it copies committed
pages into the database file from a connection of its own without waiting for a writer that
holds the write lock, counts a failure instead of raising, and a node with an SQLite file runs
it (and does not when the setting is 0)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from chargegrid.config import Settings
from chargegrid.store.database import configure_sqlite_connection
from chargegrid.store.sqlite_checkpoint import WalCheckpointer
from chargegrid.store.sqlite_writer import SqliteWriter
from support import running_server


def _writer(path: Path) -> sqlite3.Connection:
    """A connection as the server's, with SQLite's own checkpoints off: what is in the
    database file got there by the checkpointer."""
    connection = sqlite3.connect(path, isolation_level=None)
    configure_sqlite_connection(connection, "NORMAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    return connection


def _in_database_file(path: Path) -> int:
    """Rows of ``t`` in the database file itself, the WAL ignored (``immutable``)."""
    connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(connection.execute("SELECT count(*) FROM t").fetchone()[0])
    except sqlite3.OperationalError:  # the table itself is still only in the WAL
        return 0
    finally:
        connection.close()


async def test_committed_pages_reach_the_database_file_while_a_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wal.db"
    writer = _writer(path)
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    writer.executemany("INSERT INTO t (payload) VALUES (?)", [("x" * 500,)] * 200)
    assert _in_database_file(path) == 0
    checkpointer = WalCheckpointer(str(path), interval=3600)  # only when asked
    await checkpointer.start()
    try:
        # Another transaction holds the write lock (and has written) meanwhile.
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO t (payload) VALUES ('uncommitted')")
        started = time.monotonic()
        await checkpointer.checkpoint()
        assert time.monotonic() - started < 5  # no wait for the lock (busy_timeout is 30 s)
        stats = checkpointer.stats
        assert (stats.checkpoints, stats.failures) == (1, 0)
        assert stats.last_copied_frames == stats.last_log_frames > 0
        assert _in_database_file(path) == 200
        writer.execute("COMMIT")
    finally:
        await checkpointer.stop()
        writer.close()


async def test_a_failing_checkpoint_is_counted_not_raised(tmp_path: Path) -> None:
    checkpointer = WalCheckpointer(str(tmp_path), interval=0.01)  # a directory: cannot open
    await checkpointer.start()
    try:
        for _ in range(1000):  # up to 10 s: a slow machine's thread may start late
            if checkpointer.stats.failures >= 2:
                break
            await asyncio.sleep(0.01)
        assert checkpointer.stats.failures >= 2  # and it goes on trying
        assert checkpointer.stats.checkpoints == 0
    finally:
        await checkpointer.stop()


@pytest.mark.parametrize("interval", [0.05, 0.0])
async def test_a_node_on_an_sqlite_file_checkpoints_in_the_background(
    tmp_path: Path, interval: float
) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'node.db'}",
        sqlite_checkpoint_interval=interval,
    )
    async with running_server(settings) as server:
        checkpointer = server.node.checkpointer
        if not interval:
            assert checkpointer is None
            return
        for _ in range(1000):  # up to 10 s: a slow machine's thread may start late
            if checkpointer.stats.checkpoints >= 2:
                break
            await asyncio.sleep(0.01)
        assert checkpointer.stats.checkpoints >= 2
        assert checkpointer.stats.failures == 0
        # Full passes tell the node's writer to copy the rest (SqliteWriter.catch_up_wal).
        writer = server.node.sqlite_writer
        assert writer is not None
        assert checkpointer._on_copied == writer.catch_up_wal


def _wal_frames(path: Path) -> int:
    """Frames in the WAL now (SQLite's count, not the file's size: the file is reused)."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        ((_busy, log_frames, _copied),) = connection.execute(
            "PRAGMA wal_checkpoint(PASSIVE)"
        ).fetchall()
        return int(log_frames)
    finally:
        connection.close()


@pytest.mark.parametrize("catch_up", [True, False])
async def test_the_writer_copies_the_last_frames_so_that_the_wal_starts_over(
    tmp_path: Path, catch_up: bool
) -> None:
    """Under load the writer commits while the checkpointer copies, so when the pass ends the
    last frames are not copied, no transaction ever starts with all of them copied, and the
    WAL grows until SQLite's own checkpoint runs inside a commit. Told to catch up (what a
    full pass of the checkpointer does), the writer copies those frames first and the WAL
    starts over. A reader's snapshot stands in for the race here: it keeps the pass from
    copying the frames committed after it, as a commit during the pass would."""
    path = tmp_path / "wal.db"
    writer = SqliteWriter(str(path), "NORMAL")
    other = _writer(path)
    reader = sqlite3.connect(path, isolation_level=None)
    checkpointer = WalCheckpointer(str(path), interval=3600)
    await checkpointer.start()
    try:

        def fill(connection: sqlite3.Connection) -> None:
            connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
            connection.executemany("INSERT INTO t (payload) VALUES (?)", [("x" * 500,)] * 200)

        await writer.transaction(fill)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchall()
        other.execute("INSERT INTO t (payload) VALUES ('during the pass')")
        await checkpointer.checkpoint()
        stats = checkpointer.stats
        written = stats.last_log_frames
        assert 20 < stats.last_copied_frames < written  # all but the last commit's
        reader.execute("COMMIT")
        if catch_up:
            writer.catch_up_wal()
        await writer.transaction(lambda c: c.execute("INSERT INTO t (payload) VALUES ('next')"))
        frames = _wal_frames(path)
        if catch_up:
            assert frames <= 3  # the last transaction's pages only: the WAL started over
        else:
            assert frames > written  # appended: the WAL only grows
        assert other.execute("SELECT count(*) FROM t").fetchone() == (202,)  # nothing lost
    finally:
        await checkpointer.stop()
        await writer.close()
        reader.close()
        other.close()


async def test_the_writer_is_not_told_while_a_reader_holds_frames_back(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    writer = _writer(path)
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    reader = sqlite3.connect(path, isolation_level=None)
    told: list[bool] = []
    checkpointer = WalCheckpointer(str(path), interval=3600, on_copied=lambda: told.append(True))
    await checkpointer.start()
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchall()  # a snapshot before the rows
        writer.executemany("INSERT INTO t (payload) VALUES (?)", [("x" * 500,)] * 50)
        await checkpointer.checkpoint()
        stats = checkpointer.stats
        assert stats.last_copied_frames < stats.last_log_frames
        assert told == []
        reader.execute("COMMIT")
        await checkpointer.checkpoint()
        assert stats.last_copied_frames == stats.last_log_frames > 0
        assert told == [True]
    finally:
        await checkpointer.stop()
        reader.close()
        writer.close()
