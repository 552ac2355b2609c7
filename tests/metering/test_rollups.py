"""Rollups equal a brute-force recompute from raw, whatever the arrival order (issue 4).

Property-based on SQLite and PostgreSQL: random batches of sampled values (registers with resets,
power, phases, duplicates, SignedData, values arriving out of order, a restart with a cold cache,
units whose savepoint is rolled back) go through the real group-commit writer and its rollup
sink; afterwards the stored hourly and daily rollups must equal ``recompute`` over the raw rows,
and ``rebuild`` must reproduce them too.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chargegrid import admin
from chargegrid.metering import rollups as rollups_module
from chargegrid.metering.rollups import Aggregate, RollupMaintainer, rebuild, recompute, step
from chargegrid.store import rollups as rollup_store
from chargegrid.store import value_keys
from chargegrid.store.database import create_engine, writing
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.migrate import upgrade
from chargegrid.store.sqlite_writer import SqliteWriter, database_path
from chargegrid.store.tables import charge_points, meter_rollups, meter_values, rollup_watermark
from chargegrid.store.value_keys import charge_point_values, transaction_values

BASE = datetime(2024, 5, 1, 22, 0, tzinfo=UTC)
ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"


def row(
    cp: int,
    connector: int,
    minute: int,
    measurand: str,
    value: float | None,
    *,
    phase: str | None = None,
    context: str = "Sample.Periodic",
    tx: int | None = None,
) -> dict[str, Any]:
    at = BASE + timedelta(minutes=minute)
    return {
        "charge_point_id": cp,
        "connector_id": connector,
        "transaction_id": tx,
        "timestamp": at,
        "timestamp_raw": at.isoformat(),
        "measurand": measurand,
        "phase": phase,
        "location": "Outlet",
        "context": context,
        "unit": "Wh" if measurand == ENERGY else "W",
        "raw_unit": "Wh" if measurand == ENERGY else "W",
        "value": value,
        "raw_value": "x" if value is None else str(value),
        "format": "SignedData" if value is None else "Raw",
    }


samples = st.builds(
    lambda cp, connector, minute, measurand, value, phase, context, signed, tx: row(
        cp,
        connector,
        minute,
        measurand,
        None if signed else value,
        phase=phase,
        context=context,
        tx=tx,
    ),
    cp=st.sampled_from([0, 1]),  # index into the charge points
    connector=st.sampled_from([0, 1]),
    # ~3 days, so hours and days both roll over; a small range so timestamps collide.
    minute=st.integers(min_value=0, max_value=3 * 24 * 60).map(lambda m: m - m % 37),
    measurand=st.sampled_from([ENERGY, ENERGY, POWER]),
    value=st.sampled_from([0.0, 5.0, 100.0, 250.5, 1000.0, 999.0, 4_294_967_295.0]),
    phase=st.sampled_from([None, None, "L1"]),
    context=st.sampled_from(["Sample.Periodic", "Transaction.Begin"]),
    signed=st.integers(min_value=0, max_value=9).map(lambda n: n == 0),  # SignedData: no value
    tx=st.sampled_from([None, 7, 8]),  # SQLite keys them by session too
)

batches = st.lists(
    st.tuples(
        st.lists(samples, min_size=1, max_size=12),
        st.sampled_from(["insert", "unit", "failing-unit", "restart", "crash", "rebuild"]),
    ),
    min_size=1,
    max_size=12,
)


def as_tuple(aggregate: Aggregate | Any) -> tuple[Any, ...]:
    get = (lambda n: getattr(aggregate, n)) if isinstance(aggregate, Aggregate) else aggregate.get
    return (
        get("unit"),
        get("count"),
        pytest.approx(get("sum")),
        get("min"),
        get("max"),
        get("first_at"),
        get("first_value"),
        get("last_at"),
        get("last_value"),
        None if get("energy") is None else pytest.approx(get("energy"), abs=1e-6),
    )


async def stored_vs_recomputed(
    connection: AsyncConnection,
) -> tuple[dict[Any, Any], dict[Any, Any]]:
    raw = (await connection.execute(select(*rollup_store.RETURNED))).all()
    expected = {key: as_tuple(agg) for key, agg in recompute(raw).items()}
    stored = {}
    for r in await rollup_store.read_all(connection):
        key = (
            r["charge_point_id"],
            r["measurand"],
            r["resolution"],
            r["bucket"],
            r["connector_id"],
            r["phase"],
            r["location"],
        )
        if r["count"] == 0 and not r["energy"]:
            continue  # a correction that cancelled out
        stored[key] = as_tuple(r)
    return stored, expected


class Failed(Exception):
    pass


async def assert_keyed(connection: AsyncConnection, ids: list[int]) -> None:
    """SQLite: every value up to the key watermark has its keys (store/value_keys.py), and
    each charge point's and session's values read through them are the table's."""
    keyed = "(SELECT coalesce(max(keyed_id), 0) FROM rollup_watermark)"
    for table, column, having in (
        ("meter_value_keys", "charge_point_id", ""),
        ("meter_value_transaction_keys", "transaction_id", " AND mv.transaction_id IS NOT NULL"),
    ):
        missing = await connection.scalar(
            text(
                f"SELECT count(*) FROM meter_values AS mv WHERE mv.id <= {keyed}{having} "
                f"AND NOT EXISTS (SELECT 1 FROM {table} AS k WHERE k.{column} = mv.{column} "
                "AND k.timestamp = mv.timestamp AND k.id = mv.id)"
            )
        )
        assert missing == 0, table
    mv = meter_values.c
    for read, column, keys in (
        (charge_point_values, mv.charge_point_id, ids),
        (transaction_values, mv.transaction_id, [7, 8]),
    ):
        for key in keys:
            got = await connection.execute(read("sqlite", key, [mv.id, mv.timestamp]))
            expected = await connection.execute(
                select(mv.id, mv.timestamp).where(column == key).order_by(mv.timestamp, mv.id)
            )
            assert list(got) == list(expected)


