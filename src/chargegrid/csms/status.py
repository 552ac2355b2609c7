"""StatusNotification (OCPP 1.6 §4.9; CONFORMANCE L5): connector rows; connector 0 is the CP."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.bus import channels
from chargegrid.clock import isoformat_z, parse_timestamp
from chargegrid.csms.context import Context
from chargegrid.store.tables import charge_points, connectors


async def status_notification(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    charge_point = ctx.charge_point
    now = services.clock.now()
    raw_timestamp: str | None = request.get("timestamp")
    status_at = parse_timestamp(raw_timestamp) if raw_timestamp else None
    connector_id: int = request["connectorId"]
    row = {
        "charge_point_id": charge_point.id,
        "connector_id": connector_id,
        "status": request["status"],
        "error_code": request["errorCode"],
        "info": request.get("info"),
        "vendor_id": request.get("vendorId"),
        "vendor_error_code": request.get("vendorErrorCode"),
        "status_at": status_at,
        "status_at_raw": raw_timestamp,
        "updated_at": now,
    }

    async def unit(connection: AsyncConnection) -> None:
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(connectors).values(row)
        changes = {k: v for k, v in row.items() if k not in ("charge_point_id", "connector_id")}
        await connection.execute(
            statement.on_conflict_do_update(
                index_elements=["charge_point_id", "connector_id"], set_=changes
            )
        )
        if connector_id == 0:
            await connection.execute(
                update(charge_points)
                .where(charge_points.c.id == charge_point.id)
                .values(status=row["status"], error_code=row["error_code"], updated_at=now)
            )

    async def publish(_result: None) -> None:
        bus = services.bus
        channel = channels.charge_point(charge_point.identity, channels.STATUS)
        fleet = channels.fleet(channels.STATUS)
        if bus.has_subscribers(channel) or bus.has_subscribers(fleet):
            # The reference guide's status payload.
            message = {
                "connector_id": connector_id,
                "status": request["status"],
                "error_code": request["errorCode"],
                "info": request.get("info"),
                "timestamp": isoformat_z(status_at or now),
            }
            await bus.publish(channel, message)
            await bus.publish(fleet, {"charge_point": charge_point.identity, **message})

    # late: stored after the charge point was answered with a CALLERROR (a stalled database),
    # which it need not resend (only transaction-related messages are retried): the status is
    # still announced.
    await services.writer.run(unit, late=publish)
    await publish(None)
    return {}
