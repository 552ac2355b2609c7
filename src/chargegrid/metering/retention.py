"""Retention: raw values, hourly and daily rollups are purged by age, in small batches.

Each batch is one short delete run through the group-commit writer (so on SQLite it takes its
turn with ingest instead of holding the write lock), and the purger yields between batches: a
backlog of millions of rows is worked off without stalling ingest. Transactions (session totals)
are never purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.clock import Clock
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.rollups import DAY, HOUR
from chargegrid.store.types import UTCDateTime

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RetentionStats:
    raw: int = 0
    hourly: int = 0
    daily: int = 0
    runs: int = 0


def _bind(connection: AsyncConnection, at: datetime) -> object:
    return UTCDateTime().process_bind_param(at, connection.dialect)


async def purge_raw_batch(connection: AsyncConnection, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` raw values older than ``before`` (found by the index led by time:
    ix_meter_values_timestamp on PostgreSQL, the sample index on SQLite), and on SQLite their
    keys by charge point and by session (store/value_keys.py): exactly the deleted rows',
    looked up by primary key."""
    oldest = "SELECT id FROM meter_values WHERE timestamp < :before LIMIT :limit"
    parameters = {"before": _bind(connection, before), "limit": limit}
    if connection.dialect.name != "sqlite":
        result = await connection.execute(
            text(f"DELETE FROM meter_values WHERE id IN ({oldest})"), parameters
        )
        return int(result.rowcount or 0)
    deleted = (
        await connection.execute(
            text(
                f"DELETE FROM meter_values WHERE id IN ({oldest}) "
                "RETURNING charge_point_id, timestamp, id, transaction_id"
            ),
            parameters,
        )
    ).all()
    if deleted:
        await connection.execute(
            text(
                "DELETE FROM meter_value_keys "
                "WHERE charge_point_id = :cp AND timestamp = :at AND id = :id"
            ),
            [{"cp": cp, "at": at, "id": row_id} for cp, at, row_id, _ in deleted],
        )
    sessions = [
        {"tx": tx, "at": at, "id": row_id} for _, at, row_id, tx in deleted if tx is not None
    ]
    if sessions:
        await connection.execute(
            text(
                "DELETE FROM meter_value_transaction_keys "
                "WHERE transaction_id = :tx AND timestamp = :at AND id = :id"
            ),
            sessions,
        )
    return len(deleted)


async def purge_rollup_batch(
    connection: AsyncConnection, resolution: str, before: datetime, limit: int
) -> int:
    """Delete up to ``limit`` rollups of ``resolution`` whose bucket starts before ``before``."""
    # The rollups' key is composite; the row's physical id picks a batch on either database.
    row_id = "ctid" if connection.dialect.name == "postgresql" else "rowid"
    result = await connection.execute(
        text(
            f"DELETE FROM meter_rollups WHERE {row_id} IN (SELECT {row_id} FROM meter_rollups "
            "WHERE resolution = :resolution AND bucket < :before LIMIT :limit)"
        ),
        {"resolution": resolution, "before": _bind(connection, before), "limit": limit},
    )
    return int(result.rowcount or 0)


async def _rollup_unit(
    connection: AsyncConnection, *, resolution: str, before: datetime, limit: int
) -> int:
    return await purge_rollup_batch(connection, resolution, before, limit)


class Retention:
    """Runs :meth:`purge` every ``interval`` seconds in the background."""

    def __init__(
        self,
        writer: GroupCommitter,
        clock: Clock,
        *,
        raw_days: float,
        hourly_days: float,
        daily_days: float,
        interval: float,
        batch_size: int,
    ) -> None:
        self._writer = writer
        self._clock = clock
        self.raw = timedelta(days=raw_days)
        self.hourly = timedelta(days=hourly_days)
        self.daily = timedelta(days=daily_days)
        self._interval = interval
        self._batch = batch_size
        self._task: asyncio.Task[None] | None = None
        self.stats = RetentionStats()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            # Sleep first: right after a start the charge points reconnect and replay their
            # queues, which matters more than a purge.
            await asyncio.sleep(self._interval)
            try:
                await self.purge()
            except Exception as error:  # the database may be down; try again next time
                log.warning("retention: purge failed: %s", error)

    async def purge(self) -> RetentionStats:
        """Purge everything past its retention, batch by batch; returns the totals."""
        now = self._clock.now()
        self.stats.runs += 1
        raw_before = now - self.raw
        self.stats.raw += await self._drain(lambda c: purge_raw_batch(c, raw_before, self._batch))
        for resolution, keep in ((HOUR, self.hourly), (DAY, self.daily)):
            before = now - keep
            count = await self._drain(
                functools.partial(
                    _rollup_unit, resolution=resolution, before=before, limit=self._batch
                )
            )
            if resolution == HOUR:
                self.stats.hourly += count
            else:
                self.stats.daily += count
        return self.stats

    async def _drain(self, unit: Callable[[AsyncConnection], Awaitable[int]]) -> int:
        total = 0
        while True:
            count = await self._writer.run(unit)
            total += count
            if count < self._batch:
                return total
            await asyncio.sleep(0)  # let the charge points' batches in between
