"""The plain-SQL SQLite path for meter value batches writes exactly what SQLAlchemy Core would.

``SqliteMeterBatch`` formats datetimes itself; if its text differed from SQLAlchemy's storage
format by one character, the unique index would store a replay twice and range reads would skip
values. So every row is written by one path and replayed through the other, on a real SQLite file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid import admin
from chargegrid.metering.rollups import Rollups
from chargegrid.store.database import create_engine, writing
from chargegrid.store.meter_batch import (
    CoreMeterBatch,
    MeterBatch,
    SqliteMeterBatch,
    _statement_rows,
)
from chargegrid.store.migrate import upgrade
from chargegrid.store.sqlite_writer import Abandon, SqliteWriter
from chargegrid.store.tables import meter_rollups, meter_values
from chargegrid.store.types import sqlite_text

BASE = datetime(2026, 3, 29, 0, 59, 59, 999_999, tzinfo=UTC)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'batch.db'}", sqlite_synchronous="OFF")
    await upgrade(engine)
    async with writing(engine).begin() as connection:
        await admin.add_charge_point(connection, "CP1", now=BASE, hash_iterations=1000)
    yield engine
    await engine.dispose()


def rows(count: int) -> list[dict[str, Any]]:
    out = []
    for n in range(count):
        # Whole seconds, fractions, another offset: every shape a timestamp may take.
        at = BASE + timedelta(seconds=n, microseconds=0 if n % 2 else 1)
        if n % 3 == 0:
            at = at.astimezone(timezone(timedelta(hours=2)))
        out.append(
            {
                "charge_point_id": 1,
                "connector_id": 1,
                "transaction_id": None if n % 4 == 0 else 7,
                "timestamp": at,
                "timestamp_raw": at.isoformat(),
                "measurand": "Energy.Active.Import.Register",
                "phase": None if n % 5 else "L1",
                "location": "Outlet",
                "context": "Sample.Periodic",
                "unit": "Wh",
                "raw_unit": "Wh",
                "value": float(1000 + n),
                "raw_value": str(1000 + n),
                "format": "Raw",
            }
        )
    return out


async def insert(engine: AsyncEngine, batch: MeterBatch, values: list[dict[str, Any]]) -> Any:
    async with writing(engine).begin() as connection:
        result = await batch.insert(connection, values)
    assert (result.first_id > 0) == bool(result.rows)
    return result.rows


@pytest.mark.parametrize("first", ["core", "sqlite"])
async def test_a_replay_through_the_other_path_is_a_duplicate(
    engine: AsyncEngine, first: str
) -> None:
    core, plain = CoreMeterBatch("sqlite"), SqliteMeterBatch()
    one, other = (core, plain) if first == "core" else (plain, core)
    values = rows(30)
    inserted = await insert(engine, one, values)
    assert len(inserted) == 30
    assert await insert(engine, other, values) == []
    assert await insert(engine, one, values) == []
    async with engine.connect() as connection:
        stored = (await connection.execute(select(meter_values.c.timestamp))).scalars().all()
        raw = (await connection.execute(text("SELECT timestamp FROM meter_values"))).scalars()
        assert sorted(raw) == sorted(sqlite_text(v["timestamp"]) for v in values)
    assert sorted(stored) == sorted(v["timestamp"] for v in values)


async def test_both_paths_return_the_same_rows(engine: AsyncEngine, tmp_path: Path) -> None:
    values = rows(12)
    plain = sorted((tuple(r) for r in await insert(engine, SqliteMeterBatch(), values)), key=repr)
    other = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'core.db'}", sqlite_synchronous="OFF")
    try:
        await upgrade(other)
        async with writing(other).begin() as connection:
            await admin.add_charge_point(connection, "CP1", now=BASE, hash_iterations=1000)
        core = sorted(
            (tuple(r) for r in await insert(other, CoreMeterBatch("sqlite"), values)), key=repr
        )
    finally:
        await other.dispose()
    assert plain == core
    assert all(r[3].tzinfo is UTC for r in plain)


async def test_a_large_batch_is_split_below_the_variable_limit(engine: AsyncEngine) -> None:
    values = rows(2500)  # 2,500 x 13 placeholders would exceed SQLite's 32,766
    assert len(await insert(engine, SqliteMeterBatch(), values)) == 2500


@pytest.mark.parametrize("count", [1, 15, 16, 17, 600, 1024, 1025])
async def test_padded_statements_store_each_row_once(engine: AsyncEngine, count: int) -> None:
    """Statements come in a few shapes (powers of two up to 1,024 rows), padded with copies of
    the chunk's last row: the copies are never stored nor handed back, whether that row was
    new or a replay."""
    assert _statement_rows(min(count, 1024)) in (16, 32, 64, 128, 256, 512, 1024)
    values = rows(count + 5)
    half = await insert(engine, SqliteMeterBatch(), values[: count // 2])
    assert len(half) == count // 2
    rest = await insert(engine, SqliteMeterBatch(), values[:count])  # replays first, then new
    assert len(rest) == count - count // 2
    again = await insert(engine, SqliteMeterBatch(), values[:count])  # all replays
    assert again == []
    async with engine.connect() as connection:
        stored = await connection.scalar(text("SELECT count(*) FROM meter_values"))
    assert stored == count


async def test_merges_through_either_path_give_the_same_rollups(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    values = rows(40)
    inserted = await insert(engine, SqliteMeterBatch(), values)
    partial = Rollups()
    for row in inserted:
        partial.add(row)
    results = []
    for batch in (SqliteMeterBatch(), CoreMeterBatch("sqlite")):
        async with writing(engine).begin() as connection:
            await connection.execute(meter_rollups.delete())
            # Twice: the second merge goes through ON CONFLICT DO UPDATE.
            await batch.merge(connection, partial.values())
            await batch.merge(connection, partial.values())
            results.append(
                sorted(
                    tuple(r)
                    for r in (await connection.execute(text("SELECT * FROM meter_rollups"))).all()
                )
            )
    assert results[0] == results[1]
    assert results[0] and all(r[8] == 2 * partial.complete()[_key(r)].count for r in results[0])


def _key(row: Any) -> Any:
    cp, measurand, resolution, bucket, connector, phase, location = row[:7]
    return (
        cp,
        measurand,
        resolution,
        datetime.fromisoformat(bucket).replace(tzinfo=UTC),
        connector,
        phase,
        location,
    )


def test_sqlite_text_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="aware"):
        sqlite_text(datetime(2026, 1, 1))  # naive: the point of the test


async def test_the_writer_thread_insert_returns_what_returning_would(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """``insert_sync`` (the writer thread's, without RETURNING) hands back exactly the rows
    and lowest id the RETURNING insert gives: all new, some replayed (across a chunk border),
    all replayed; and gives up when an id is not above the watermark it is told."""
    values = rows(2500)
    path = str(tmp_path / "batch.db")
    writer = SqliteWriter(path, "OFF")
    batch = SqliteMeterBatch()

    async def alone(part: list[dict[str, Any]], above: int = 0) -> Any:
        return await writer.transaction(lambda c: batch.insert_sync(c, part, above=above))

    def shaped(result: Any) -> list[Any]:
        return sorted((tuple(r) for r in result.rows), key=repr)

    try:
        first = await alone(values[:1200])
        assert len(first.rows) == 1200 and first.first_id == 1
        # 1,024-row chunks, the last padded to a power of two with copies of its last row:
        # replays and new rows in one chunk, padding after a new row and after a replay.
        mixed = await alone(values[900:2500])
        assert mixed.first_id == 1201
        other = create_engine(
            f"sqlite+aiosqlite:///{tmp_path / 'ret.db'}", sqlite_synchronous="OFF"
        )
        try:
            await upgrade(other)
            async with writing(other).begin() as connection:
                await admin.add_charge_point(connection, "CP1", now=BASE, hash_iterations=1000)
            async with writing(other).begin() as connection:
                await batch.insert(connection, values[:1200])
                expected = await batch.insert(connection, values[900:2500])
        finally:
            await other.dispose()
        assert shaped(mixed) == shaped(expected)
        assert len(mixed.rows) == 1300
        assert all(r[3].tzinfo is UTC for r in mixed.rows)
        replayed = await alone(values[100:200])
        assert replayed.rows == [] and replayed.first_id == 0
        # SQLite hands out the ids of deleted top rows again: below the watermark, refused.
        async with writing(engine).begin() as connection:
            await connection.execute(text("DELETE FROM meter_values WHERE id > 2400"))
        with pytest.raises(Abandon):
            await alone(values[2400:], above=2500)
        async with engine.connect() as connection:
            count = await connection.scalar(text("SELECT count(*) FROM meter_values"))
        assert count == 2400  # rolled back
    finally:
        await writer.close()


async def test_the_writer_thread_starts_again_after_close(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A node stopped and started again (an embedding application's lifespan) reuses its
    writer: the thread and connection come back on the next transaction."""
    writer = SqliteWriter(str(tmp_path / "batch.db"), "OFF")
    batch = SqliteMeterBatch()
    values = rows(4)
    try:
        first = await writer.transaction(lambda c: batch.insert_sync(c, values[:2], above=0))
        await writer.close()
        await writer.close()  # twice is harmless
        again = await writer.transaction(lambda c: batch.insert_sync(c, values[2:], above=0))
        assert len(first.rows) == len(again.rows) == 2 and again.first_id == 3
    finally:
        await writer.close()
