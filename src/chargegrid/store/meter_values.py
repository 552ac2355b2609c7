"""Meter value rows: the idempotent batch insert and the reads behind the query API."""

from __future__ import annotations

from sqlalchemy import Insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.tables import meter_values


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
    rows = await connection.execute(
        select(meter_values.c.value)
        .where(
            meter_values.c.transaction_id == transaction_id,
            meter_values.c.measurand == "Energy.Active.Import.Register",
            meter_values.c.value.is_not(None),
            meter_values.c.location == "Outlet",
            meter_values.c.phase.is_(None),  # the total register, not a per-phase one
        )
        .order_by(meter_values.c.timestamp, meter_values.c.id)
    )
    return [float(r[0]) for r in rows]
