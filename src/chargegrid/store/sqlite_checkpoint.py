"""Copying SQLite's write-ahead log back into the database file, in a thread of its own.

By default SQLite checkpoints in the connection whose commit takes the WAL past
``wal_autocheckpoint`` pages (10,000 here, store/database.py): that commit copies up to 40 MB
into the database file and syncs it before it returns, and every charge point waiting for that
commit waits with it (60-100 ms every second or two at 5,000 messages/s, docs/benchmarks.md).
Here a connection of its own runs a PASSIVE checkpoint every ``interval``: it copies the frames
no reader still needs without taking the write lock or waiting for anyone
(https://sqlite.org/c3ref/wal_checkpoint_v2.html), so the writer only ever appends. The WAL
starts from its beginning again only when a write transaction starts with every frame copied;
under load the writer has committed again before a pass ends, so after a pass that copied
everything the writer copies the few frames written since, between two of its transactions
(``on_copied``, :meth:`SqliteWriter.catch_up_wal`). The automatic checkpoint stays as the
safety net (a long read holds frames back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from chargegrid.store.database import configure_sqlite_connection

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CheckpointStats:
    checkpoints: int = 0
    failures: int = 0
    last_log_frames: int = 0  # the WAL's frames at the last checkpoint
    last_copied_frames: int = 0  # ... of which copied by then (all, unless readers held some)


class WalCheckpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on the database at ``path`` every ``interval``
    seconds in a thread of its own, from :meth:`start` until :meth:`stop`."""

    def __init__(
        self,
        path: str,
        interval: float,
        synchronous: str = "FULL",
        *,
        on_copied: Callable[[], None] | None = None,
    ) -> None:
        self._path = path
        # Told (in this thread) when every frame there was is copied: the writer then copies
        # what it wrote meanwhile, so that the WAL starts over (SqliteWriter.catch_up_wal).
        self._on_copied = on_copied
        self._interval = interval
        self._synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.stats = CheckpointStats()

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._task = asyncio.create_task(self._run(), name="sqlite-checkpoint")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
            executor.shutdown(wait=True)

    async def checkpoint(self) -> None:
        """One checkpoint now (in the thread); a failure is counted and logged, never raised:
        the automatic checkpoint is still there."""
        assert self._executor is not None, "start() first"
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._checkpoint)
        except sqlite3.Error as error:
            self.stats.failures += 1
            log.warning("WAL checkpoint failed: %s", error)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.checkpoint()

    def _checkpoint(self) -> None:
        connection = self._connection
        if connection is None:
            connection = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
            configure_sqlite_connection(connection, self._synchronous)
            self._connection = connection
        # A second pass copies what the writer committed during the first (a second's worth
        # took 20-40 ms to copy at 5,000 messages/s), so that what is left for the writer's
        # catch-up is a few commits', not a few dozen.
        for _ in range(2):
            ((_busy, log_frames, copied),) = connection.execute(
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).fetchall()
            if log_frames <= 0 or copied < log_frames:  # nothing there, or a reader holds some
                break
        stats = self.stats
        stats.checkpoints += 1
        stats.last_log_frames, stats.last_copied_frames = log_frames, copied
        if self._on_copied is not None and 0 < log_frames == copied:
            self._on_copied()

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
