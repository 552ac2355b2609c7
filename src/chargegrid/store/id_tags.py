"""Id tag rows (the central authorization list, OCPP 1.6 §3.4)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.records import IdTag
from chargegrid.store.tables import id_tags


class IdTagExists(Exception):
    pass


async def get(connection: AsyncConnection, id_tag: str) -> IdTag | None:
    row = (
        (await connection.execute(select(id_tags).where(id_tags.c.id_tag == id_tag)))
        .mappings()
        .first()
    )
    return IdTag.from_row(row) if row else None


async def add(
    connection: AsyncConnection,
    id_tag: str,
    *,
    now: datetime,
    status: str = "Accepted",
    expiry_date: datetime | None = None,
    parent_id_tag: str | None = None,
) -> int:
    if await get(connection, id_tag) is not None:
        raise IdTagExists(id_tag)
    result = await connection.execute(
        insert(id_tags)
        .values(
            id_tag=id_tag,
            status=status,
            expiry_date=expiry_date,
            parent_id_tag=parent_id_tag,
            created_at=now,
            updated_at=now,
        )
        .returning(id_tags.c.id)
    )
    return int(result.scalar_one())


async def update_fields(
    connection: AsyncConnection, id_tag: str, *, now: datetime, **values: Any
) -> bool:
    result = await connection.execute(
        update(id_tags).where(id_tags.c.id_tag == id_tag).values(updated_at=now, **values)
    )
    return result.rowcount > 0


async def remove(connection: AsyncConnection, id_tag: str) -> bool:
    result = await connection.execute(delete(id_tags).where(id_tags.c.id_tag == id_tag))
    return result.rowcount > 0


async def list_all(connection: AsyncConnection) -> list[IdTag]:
    rows = (await connection.execute(select(id_tags).order_by(id_tags.c.id_tag))).mappings()
    return [IdTag.from_row(row) for row in rows]