async def scenario(
    url: str,
    plan: list[tuple[list[dict[str, Any]], str]],
    merge_interval: float = 0.0,
    writer_thread: bool = False,
) -> None:
    engine: AsyncEngine = create_engine(url)
    try:
        await upgrade(engine)
        async with writing(engine).begin() as connection:
            await connection.execute(delete(meter_rollups))
            await connection.execute(delete(meter_values))
            # A fresh start for the deferred merging too (another test below keeps it).
            await connection.execute(delete(rollup_watermark))
            ids = list(
                (await connection.execute(select(charge_points.c.id).order_by(charge_points.c.id)))
                .scalars()
                .all()
            )
            while len(ids) < 2:
                ids.append(
                    await admin.add_charge_point(
                        connection, f"ROLL{len(ids)}", now=BASE, hash_iterations=1000
                    )
                )
        writer = GroupCommitter(engine, interval=0.001)
        path = database_path(url) if writer_thread else None
        thread = SqliteWriter(path) if path is not None else None

        def maintainer() -> RollupMaintainer:
            sink = RollupMaintainer(engine.dialect.name, merge_interval=merge_interval)
            if thread is not None:  # batches of values alone commit in one trip (if deferred)
                sink.use_writer(thread, engine)
            return sink

        sink = maintainer()
        insert = sink.insert
        writer.sinks[insert] = sink
        await writer.start()
        try:
            pending = []
            for rows, how in plan:
                rows = [dict(r, charge_point_id=ids[r["charge_point_id"]]) for r in rows]
                if how == "insert":
                    # Several at once: they land in one batch, as from many charge points.
                    pending.append(asyncio.ensure_future(writer.insert(insert, rows)))
                    continue
                await asyncio.gather(*pending)
                pending = []
                if how in ("restart", "crash"):
                    if how == "restart":  # a clean stop merges what is deferred
                        await sink.settle(writer)
                    # A crash loses the deferred rollups; the next start counts them from raw
                    # (the writer is idle: nothing is in flight, as before a real start).
                    sink = maintainer()
                    writer.sinks[insert] = sink
                    await sink.recover(engine)
                    await writer.insert(insert, rows)
                elif how == "rebuild":
                    # While the writer holds deferred rollups: each value still counts once.
                    await writer.insert(insert, rows)
                    await rebuild(engine, BASE - timedelta(days=1), BASE + timedelta(days=5))
                elif how == "unit":
                    await writer.run(lambda c, rows=rows: writer.write_rows(c, insert, rows))
                else:

                    async def failing(c: AsyncConnection, rows: Any = rows) -> None:
                        await writer.write_rows(c, insert, rows)
                        raise Failed

                    with pytest.raises(Failed):
                        await writer.run(failing)
            await asyncio.gather(*pending)
        finally:
            await writer.stop()
            if thread is not None:
                await thread.close()
        async with engine.connect() as connection:
            stored, expected = await stored_vs_recomputed(connection)
            if engine.dialect.name == "sqlite":
                await assert_keyed(connection, ids)
        assert stored == expected
        # A rebuild from raw gives the same.
        await rebuild(engine, BASE - timedelta(days=1), BASE + timedelta(days=5))
        async with engine.connect() as connection:
            rebuilt, expected = await stored_vs_recomputed(connection)
        assert rebuilt == expected
    finally:
        await engine.dispose()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=batches,
    merge_interval=st.sampled_from([0.0, 0.003, 60.0]),
    writer_thread=st.booleans(),
)
def test_rollups_equal_a_recompute_from_raw(
    database_url: str, plan: Any, merge_interval: float, writer_thread: bool
) -> None:
    """``merge_interval`` > 0 defers merging on SQLite (PostgreSQL ignores it): merged now and
    then (3 ms) or only when asked (60 s: by a restart, the final stop, a crash's recovery).
    ``writer_thread``: with merging deferred, batches of values alone are committed in the
    writer thread's one trip and counted after the commit (store/sqlite_writer.py)."""
    # SQLite: a few values per slice of the key fill and a few rollup rows per slice of a
    # merge, so that rounds of both take several commits (and crashes and rebuilds fall in
    # the middle of them).
    slice_values, value_keys.SLICE_VALUES = value_keys.SLICE_VALUES, 3
    slice_rows, rollups_module.MERGE_SLICE_ROWS = rollups_module.MERGE_SLICE_ROWS, 2
    try:
        asyncio.run(scenario(database_url, plan, merge_interval, writer_thread))
    finally:
        value_keys.SLICE_VALUES = slice_values
        rollups_module.MERGE_SLICE_ROWS = slice_rows


def test_reset_aware_step() -> None:
    """CONFORMANCE M8: a register going down was reset; its step is the new reading."""
    assert step(100.0, 150.0) == 50.0
    assert step(150.0, 20.0) == 20.0
    assert step(150.0, -5.0) == 0.0


def test_out_of_order_reading_moves_energy_between_buckets(database_url: str) -> None:
    """A late reading splits its successor's step: the hours get what a recompute gives."""
    plan = [
        ([row(0, 1, 0, ENERGY, 1000.0)], "insert"),
        ([row(0, 1, 120, ENERGY, 3000.0)], "unit"),  # two hours later
        ([row(0, 1, 60, ENERGY, 1500.0)], "unit"),  # the offline queue's value, late
        ([row(0, 1, 180, ENERGY, 100.0)], "unit"),  # a reset
    ]
    asyncio.run(scenario(database_url, plan))
