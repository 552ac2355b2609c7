"""Reading one charge point's or one session's values (store/value_keys.py) against a
brute-force filter of the table, on SQLite (keys up to the watermark + the values above it) and
PostgreSQL; SQLite's query plans; and the keys kept in step by the watermark, retention and
deletion."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chargegrid import admin
from chargegrid.api.routes import sessions as sessions_api
from chargegrid.metering.retention import purge_raw_batch
from chargegrid.store import rollups as rollup_store
from chargegrid.store import value_keys
from chargegrid.store.database import create_engine, writing
from chargegrid.store.migrate import upgrade
from chargegrid.store.sqlite_writer import database_path
from chargegrid.store.tables import (
    charge_points,
    meter_value_keys,
    meter_value_transaction_keys,
    meter_values,
    rollup_watermark,
    transactions,
)
from chargegrid.store.value_keys import charge_point_values, transaction_values

BASE = datetime(2026, 3, 1, tzinfo=UTC)
MEASURANDS = ["Energy.Active.Import.Register", "Power.Active.Import", "Current.Import"]


def _value(
    cp: int, minute: int, measurand: str, value: float, transaction_id: int | None = None
) -> dict[str, Any]:
    at = BASE + timedelta(minutes=minute)
    return {
        "charge_point_id": cp,
        "connector_id": 1,
        "transaction_id": transaction_id,
        "timestamp": at,
        "timestamp_raw": at.isoformat(),
        "measurand": measurand,
        "phase": None,
        "location": "Outlet",
        "context": "Sample.Periodic",
        "unit": "W",
        "raw_unit": "W",
        "value": value,
        "raw_value": str(value),
        "format": "Raw",
    }


def _session(n: int, minute: int) -> int | None:
    """The transaction id of charge point ``n``'s values at ``minute``: sessions of 15 minutes
    with 5 between them; the third charge point's first session reports the first one's id
    (a charger may send a transaction id it was never given)."""
    if minute % 20 >= 15:
        return None
    return 1000 * (0 if n == 2 and minute < 20 else n) + minute // 20


async def _engine_with_values(url: str, count: int) -> tuple[AsyncEngine, list[int]]:
    """Three charge points' values in random order, most in a session; the watermark
    advanced over the first two thirds (keyed on SQLite), the rest above it."""
    engine = create_engine(url)
    await upgrade(engine)
    rng = random.Random(7)
    async with writing(engine).begin() as connection:
        ids = [
            await admin.add_charge_point(connection, f"KEYS{n}", now=BASE, hash_iterations=1000)
            for n in range(3)
        ]
        rows = [
            _value(cp, minute, measurand, float(rng.randrange(1000)), _session(n, minute))
            for n, cp in enumerate(ids)
            for minute in range(count)
            for measurand in MEASURANDS
        ]
        rng.shuffle(rows)
        cut = len(rows) * 2 // 3
        await connection.execute(insert(meter_values), rows[:cut])
        await rollup_store.advance_watermark(connection)
        await connection.execute(insert(meter_values), rows[cut:])
    return engine, ids


def _expected(rows: list[Any], keep: Callable[[Any], bool], newest_first: bool) -> list[int]:
    chosen = sorted((r for r in rows if keep(r)), key=lambda r: (r.timestamp, r.id))
    if newest_first:
        chosen.reverse()
    return [r.id for r in chosen]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_reads_equal_a_filter_of_the_table(database_url: str) -> None:
    engine, ids = await _engine_with_values(database_url, 60)
    mv = meter_values.c
    try:
        async with engine.connect() as connection:
            dialect = connection.dialect.name
            if dialect == "sqlite":
                keyed = await connection.scalar(select(meter_value_keys.c.id).limit(1))
                assert keyed is not None  # both arms have something to read
            every = (await connection.execute(select(meter_values))).all()
            since, until = BASE + timedelta(minutes=10), BASE + timedelta(minutes=40)
            cases: list[tuple[dict[str, Any], Callable[[Any], bool]]] = [
                ({}, lambda r: True),
                (
                    {"time": lambda ts: [ts >= since, ts < until]},
                    lambda r: since <= r.timestamp < until,
                ),
                (
                    {"where": [mv.measurand == "Power.Active.Import"]},
                    lambda r: r.measurand == "Power.Active.Import",
                ),
                ({"time": lambda ts: [ts < since]}, lambda r: r.timestamp < since),
            ]
            sessions = sorted({r.transaction_id for r in every if r.transaction_id is not None})
            assert 0 in sessions and len(sessions) > 6
            by_session = [
                *cases,
                ({"where": [mv.charge_point_id == ids[2]]}, lambda r: r.charge_point_id == ids[2]),
            ]
            reads = [(charge_point_values, "charge_point_id", cp, cases) for cp in ids] + [
                (transaction_values, "transaction_id", session, by_session)
                for session in [*sessions, 99_999]  # and one no value carries
            ]
            for read, column, key, its_cases in reads:
                for options, keep in its_cases:
                    for newest_first in (False, True):
                        for limit in (None, 1, 7):
                            query = read(
                                dialect, key, newest_first=newest_first, limit=limit, **options
                            )
                            got = [r.id for r in await connection.execute(query)]
                            expected = _expected(
                                every,
                                lambda r, c=column, k=key, keep=keep: (
                                    getattr(r, c) == k and keep(r)
                                ),
                                newest_first,
                            )
                            assert got == expected[:limit], (column, key, options, newest_first)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_each_sessions_newest_reading_in_one_correlated_query(database_url: str) -> None:
    """What the session lists show as energy so far: per session, the newest register reading
    (the largest of those sharing its timestamp), one read per row of an enclosing query."""
    engine, ids = await _engine_with_values(database_url, 50)
    mv = meter_values.c
    try:
        async with writing(engine).begin() as connection:
            every = (await connection.execute(select(meter_values))).all()
            sessions = sorted({r.transaction_id for r in every if r.transaction_id is not None})
            await connection.execute(
                insert(transactions),
                [
                    {
                        "id": session,
                        "charge_point_id": ids[session // 1000],
                        "connector_id": 1,
                        "id_tag": "TAG",
                        "id_tag_status": "Accepted",
                        "meter_start": 0,
                        "started_at": BASE + timedelta(seconds=session),
                        "started_at_raw": BASE.isoformat(),
                        "created_at": BASE,
                        "updated_at": BASE,
                    }
                    for session in sessions
                ],
            )
            energy_so_far = await sessions_api.energy_so_far(
                connection, [(session, 0) for session in sessions]
            )
            newest = transaction_values(
                connection.dialect.name,
                transactions.c.id,
                [mv.timestamp, mv.value],
                where=[mv.measurand == MEASURANDS[0]],
                newest_first=True,
                then_by="value",
                limit=1,
                correlate=transactions,
            ).subquery()
            got = dict(
                (
                    await connection.execute(
                        select(transactions.c.id, select(newest.c.value).scalar_subquery())
                    )
                ).all()
            )
        expected = {}
        for session in sessions:
            readings = [
                (r.timestamp, r.value)
                for r in every
                if r.transaction_id == session and r.measurand == MEASURANDS[0]
            ]
            expected[session] = max(readings)[1]
        assert got == expected
        assert energy_so_far == {s: value / 1000.0 for s, value in expected.items()}
    finally:
        await engine.dispose()


async def _plan(connection: AsyncConnection, query: Any) -> str:
    compiled = query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
    rows = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
    return " | ".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_reads_by_keys_and_rowid_never_by_scanning_the_time_index(
    database_url: str,
) -> None:
    """The keyed arm walks the keys' primary key; the fresh arm reads the rowid range above the
    watermark. Neither scans the sample index led by time (every charge point's values)."""
    engine, ids = await _engine_with_values(database_url, 5)
    mv = meter_values.c
    before: Callable[[ColumnElement[Any]], list[ColumnElement[bool]]] = lambda ts: [  # noqa: E731
        ts < BASE + timedelta(minutes=3)
    ]
    try:
        async with engine.connect() as connection:
            for read, key, keys in (
                (charge_point_values, ids[0], "meter_value_keys (charge_point_id=?"),
                (transaction_values, 1000, "meter_value_transaction_keys (transaction_id=?"),
            ):
                for query in (
                    read("sqlite", key, limit=100),
                    read("sqlite", key, newest_first=True, limit=1),
                    read(
                        "sqlite",
                        key,
                        [mv.timestamp, mv.value],
                        time=before,
                        where=[mv.measurand == MEASURANDS[0]],
                        newest_first=True,
                        then_by="value",
                        limit=1,
                    ),
                ):
                    plan = await _plan(connection, query)
                    assert "MERGE (UNION ALL)" in plan
                    assert f"SEARCH {keys.replace(' (', ' USING PRIMARY KEY (')}" in plan
                    assert "USING INTEGER PRIMARY KEY (rowid>?)" in plan
                    assert "uq_meter_values_sample" not in plan
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_key_left_behind_by_a_deleted_value_is_ignored(database_url: str) -> None:
    """Keys are deleted with their values by every path that deletes values; if one were left
    behind and its id reused, the read still returns each value once, as it is stored."""
    engine, ids = await _engine_with_values(database_url, 4)
    try:
        async with writing(engine).begin() as connection:
            await connection.execute(delete(meter_values))  # the keys stay
            await connection.execute(update(rollup_watermark).values(raw_id=0, keyed_id=0))
            # Reused ids: one charge point's values again, other timestamps, none keyed.
            # The same session id as the deleted values of that charge point had.
            rows = [_value(ids[1], 100 + m, MEASURANDS[1], float(m), 1000) for m in range(20)]
            await connection.execute(insert(meter_values), rows)
        stored = [(r["timestamp"], r["value"]) for r in rows]
        async with engine.connect() as connection:
            got = list(await connection.execute(charge_point_values("sqlite", ids[1])))
            assert [(r.timestamp, r.value) for r in got] == stored
            session = list(await connection.execute(transaction_values("sqlite", 1000)))
            assert [(r.timestamp, r.value) for r in session] == stored
            assert list(await connection.execute(charge_point_values("sqlite", ids[0]))) == []
            assert list(await connection.execute(transaction_values("sqlite", 0))) == []
        async with writing(engine).begin() as connection:  # now keyed: the same once more
            await rollup_store.advance_watermark(connection)
            again = list(await connection.execute(charge_point_values("sqlite", ids[1])))
            assert [r.id for r in again] == [r.id for r in got]
            again = list(await connection.execute(transaction_values("sqlite", 1000)))
            assert [r.id for r in again] == [r.id for r in got]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_retention_and_charge_point_deletion_take_the_keys_along(database_url: str) -> None:
    engine, ids = await _engine_with_values(database_url, 30)
    keys = meter_value_keys.c
    session_keys = meter_value_transaction_keys.c
    try:
        async with writing(engine).begin() as connection:
            await rollup_store.advance_watermark(connection)  # every value keyed
            cutoff = BASE + timedelta(minutes=10)
            deleted = 0
            while batch := await purge_raw_batch(connection, cutoff, 25):
                deleted += batch
            assert deleted == 3 * 10 * len(MEASURANDS)
            left = await connection.scalar(select(keys.id).where(keys.timestamp < cutoff).limit(1))
            assert left is None
            remaining = (await connection.execute(select(keys.id).order_by(keys.id))).scalars()
            stored = (await connection.execute(select(meter_values.c.id).order_by("id"))).scalars()
            assert list(remaining) == list(stored)
            remaining = (
                await connection.execute(select(session_keys.id).order_by(session_keys.id))
            ).scalars()
            in_sessions = await connection.execute(
                select(meter_values.c.id)
                .where(meter_values.c.transaction_id.is_not(None))
                .order_by("id")
            )
            assert list(remaining) == list(in_sessions.scalars())

            await connection.execute(delete(charge_points).where(charge_points.c.id == ids[0]))
            for table in (keys, session_keys):
                orphans = await connection.scalar(
                    select(table.id).where(table.charge_point_id == ids[0]).limit(1)
                )
                assert orphans is None
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_written_out_register_window_equals_the_general_one(database_url: str) -> None:
    """The rollups' read-back on SQLite (one hand-written statement over the keys, the values
    above the watermark read once for all series) returns what the general query returns."""
    engine, ids = await _engine_with_values(database_url, 40)
    try:
        async with writing(engine).begin() as connection:
            # Readings sharing a timestamp with another context: the neighbour is the last by
            # value. One keyed (below the watermark), one above it.
            twin = _value(ids[0], 5, MEASURANDS[0], 5000.0)
            twin["context"] = "Transaction.Begin"
            await connection.execute(insert(meter_values), [twin])
            await rollup_store.advance_watermark(connection)
            late = _value(ids[0], 25, MEASURANDS[0], 9000.0)
            late["context"] = "Transaction.Begin"
            await connection.execute(insert(meter_values), [late])
            fresh = await rollup_store.fresh_readings(connection, set(ids))
            assert fresh
            checked = 0
            for cp in ids:
                for measurand in MEASURANDS:
                    series = (cp, 1, measurand, "", "Outlet")
                    for first, last in ((0, 0), (5, 5), (5, 26), (25, 25), (39, 39), (-1, 3)):
                        window = (BASE + timedelta(minutes=first), BASE + timedelta(minutes=last))
                        general = await rollup_store.register_window(connection, series, *window)
                        written = await rollup_store.register_window(
                            connection, series, *window, fresh=fresh.get(series, [])
                        )
                        assert written == general, (series, first, last)
                        checked += bool(general[0])
            assert checked
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("queued", [False, True], ids=["scanned", "queued"])
async def test_the_fill_keys_a_slice_per_call_and_moves_the_watermark_last(
    database_url: str, monkeypatch: pytest.MonkeyPatch, queued: bool
) -> None:
    """fill_step on the writer thread's kind of connection (plain sqlite3): a round takes the
    values stored when it starts, keys one slice of charge points (id modulo slices) per call
    at its due time, spread over the interval, and moves the key watermark with the last.
    Queued: the same, each slice looking up the ids a KeyQueue holds instead of scanning."""
    monkeypatch.setattr(value_keys, "SLICE_VALUES", 25)
    engine, ids = await _engine_with_values(database_url, 30)  # 270 values, 1/3 above
    await engine.dispose()
    path = database_path(database_url)
    assert path is not None
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        scans = 0

        def execute(sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            nonlocal scans
            scans += sql in value_keys._SLICE
            return connection.execute(sql, parameters).fetchall()

        queue = value_keys.KeyQueue() if queued else None
        if queue is not None:
            stored = execute(
                "SELECT id, charge_point_id FROM meter_values WHERE id > "
                "(SELECT keyed_id FROM rollup_watermark) ORDER BY id",
                (),
            )
            queue.add(stored[0][0], [charge_point for _id, charge_point in stored])

        def keyed_id() -> int:
            return int(execute("SELECT keyed_id FROM rollup_watermark", ())[0][0])

        def keyed_charge_points(low: int, high: int) -> set[int]:
            rows = execute(
                "SELECT DISTINCT charge_point_id FROM meter_value_keys WHERE id > ? AND id <= ?",
                (low, high),
            )
            return {row[0] for row in rows}

        start = keyed_id()
        newest = int(execute("SELECT max(id) FROM meter_values", ())[0][0])
        assert newest - start == 90
        connection.execute("BEGIN IMMEDIATE")
        state = value_keys.fill_step(execute, value_keys.KeyFill(start), 100.0, 1.0, queue)
        connection.execute("COMMIT")
        assert (state.target, state.slices, state.done) == (newest, 4, 1)  # 90 / 25 -> 4
        assert keyed_id() == start  # not until the last slice
        assert keyed_charge_points(start, newest) == {cp for cp in ids if cp % 4 == 0}
        assert state.covered == newest
        # Values stored meanwhile wait for the next round.
        connection.execute(
            "INSERT INTO meter_values (charge_point_id, connector_id, timestamp, timestamp_raw, "
            "measurand, location, context, unit, raw_unit, value, raw_value, format) "
            f"SELECT charge_point_id, connector_id, '2027-01-01 00:00:00.000000', timestamp_raw, "
            "measurand, location, context, unit, raw_unit, value, raw_value, format "
            f"FROM meter_values WHERE id = {newest}"
        )
        assert value_keys.fill_step(execute, state, 100.249, 1.0) is state  # not yet
        state = value_keys.fill_step(execute, state, 100.25, 1.0)
        assert state.done == 2
        state = value_keys.fill_step(execute, state, 100.7, 1.0)  # late (due at 100.5)
        assert state.done == 3
        # Behind time, the next slice (due at 100.75) waits half the spacing after the one
        # before it rather than running in the very next commit.
        assert value_keys.fill_step(execute, state, 100.82, 1.0) is state
        state = value_keys.fill_step(execute, state, 100.825, 1.0)
        assert state == value_keys.KeyFill(newest, started=100.0, last=100.825)
        assert keyed_id() == newest
        assert keyed_charge_points(start, newest) == set(ids)
        assert keyed_charge_points(newest, newest + 1) == set()
        missing = execute(
            "SELECT count(*) FROM meter_values AS mv WHERE mv.id <= ? AND NOT EXISTS "
            "(SELECT 1 FROM meter_value_keys AS k WHERE k.id = mv.id "
            "AND k.charge_point_id = mv.charge_point_id AND k.timestamp = mv.timestamp)",
            (newest,),
        )
        assert missing == [(0,)]
        # The next round starts an interval after this one started; with nothing new a round
        # is not started at all.
        assert value_keys.fill_step(execute, state, 100.99, 1.0) is state
        state = value_keys.fill_step(execute, state, 101.0, 1.0)
        assert state == value_keys.KeyFill(newest + 1, started=101.0, last=101.0)  # one slice
        assert keyed_id() == newest + 1
        assert value_keys.fill_step(execute, state, 102.5, 1.0) == value_keys.KeyFill(
            newest + 1, started=102.5, last=101.0
        )
        # Queued, the first round looked its values up; the second was not in the queue.
        assert scans == (2 if queued else 2 * 5)
    finally:
        connection.close()


def test_a_key_queue_lists_a_round_only_if_it_holds_every_id_of_it() -> None:
    """KeyQueue: the ids of contiguous inserts by charge point (slice: id modulo slices); a
    gap (values stored another way), an id given again (a rolled-back transaction's) or a
    round that starts below what it holds makes the round scan instead."""
    queue = value_keys.KeyQueue()
    queue.add(1, [10, 11, 10])  # ids 1-3
    queue.add(4, [11])
    queue.add(5, [12])  # above the round below: kept for the next
    assert queue.take(0, 4, 2) == ("[1,3]", "[2,4]")
    assert queue.take(4, 5, 3) == ("[5]", "[]", "[]")
    queue.add(6, [10, 10])
    queue.add(9, [11])  # 7 and 8 came another way
    assert queue.take(5, 9, 1) is None
    queue.add(10, [11])
    assert queue.take(9, 10, 1) == ("[10]",)
    queue.add(11, [10, 11])  # rolled back; then 11 is stored another way, 12 here again
    queue.add(12, [10])
    assert queue.take(10, 12, 1) is None
    queue.add(13, [10, 11])  # rolled back, then given again: a row says whose it is
    queue.add(13, [12, 11])
    assert queue.take(12, 14, 2) == ("[13]", "[14]")
    # A round whose start is below what is held (its ids were taken by a round that then
    # rolled back) scans; one starting where the queue starts skips ids already keyed.
    queue.add(15, [10, 10, 10])
    assert queue.take(13, 17, 1) is None
    queue.add(18, [10, 10])
    assert queue.take(18, 19, 1) == ("[19]",)
    assert (queue.listed_rounds, queue.scanned_rounds) == (5, 3)
