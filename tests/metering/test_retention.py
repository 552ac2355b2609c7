"""Retention: raw values, hourly and daily rollups purged by age in small batches; session totals
kept; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from chargegrid import admin
from chargegrid.metering.retention import Retention
from chargegrid.metering.rollups import RollupMaintainer
from chargegrid.store.database import create_engine
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.migrate import upgrade
from chargegrid.store.tables import meter_rollups, meter_values, transactions

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def now(self) -> datetime:
        return NOW


def value(cp: int, days_ago: float, n: int) -> dict[str, Any]:
    at = NOW - timedelta(days=days_ago, minutes=n)
    return {
        "charge_point_id": cp,
        "connector_id": 1,
        "transaction_id": None,
        "timestamp": at,
        "timestamp_raw": at.isoformat(),
        "measurand": "Power.Active.Import",
        "phase": None,
        "location": "Outlet",
        "context": "Sample.Periodic",
        "unit": "W",
        "raw_unit": "W",
        "value": float(n),
        "raw_value": str(n),
        "format": "Raw",
    }


async def test_purge_by_age_in_batches(database_url: str) -> None:
    engine = create_engine(database_url)
    await upgrade(engine)
    async with engine.begin() as connection:
        cp = await admin.add_charge_point(connection, "RET1", now=NOW, hash_iterations=1000)
        await connection.execute(
            insert(transactions).values(
                charge_point_id=cp,
                connector_id=1,
                id_tag="T",
                id_tag_status="Accepted",
                meter_start=0,
                started_at=NOW - timedelta(days=800),
                started_at_raw="x",
                meter_stop=10,
                stopped_at=NOW - timedelta(days=799),
                energy_wh=10.0,
                created_at=NOW,
                updated_at=NOW,
            )
        )
    writer = GroupCommitter(engine, interval=0.001)
    sink = RollupMaintainer(engine.dialect.name)
    writer.sinks[sink.insert] = sink
    await writer.start()
    try:
        ages = {1: 25, 40: 30, 100: 20, 400: 10}  # days ago: values (60 minutes apart or less)
        for days_ago, count in ages.items():
            await writer.insert(sink.insert, [value(cp, days_ago, n) for n in range(count)])
        retention = Retention(
            writer,
            Clock(),
            raw_days=30,
            hourly_days=30,
            daily_days=365,
            interval=3600,
            batch_size=7,  # many small batches
        )
        stats = await retention.purge()
        assert stats.raw == 30 + 20 + 10
        async with engine.connect() as connection:
            raw_left = await connection.scalar(select(func.count()).select_from(meter_values))
            oldest_hour = await connection.scalar(
                select(func.min(meter_rollups.c.bucket)).where(meter_rollups.c.resolution == "hour")
            )
            days = (
                await connection.execute(
                    select(meter_rollups.c.bucket).where(meter_rollups.c.resolution == "day")
                )
            ).scalars()
            day_ages = sorted((NOW - d).days for d in days)
            kept_sessions = await connection.scalar(select(func.count()).select_from(transactions))
        assert raw_left == 25
        assert oldest_hour is not None and NOW - oldest_hour <= timedelta(days=30)
        assert day_ages and max(day_ages) <= 365 and min(day_ages) <= 2
        assert 40 in day_ages or 39 in day_ages or 41 in day_ages  # daily kept past raw's end
        assert kept_sessions == 1  # session totals are never purged
        # A second run finds nothing.
        again = await retention.purge()
        assert (again.raw, again.hourly, again.daily) == (stats.raw, stats.hourly, stats.daily)
    finally:
        await writer.stop()
        await engine.dispose()
