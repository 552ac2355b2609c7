"""Meter value rows: the idempotent batch insert and the reads behind the query API."""

from __future__ import annotations

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.tables import meter_values
from chargegrid.store.value_keys import transaction_values


def insert_statement(dialect: str) -> Insert:
    """``INSERT .. ON CONFLICT DO NOTHING``: a replayed sample is stored once (guarantee 2).

    No conflict target: the unique index is on expressions (coalesce), and both SQLite and
    PostgreSQL apply a target-less DO NOTHING to every unique index.
    """
    if dialect == "postgresql":
        return postgresql.insert(meter_values).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(meter_values).on_conflict_do_nothing()
    raise ValueError(f"unsupported database dialect {dialect!r}")


async def energy_register_readings(connection: AsyncConnection, transaction_id: int) -> list[float]:
    """The transaction's Energy.Active.Import.Register readings (Wh) at the outlet, oldest first."""
    mv = meter_values.c
    rows = await connection.execute(
        transaction_values(
            connection.dialect.name,
            transaction_id,
            [mv.timestamp, mv.id, mv.value],
            where=[
                mv.measurand == "Energy.Active.Import.Register",
                mv.value.is_not(None),
                mv.location == "Outlet",
                mv.phase.is_(None),  # the total register, not a per-phase one
            ],
        )
    )
    return [float(r.value) for r in rows]
