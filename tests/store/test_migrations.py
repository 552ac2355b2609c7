"""The shipped migrations build exactly the schema ``store/tables.py`` declares, on SQLite and
PostgreSQL, and migrations 0006 and 0007 (the sample index re-ordered twice, one index dropped)
go down and up again with data in place. Nothing else checks that the two descriptions of the
schema agree."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.store.database import create_engine, writing
from chargegrid.store.migrate import alembic_config, upgrade
from chargegrid.store.tables import charge_points, metadata, meter_values

SAMPLE_COLUMNS = [
    "charge_point_id",
    "timestamp",
    "measurand",
    "connector_id",
    "coalesce(transaction_id, 0)",
    "coalesce(phase, '')",
    "location",
    "format",
    "context",
]


async def _sync(engine: AsyncEngine, work: Any) -> Any:
    async with writing(engine).begin() as connection:
        return await connection.run_sync(work)


def _differences(connection: Connection) -> list[Any]:
    """What autogenerate would change. It cannot reflect expression indexes (SQLAlchemy skips
    them with a warning), so the sample index is left to :func:`_sample_index`."""
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression")
        differences = list(compare_metadata(context, metadata))
    return [d for d in differences if "uq_meter_values_sample" not in repr(d)]


def _index_names(connection: Connection) -> set[str]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        return {str(i["name"]) for i in inspect(connection).get_indexes("meter_values")}


def _sample_index(connection: Connection) -> list[str]:
    """The unique sample index's columns and expressions, in order, as the database has it."""
    if connection.dialect.name == "sqlite":
        sql = connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE name = 'uq_meter_values_sample'"
        ).scalar_one()
    else:
        sql = connection.exec_driver_sql(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_meter_values_sample'"
        ).scalar_one()
    inside = sql[sql.index("(") + 1 : sql.rindex(")")]
    parts, depth, current = [], 0, ""
    for char in inside:  # split on top-level commas only
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    parts.append(current.strip())
    # PostgreSQL spells the expressions its own way: COALESCE(transaction_id, 0), ''::text.
    return [
        " ".join(
            p.replace("::text", "").replace("::character varying", "").replace('"', "").split()
        ).lower()
        for p in parts
    ]


async def test_migrations_build_the_declared_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        assert await _sync(engine, _differences) == []
        columns = await _sync(engine, _sample_index)
        assert columns == [c.lower() for c in SAMPLE_COLUMNS]
        assert "ix_meter_values_cp_measurand_ts" not in await _sync(engine, _index_names)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_series_range_query_uses_the_sample_index(database_url: str) -> None:
    """What ix_meter_values_cp_measurand_ts served, the re-ordered unique index serves."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        plan = await _sync(
            engine,
            lambda c: " ".join(
                str(row[-1])
                for row in c.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT timestamp, value FROM meter_values "
                    "WHERE charge_point_id = 1 AND measurand = 'Power.Active.Import' "
                    "AND timestamp >= '2026-01-01' AND timestamp < '2026-01-02'"
                )
            ),
        )
        assert "uq_meter_values_sample" in plan
        assert "charge_point_id=? AND timestamp>? AND timestamp<?" in plan
    finally:
        await engine.dispose()


async def test_0006_and_0007_go_down_and_up_with_values_in_place(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        at = datetime(2026, 1, 1, tzinfo=UTC)
        async with writing(engine).begin() as connection:
            cp = await connection.scalar(
                insert(charge_points)
                .values(identity="MIG1", created_at=at, updated_at=at)
                .returning(charge_points.c.id)
            )
            await connection.execute(
                insert(meter_values),
                [
                    {
                        "charge_point_id": cp,
                        "connector_id": 1,
                        "timestamp": at + timedelta(minutes=minute),
                        "timestamp_raw": f"2026-01-01T00:0{minute}:00Z",
                        "measurand": "Energy.Active.Import.Register",
                        "location": "Outlet",
                        "context": "Sample.Periodic",
                        "unit": "Wh",
                        "value": float(minute),
                        "raw_value": str(minute),
                        "raw_unit": "Wh",
                        "format": "Raw",
                    }
                    for minute in range(3)
                ],
            )

        def down_and_up(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0006")
            leading = _sample_index(connection)[:3]
            assert leading == ["charge_point_id", "measurand", "timestamp"]
            command.downgrade(config, "0005")
            assert "ix_meter_values_cp_measurand_ts" in _index_names(connection)
            command.upgrade(config, "head")

        await _sync(engine, down_and_up)
        assert await _sync(engine, _differences) == []
        assert await _sync(engine, _sample_index) == [c.lower() for c in SAMPLE_COLUMNS]
        count = await _sync(
            engine, lambda c: c.exec_driver_sql("SELECT count(*) FROM meter_values").scalar_one()
        )
        assert count == 3
    finally:
        await engine.dispose()
