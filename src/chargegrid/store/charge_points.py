"""Charge point rows: provisioning, lookup, boot data, connection state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.records import ChargePoint
from chargegrid.store.tables import charge_points

# BootNotification field -> column (OCPP 1.6 §6.2, CONFORMANCE L6)
BOOT_FIELDS = {
    "chargePointVendor": "vendor",
    "chargePointModel": "model",
    "chargePointSerialNumber": "serial_number",
    "chargeBoxSerialNumber": "charge_box_serial_number",
    "firmwareVersion": "firmware_version",
    "iccid": "iccid",
    "imsi": "imsi",
    "meterType": "meter_type",
    "meterSerialNumber": "meter_serial_number",
}


class ChargePointExists(Exception):
    pass


async def get(connection: AsyncConnection, identity: str) -> ChargePoint | None:
    row = (
        (
            await connection.execute(
                select(charge_points).where(charge_points.c.identity == identity)
            )
        )
        .mappings()
        .first()
    )
    return ChargePoint.from_row(row) if row else None


async def get_auth(
    connection: AsyncConnection, identity: str
) -> tuple[int, int, str, str | None] | None:
    """(id, security profile, registration status, key hash) for the handshake, or None."""
    row = (
        await connection.execute(
            select(
                charge_points.c.id,
                charge_points.c.security_profile,
                charge_points.c.registration_status,
                charge_points.c.auth_key_hash,
            ).where(charge_points.c.identity == identity)
        )
    ).first()
    return (row[0], row[1], row[2], row[3]) if row else None


async def add(
    connection: AsyncConnection,
    identity: str,
    *,
    now: datetime,
    auth_key_hash: str | None = None,
    security_profile: int = 0,
    registration_status: str = "Accepted",
    metadata: dict[str, Any] | None = None,
) -> int:
    if await get_auth(connection, identity) is not None:
        raise ChargePointExists(identity)
    result = await connection.execute(
        insert(charge_points)
        .values(
            identity=identity,
            auth_key_hash=auth_key_hash,
            security_profile=security_profile,
            registration_status=registration_status,
            connected=False,
            metadata=metadata or {},
            created_at=now,
            updated_at=now,
        )
        .returning(charge_points.c.id)
    )
    return int(result.scalar_one())


async def update_fields(
    connection: AsyncConnection, identity: str, *, now: datetime, **values: Any
) -> bool:
    result = await connection.execute(
        update(charge_points)
        .where(charge_points.c.identity == identity)
        .values(updated_at=now, **values)
    )
    return result.rowcount > 0


async def remove(connection: AsyncConnection, identity: str) -> bool:
    result = await connection.execute(
        delete(charge_points).where(charge_points.c.identity == identity)
    )
    return result.rowcount > 0


async def list_all(connection: AsyncConnection) -> list[ChargePoint]:
    rows = (
        await connection.execute(select(charge_points).order_by(charge_points.c.identity))
    ).mappings()
    return [ChargePoint.from_row(row) for row in rows]


async def record_boot(
    connection: AsyncConnection, charge_point_id: int, request: dict[str, Any], now: datetime
) -> None:
    values: dict[str, Any] = {column: request.get(field) for field, column in BOOT_FIELDS.items()}
    await connection.execute(
        update(charge_points)
        .where(charge_points.c.id == charge_point_id)
        .values(last_boot_at=now, last_seen_at=now, updated_at=now, **values)
    )


async def set_connected(
    connection: AsyncConnection, charge_point_id: int, connected: bool, now: datetime
) -> None:
    stamp = {"connected_at": now} if connected else {"disconnected_at": now}
    await connection.execute(
        update(charge_points)
        .where(charge_points.c.id == charge_point_id)
        .values(connected=connected, updated_at=now, **stamp)
    )


async def mark_all_disconnected(connection: AsyncConnection, now: datetime) -> None:
    """At start-up of a single node nothing can be connected yet."""
    await connection.execute(
        update(charge_points)
        .where(charge_points.c.connected.is_(True))
        .values(connected=False, disconnected_at=now, updated_at=now)
    )


async def touch(
    connection: AsyncConnection,
    seen: dict[int, datetime],
    heartbeats: dict[int, datetime],
) -> None:
    """Coalesced liveness (CONFORMANCE L4): one batched UPDATE per flush, not one per message."""
    c = charge_points.c
    if heartbeats:
        await connection.execute(
            update(charge_points)
            .where(c.id == bindparam("cp_id"))
            .values(last_seen_at=bindparam("seen"), last_heartbeat_at=bindparam("beat")),
            [
                {"cp_id": cp_id, "seen": seen.get(cp_id, at), "beat": at}
                for cp_id, at in heartbeats.items()
            ],
        )
    others = [{"cp_id": cp_id, "seen": at} for cp_id, at in seen.items() if cp_id not in heartbeats]
    if others:
        await connection.execute(
            update(charge_points)
            .where(c.id == bindparam("cp_id"))
            .values(last_seen_at=bindparam("seen")),
            others,
        )
