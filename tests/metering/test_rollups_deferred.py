"""SQLite's deferred rollup merging at its edges (metering/rollups.py, docs/metering.md).

The property test in test_rollups.py covers arrival orders, crashes and rebuilds; these cover what
it cannot generate: a charge point removed while its rollups wait in memory, SQLite handing out
again the ids of deleted top rows, which lie below the watermark, and a whole batch failing to
commit after its values were counted.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from test_rollups import BASE, ENERGY, POWER, assert_keyed, row, stored_vs_recomputed

from chargegrid import admin
from chargegrid.metering import rollups as rollups_module
from chargegrid.metering.rollups import RollupMaintainer, rebuild
from chargegrid.store import charge_points as cp_store
from chargegrid.store import rollups as rollup_store
from chargegrid.store import value_keys
from chargegrid.store.database import create_engine, writing
from chargegrid.store.group_commit import GroupCommitter, StoreUnavailable
from chargegrid.store.migrate import upgrade
from chargegrid.store.sqlite_writer import SqliteWriter, database_path
from chargegrid.store.tables import charge_points, meter_values, rollup_watermark


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'deferred.db'}")
    await upgrade(engine)
    async with writing(engine).begin() as connection:
        for identity in ("CPA", "CPB"):
            await admin.add_charge_point(connection, identity, now=BASE, hash_iterations=1000)
    yield engine
    await engine.dispose()


async def running(
    engine: AsyncEngine,
    *,
    thread: SqliteWriter | None = None,
    interval: float = 0.001,
    merge_interval: float = 60.0,  # merged only when asked
) -> tuple[GroupCommitter, RollupMaintainer]:
    writer = GroupCommitter(engine, interval=interval)
    sink = RollupMaintainer("sqlite", merge_interval=merge_interval)
    if thread is not None:  # batches of values (or statements) alone commit in its thread
        sink.use_writer(thread, engine)
        writer.statements_sink = sink
    writer.sinks[sink.insert] = sink
    await sink.recover(engine)
    await writer.start()
    return writer, sink


def writer_thread(engine: AsyncEngine) -> SqliteWriter:
    path = database_path(engine.url.render_as_string(hide_password=False))
    assert path is not None
    return SqliteWriter(path)


class StoppedClock:
    """Stands in for the ``time`` module in metering/rollups.py: time moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


async def cp_id(engine: AsyncEngine, identity: str) -> int:
    async with engine.connect() as connection:
        value = await connection.scalar(
            select(charge_points.c.id).where(charge_points.c.identity == identity)
        )
    assert value is not None
    return int(value)


