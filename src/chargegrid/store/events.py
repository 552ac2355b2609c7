"""The per-charge-point event log: anomalies and notable events (DESIGN.md guarantee 5)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.records import Event
from chargegrid.store.tables import events


class Category(StrEnum):
    ANOMALY = "anomaly"
    NOTIFICATION = "notification"
    DATA_TRANSFER = "data_transfer"
    SECURITY = "security"


def row(
    charge_point_id: int,
    category: Category,
    type_: str,
    message: str,
    now: datetime,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``events`` row, for :func:`record` or a batched insert."""
    return {
        "charge_point_id": charge_point_id,
        "timestamp": now,
        "category": str(category),
        "type": type_,
        "message": message,
        "payload": payload or {},
    }


async def record(connection: AsyncConnection, event_row: dict[str, Any]) -> None:
    await connection.execute(insert(events), [event_row])


async def for_charge_point(
    connection: AsyncConnection,
    charge_point_id: int,
    *,
    limit: int = 100,
    category: str | None = None,
) -> list[Event]:
    query = select(events).where(events.c.charge_point_id == charge_point_id)
    if category is not None:
        query = query.where(events.c.category == category)
    rows = (await connection.execute(query.order_by(events.c.id.desc()).limit(limit))).mappings()
    return [Event.from_row(r) for r in rows]
