"""The shipped migrations build exactly the schema ``store/tables.py`` declares, on SQLite and
PostgreSQL (less what differs by database on purpose, checked here item by item), and
migrations 0006-0011 (the sample index re-ordered three times, one index dropped, SQLite's
meter_value_keys and meter_value_transaction_keys instead of the transaction index, their own
watermark, merge rounds) go down and up again with data in place. Nothing else checks that the two
descriptions of the schema agree."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.store.database import create_engine, writing
from chargegrid.store.migrate import alembic_config, upgrade
from chargegrid.store.tables import charge_points, metadata, meter_values, rollup_watermark

REST = [
    "connector_id",
    "coalesce(transaction_id, 0)",
    "coalesce(phase, '')",
    "location",
    "format",
    "context",
]
# tables.py declares PostgreSQL's order; SQLite's leads with time (migration 0008).
SAMPLE_COLUMNS = {
    "postgresql": ["charge_point_id", "timestamp", "measurand", *REST],
    "sqlite": ["timestamp", "charge_point_id", "measurand", *REST],
}
# What store/tables.py declares for one database only (migrations 0008, 0009).
ONLY_ON = {
    "ix_meter_values_timestamp": "postgresql",
    "ix_meter_values_transaction": "postgresql",
    "meter_value_keys": "sqlite",
    "meter_value_transaction_keys": "sqlite",
}


async def _sync(engine: AsyncEngine, work: Any) -> Any:
    async with writing(engine).begin() as connection:
        return await connection.run_sync(work)


def _differences(connection: Connection) -> list[Any]:
    """What autogenerate would change, less what tables.py declares for the other database
    only. It cannot reflect expression indexes (SQLAlchemy skips them with a warning), so the
    sample index is left to :func:`_sample_index`."""
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression")
        differences = list(compare_metadata(context, metadata))
    dialect = connection.dialect.name
    left = []
    for difference in differences:
        if "uq_meter_values_sample" in repr(difference):
            continue
        kind, item = difference[0], difference[1]
        if kind in ("add_index", "add_table") and ONLY_ON.get(item.name, dialect) != dialect:
            continue  # declared for the other database; its absence is checked by the callers
        left.append(difference)
    return left


def _dialect_only_parts(connection: Connection) -> dict[str, bool]:
    """Whether each database-specific part of the schema exists."""
    tables = set(inspect(connection).get_table_names())
    indexes = _index_names(connection)
    return {name: name in tables or name in indexes for name in ONLY_ON}


def _expected_parts(dialect: str) -> dict[str, bool]:
    return {name: only == dialect for name, only in ONLY_ON.items()}


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
        dialect = engine.dialect.name
        assert await _sync(engine, _dialect_only_parts) == _expected_parts(dialect)
        columns = await _sync(engine, _sample_index)
        assert columns == [c.lower() for c in SAMPLE_COLUMNS[dialect]]
        assert "ix_meter_values_cp_measurand_ts" not in await _sync(engine, _index_names)
    finally:
        await engine.dispose()


async def test_0011_is_not_undone_in_the_middle_of_a_merge_round(database_url: str) -> None:
    """0010 cannot say which slices of a round are merged: the way down refuses until a clean
    stop has ended the round."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        async with writing(engine).begin() as connection:
            await connection.execute(
                update(rollup_watermark).values(
                    merge_round_up_to=5, merge_round_slices=4, merge_round_done=1
                )
            )

        def down(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0010")

        with pytest.raises(RuntimeError, match="merge round is under way"):
            await _sync(engine, down)
        assert await _sync(engine, _differences) == []  # nothing changed
    finally:
        await engine.dispose()


async def test_0006_to_0011_go_down_and_up_with_values_in_place(database_url: str) -> None:
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
                        "transaction_id": None if minute == 1 else 7,
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

            # The first two values are counted in the rollups, the third is not yet; the key
            # fill has done the first (none is keyed here: only the second is, by 0010's way
            # down, then the first two by 0008's way up).
            await connection.execute(update(rollup_watermark).values(raw_id=2, keyed_id=1))
        dialect = engine.dialect.name

        def down_and_up(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0010")
            columns = {c["name"] for c in inspect(connection).get_columns("rollup_watermark")}
            assert not {c for c in columns if c.startswith("merge_round")}
            command.downgrade(config, "0009")
            columns = {c["name"] for c in inspect(connection).get_columns("rollup_watermark")}
            assert "keyed_id" not in columns
            if dialect == "sqlite":  # 0009 reads keys up to the rollup watermark
                keyed = connection.exec_driver_sql("SELECT id FROM meter_value_keys").scalars()
                assert keyed.all() == [2]
            command.downgrade(config, "0008")
            parts = _dialect_only_parts(connection)
            if dialect == "sqlite":
                assert parts["ix_meter_values_transaction"]
                assert parts["meter_value_keys"]
                assert not parts["meter_value_transaction_keys"]
            command.downgrade(config, "0007")
            leading = _sample_index(connection)[:3]
            assert leading == ["charge_point_id", "timestamp", "measurand"]
            assert _dialect_only_parts(connection) == _expected_parts("postgresql")
            command.downgrade(config, "0006")
            leading = _sample_index(connection)[:3]
            assert leading == ["charge_point_id", "measurand", "timestamp"]
            command.downgrade(config, "0005")
            assert "ix_meter_values_cp_measurand_ts" in _index_names(connection)
            command.upgrade(config, "head")

        await _sync(engine, down_and_up)
        assert await _sync(engine, _differences) == []
        assert await _sync(engine, _dialect_only_parts) == _expected_parts(dialect)
        assert await _sync(engine, _sample_index) == [c.lower() for c in SAMPLE_COLUMNS[dialect]]
        if dialect == "sqlite":  # the values up to the watermark are keyed, the rest later
            keyed = await _sync(
                engine,
                lambda c: (
                    c.exec_driver_sql("SELECT id FROM meter_value_keys ORDER BY id").scalars().all()
                ),
            )
            assert keyed == [1, 2]
            session_keys = await _sync(
                engine,
                lambda c: (
                    c.exec_driver_sql("SELECT id FROM meter_value_transaction_keys ORDER BY id")
                    .scalars()
                    .all()
                ),
            )
            assert session_keys == [1]  # value 2 has no transaction, value 3 is above
        keyed_id = await _sync(
            engine,
            lambda c: c.exec_driver_sql("SELECT keyed_id FROM rollup_watermark").scalar_one(),
        )
        assert keyed_id == 2  # 0010 starts the key watermark at the rollup watermark
        count = await _sync(
            engine, lambda c: c.exec_driver_sql("SELECT count(*) FROM meter_values").scalar_one()
        )
        assert count == 3
    finally:
        await engine.dispose()