async def assert_exact(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        stored, expected = await stored_vs_recomputed(connection)
    assert stored == expected
    assert stored


async def test_values_wait_in_memory_until_a_merge_and_count_once(engine: AsyncEngine) -> None:
    a = await cp_id(engine, "CPA")
    writer, sink = await running(engine)
    try:
        await writer.insert(sink.insert, [row(a, 1, m, ENERGY, 100.0 * m) for m in range(5)])
        assert sink.uncounted
        async with engine.connect() as connection:
            assert await rollup_store.read_all(connection) == []  # not merged yet
        await sink.settle(writer)
        assert not sink.uncounted
        await assert_exact(engine)
        async with engine.connect() as connection:
            top = await connection.scalar(select(func.max(meter_values.c.id)))
            assert await rollup_store.watermark(connection) == top
    finally:
        await writer.stop()
    await assert_exact(engine)


async def test_a_charge_point_removed_while_its_rollups_wait(engine: AsyncEngine) -> None:
    a, b = await cp_id(engine, "CPA"), await cp_id(engine, "CPB")
    writer, sink = await running(engine)
    try:
        await writer.insert(sink.insert, [row(b, 1, m, POWER, 7000.0) for m in range(3)])
        await writer.insert(sink.insert, [row(a, 1, m, POWER, 11000.0) for m in range(3)])
        async with writing(engine).begin() as connection:  # as the CLI or the API would
            await connection.execute(delete(charge_points).where(charge_points.c.id == b))
        await sink.settle(writer)  # B's rollups must not fail the merge on the foreign key
        await writer.insert(sink.insert, [row(a, 1, 10, POWER, 11000.0)])  # still writing
        await sink.settle(writer)
    finally:
        await writer.stop()
    await assert_exact(engine)


@pytest.mark.parametrize("then", ["crash", "rebuild"])
async def test_reused_ids_below_the_watermark_are_counted_at_once(
    engine: AsyncEngine, then: str
) -> None:
    """SQLite gives a new row max(id)+1: once the top rows are deleted, new rows get ids the
    watermark already covers. They must be merged in their own batch, or a crash would lose
    them (recovery counts only ids above the watermark) and a rebuild would count them twice
    (it counts ids up to the watermark, and the merge would add them again)."""
    a, b = await cp_id(engine, "CPA"), await cp_id(engine, "CPB")
    writer, sink = await running(engine)
    try:
        await writer.insert(sink.insert, [row(a, 1, m, ENERGY, 10.0 * m) for m in range(4)])
        await writer.insert(sink.insert, [row(b, 1, m, ENERGY, 20.0 * m) for m in range(4)])
        await sink.settle(writer)  # watermark: B's last value, the top id
        async with writing(engine).begin() as connection:
            await connection.execute(delete(charge_points).where(charge_points.c.id == b))
        await writer.insert(sink.insert, [row(a, 1, 30 + m, ENERGY, 50.0 + m) for m in range(3)])
        async with engine.connect() as connection:
            reused = await connection.scalar(select(func.max(meter_values.c.id)))
            assert reused is not None
            assert reused <= await rollup_store.watermark(connection)  # the case at hand
        if then == "rebuild":
            await rebuild(engine, BASE, BASE.replace(day=BASE.day + 2))
        else:  # the sink is dropped without a merge; the next start recovers
            writer.sinks.clear()
    finally:
        await writer.stop()
    writer, sink = await running(engine)
    await writer.stop()
    await assert_exact(engine)


async def test_a_failed_commit_is_not_counted(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values are counted in memory as they are inserted; when the batch's commit then fails
    (nothing of it is stored), the next merge counts from the database instead."""
    a = await cp_id(engine, "CPA")
    writer, sink = await running(engine)
    try:
        await writer.insert(sink.insert, [row(a, 1, m, ENERGY, 100.0 * m) for m in range(3)])

        # The batch's commit fails after its values were inserted and counted (an injected
        # failure: the last statement of the batch raises).
        real_finish = sink.finish

        async def failing_finish(connection: Any, *, final: bool) -> None:
            await real_finish(connection, final=final)
            raise OSError("disk full")

        monkeypatch.setattr(sink, "finish", failing_finish)
        with pytest.raises(StoreUnavailable):
            await writer.insert(sink.insert, [row(a, 1, m, ENERGY, 50.0 * m) for m in (4, 5)])
        monkeypatch.undo()
        await writer.insert(sink.insert, [row(a, 1, 6, ENERGY, 900.0), row(a, 1, 7, POWER, 7.0)])
        await sink.settle(writer)
        assert sink.stats.recounts == 1
        await assert_exact(engine)
        async with engine.connect() as connection:
            minutes = (await connection.execute(select(meter_values.c.value))).scalars().all()
        assert sorted(minutes) == [0.0, 7.0, 100.0, 200.0, 900.0]  # the failed batch's are not
    finally:
        await writer.stop()
    await assert_exact(engine)


async def test_plain_statements_join_a_batch_of_values_in_the_writer_thread(
    engine: AsyncEngine,
) -> None:
    """A batch of meter values and plain statements (the liveness flush) commits in the writer
    thread's one trip; a failing caller's statements roll back alone, the rest commit, and
    what the statements wrote reads back as the ORM would have written it."""
    a, b = await cp_id(engine, "CPA"), await cp_id(engine, "CPB")
    thread = writer_thread(engine)
    writer, sink = await running(engine, thread=thread, interval=0.05)
    seen_at = BASE + timedelta(seconds=1, microseconds=5)
    beat_at = BASE + timedelta(seconds=2)
    try:
        results = await asyncio.gather(
            writer.insert(sink.insert, [row(a, 1, m, ENERGY, 10.0 * m) for m in range(3)]),
            writer.execute(cp_store.touch_statements({a: seen_at}, {b: beat_at})),
            writer.execute([("UPDATE no_such_table SET x = 1", ())]),
            return_exceptions=True,
        )
        assert results[:2] == [None, []]
        assert isinstance(results[2], sqlite3.OperationalError)
        assert (writer.stats.batches, writer.stats.alone) == (1, 1)
        async with engine.connect() as connection:
            c = charge_points.c
            times = {
                r.id: (r.last_seen_at, r.last_heartbeat_at)
                for r in await connection.execute(select(c.id, c.last_seen_at, c.last_heartbeat_at))
            }
            assert times == {a: (seen_at, None), b: (beat_at, beat_at)}
            assert await connection.scalar(select(func.count()).select_from(meter_values)) == 3
    finally:
        await writer.stop()
        await thread.close()
    await assert_exact(engine)


BOOT = {
    "chargePointVendor": "Vendor",
    "chargePointModel": "Model",
    "chargePointSerialNumber": "SN-1",
    "firmwareVersion": "1.2.3",
    "meterType": "AC",
}


async def test_statements_alone_commit_in_the_writer_thread_as_the_orm_writes(
    engine: AsyncEngine,
) -> None:
    """Charge points connecting and booting write plain statements (store/charge_points): a
    batch of nothing else commits in the writer thread's one trip (the sink's, with its key
    fill), returns the last statement's rows, and stores exactly what the ORM's units
    store. A failing caller's statements roll back alone."""
    a, b = await cp_id(engine, "CPA"), await cp_id(engine, "CPB")
    thread = writer_thread(engine)
    writer, _sink = await running(engine, thread=thread, interval=0.05)
    connected_at = BASE + timedelta(seconds=1, microseconds=7)
    booted_at = BASE + timedelta(seconds=2)
    try:
        assert await writer.execute(cp_store.connected_statements(a, True, connected_at)) == []
        assert writer.stats.alone == 1
        # CPB is written through the ORM's units below, for comparison.
        results = await asyncio.gather(
            writer.execute(cp_store.boot_statements(a, BOOT, booted_at, None)),
            writer.execute([("UPDATE no_such_table SET x = 1", ())]),
            return_exceptions=True,
        )
        assert results[0] == [("Accepted",)]  # the registration status, read after the writes
        assert isinstance(results[1], sqlite3.OperationalError)
        assert writer.stats.alone == 2
        await writer.run(lambda c: cp_store.set_connected(c, b, True, connected_at))
        await writer.run(lambda c: cp_store.record_boot(c, b, BOOT, booted_at))
        decided = await writer.execute(cp_store.boot_statements(a, BOOT, booted_at, "Pending"))
        assert decided == [("Pending",)]
        await writer.execute(cp_store.connected_statements(b, False, booted_at))
        async with engine.connect() as connection:
            rows = {
                r.identity: r._asdict()
                for r in await connection.execute(
                    select(charge_points).where(charge_points.c.id.in_([a, b]))
                )
            }
        cpa, cpb = rows["CPA"], rows["CPB"]
        assert (cpa["vendor"], cpa["firmware_version"], cpa["iccid"]) == ("Vendor", "1.2.3", None)
        assert (cpa["connected"], cpa["connected_at"], cpa["last_boot_at"]) == (
            True,
            connected_at,
            booted_at,
        )
        assert cpa["registration_status"] == "Pending"
        assert (cpb["connected"], cpb["disconnected_at"]) == (False, booted_at)
        different = {
            key
            for key in cpa
            if cpa[key] != cpb[key]
            and key not in {"id", "identity", "registration_status", "connected", "updated_at"}
            and key != "disconnected_at"
        }
        assert different == set()  # every other column as the ORM wrote it
    finally:
        await writer.stop()
        await thread.close()


@pytest.mark.parametrize("then", ["crash", "rebuild", "settle"])
async def test_a_merge_round_cut_short_counts_each_value_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """In the writer thread a deferred merge goes a slice of charge points per batch and
    records how far it got (store/rollups.Counted). Cut short by a crash, recovery counts only
    the slices not merged; a rebuild in the middle counts the merged slices as counted; a
    reader's settle ends the round at once. Each value ends up counted exactly once."""
    monkeypatch.setattr(rollups_module, "MERGE_SLICE_ROWS", 1)  # a slice per rollup row
    # The merge falls due when the test says, not when a slow machine's first batches took
    # longer than the interval (a round then started early and ended before the checks below).
    clock = StoppedClock()
    monkeypatch.setattr(rollups_module, "time", clock)
    a, b = await cp_id(engine, "CPA"), await cp_id(engine, "CPB")
    thread = writer_thread(engine)
    writer, sink = await running(engine, thread=thread, merge_interval=0.05)
    try:
        for minute in range(3):
            await writer.insert(
                sink.insert,
                [row(a, 1, minute, ENERGY, 10.0 * minute), row(b, 1, minute, POWER, 7.0)],
            )
        clock.now += 0.06  # the merge is due: the next batch starts a round
        await writer.insert(sink.insert, [row(a, 1, 5, ENERGY, 100.0)])
        async with engine.connect() as connection:
            counted = await rollup_store.counted(connection)
        assert counted.round_up_to is not None
        assert 0 < counted.round_done < counted.round_slices
        # The round's slices (charge point id modulo slices) held by the merged one:
        merged = {cp for cp in (a, b) if cp % counted.round_slices < counted.round_done}
        assert merged  # so a recount of everything above raw_id would count it twice
        if then == "crash":
            writer.sinks.clear()  # the sink is gone with what it held in memory
        elif then == "rebuild":
            await rebuild(engine, BASE, BASE.replace(day=BASE.day + 2))
        else:
            await sink.settle(writer)
            async with engine.connect() as connection:
                assert (await rollup_store.counted(connection)).round_up_to is None
            await assert_exact(engine)
    finally:
        await writer.stop()
        await thread.close()
    if then != "crash":
        await assert_exact(engine)
    writer, sink = await running(engine)  # a start: recovery
    await writer.stop()
    await assert_exact(engine)


async def test_the_key_fill_looks_up_what_the_writer_thread_stored(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key fill's rounds in the writer thread take their values' ids from what it stored
    (store/value_keys.KeyQueue) instead of scanning; values stored the usual way in between
    (a unit's) are keyed all the same."""
    monkeypatch.setattr(value_keys, "SLICE_VALUES", 4)  # rounds of several slices
    a, b = await cp_id(engine, "CPA"), await cp_id(engine, "CPB")
    thread = writer_thread(engine)
    # Rounds (and merges) every 20 ms: the slices of a round spread over it.
    writer, sink = await running(engine, thread=thread, merge_interval=0.02)
    queue = sink.key_queue
    minute = 0

    async def batches(count: int) -> None:
        nonlocal minute
        for _ in range(count):
            minute += 1
            await asyncio.gather(
                writer.insert(
                    sink.insert, [row(a, 1, minute, m, 1.0 * minute) for m in (ENERGY, POWER)]
                ),
                writer.insert(sink.insert, [row(b, 1, minute, ENERGY, 2.0 * minute, tx=7)]),
            )
            await asyncio.sleep(0.004)

    try:
        await batches(60)
        listed = queue.listed_rounds
        assert listed >= 3
        await writer.run(
            lambda c: writer.write_rows(c, sink.insert, [row(a, 2, minute, ENERGY, 5.0)])
        )
        async with engine.connect() as connection:
            usual = await connection.scalar(select(func.max(meter_values.c.id)))
        await batches(60)
        assert queue.listed_rounds > listed
    finally:
        await writer.stop()
        await thread.close()
    async with engine.connect() as connection:
        keyed = await connection.scalar(select(rollup_watermark.c.keyed_id))
        assert keyed is not None and usual is not None and keyed > usual  # keyed past it
        await assert_keyed(connection, [a, b])
    await assert_exact(engine)
