"""Coalesced liveness (store/charge_points.touch): one UPDATE per chunk of charge points, on
SQLite and PostgreSQL, read back as stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from chargegrid import admin
from chargegrid.store import charge_points as cp_store
from chargegrid.store.database import create_engine, writing
from chargegrid.store.migrate import upgrade
from chargegrid.store.tables import charge_points

BASE = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize("chunk", [5000, 2])
async def test_touch_writes_each_charge_points_times(
    database_url: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cp_store, "_TOUCH_CHUNK", chunk)  # several statements per kind
    engine = create_engine(database_url)
    await upgrade(engine)
    try:
        async with writing(engine).begin() as connection:
            ids = [
                await admin.add_charge_point(
                    connection, f"TOUCH{n}", now=BASE, hash_iterations=1000
                )
                for n in range(6)
            ]
        at = [BASE + timedelta(seconds=n, microseconds=n) for n in range(6)]
        seen = {ids[n]: at[n] for n in (0, 1, 2, 3, 4)}
        # A heartbeat of a charge point not in ``seen`` is its last-seen time too; one of
        # a charge point deleted meanwhile changes nothing.
        heartbeats = {ids[1]: at[1] - timedelta(seconds=30), ids[3]: at[3], ids[5]: at[5]}
        heartbeats[10_000] = BASE
        seen[10_001] = BASE
        async with writing(engine).begin() as connection:
            await cp_store.touch(connection, seen, heartbeats)
        async with engine.connect() as connection:
            c = charge_points.c
            rows = {
                row.id: (row.last_seen_at, row.last_heartbeat_at)
                for row in await connection.execute(
                    select(c.id, c.last_seen_at, c.last_heartbeat_at)
                )
            }
        assert rows == {
            ids[0]: (at[0], None),
            ids[1]: (at[1], at[1] - timedelta(seconds=30)),
            ids[2]: (at[2], None),
            ids[3]: (at[3], at[3]),
            ids[4]: (at[4], None),
            ids[5]: (at[5], at[5]),
        }
    finally:
        await engine.dispose()
