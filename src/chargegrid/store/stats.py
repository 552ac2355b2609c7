"""Fleet figures: the reference guide's ``calculate_stats``."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, time
from typing import Any

from sqlalchemy import and_, exists, func, select, true
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.store.tables import charge_points, connectors, transactions


async def fleet_stats(
    engine: AsyncEngine, now: datetime, visible: Collection[int] | None = None
) -> dict[str, Any]:
    """Total, connected, available (connected and Available), charging (a connector is
    Charging), active sessions, and the kWh of sessions started since 00:00 UTC; over the charge
    points in ``visible`` (None: all)."""
    cp = charge_points.c
    t = transactions.c
    charging = exists().where(
        connectors.c.charge_point_id == cp.id, connectors.c.status == "Charging"
    )
    available = and_(cp.connected.is_(True), cp.status == "Available")
    midnight = datetime.combine(now.date(), time(0), tzinfo=now.tzinfo)
    fleet = select(
        func.count(),
        func.count().filter(cp.connected.is_(True)),
        func.count().filter(available),
        func.count().filter(charging),
    ).where(true() if visible is None else cp.id.in_(sorted(visible)))
    sessions = select(
        func.count().filter(t.stopped_at.is_(None)),
        func.coalesce(func.sum(t.energy_wh).filter(t.started_at >= midnight), 0.0),
    ).where(true() if visible is None else t.charge_point_id.in_(sorted(visible)))
    async with engine.connect() as connection:
        total, connected, available_count, charging_count = (await connection.execute(fleet)).one()
        active, energy_wh = (await connection.execute(sessions)).one()
    return {
        "total": total,
        "connected": connected,
        "available": available_count,
        "charging": charging_count,
        "active_sessions": active,
        "energy_today_kwh": round(float(energy_wh or 0.0) / 1000.0, 6),
    }
