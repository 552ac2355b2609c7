"""BootNotification and Heartbeat (OCPP 1.6 §4.2, §4.6; CONFORMANCE L1-L3, L6)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.bus import channels
from chargegrid.clock import isoformat_z
from chargegrid.csms.context import Context
from chargegrid.csms.decisions import decide_boot
from chargegrid.store import charge_points as cp_store
from chargegrid.store.tables import charge_points


async def boot_notification(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    charge_point = ctx.charge_point
    now = services.clock.now()

    decided = await decide_boot(services.boot_policy, charge_point.identity, request)

    async def unit(connection: AsyncConnection) -> str | None:
        await cp_store.record_boot(connection, charge_point.id, request, now)
        if decided is not None:
            # The application's decision is kept, so a reconnect without a boot knows it.
            await connection.execute(
                update(charge_points)
                .where(charge_points.c.id == charge_point.id)
                .values(registration_status=decided)
            )
        # Read the policy here, not at connect time: an operator may have accepted a Pending
        # charge point since, and its next boot must see that. (None: deleted meanwhile.)
        status = await connection.scalar(
            select(charge_points.c.registration_status).where(charge_points.c.id == charge_point.id)
        )
        return None if status is None else str(status)

    found: str | None
    if services.engine.dialect.name == "sqlite":
        # One trip with the rest of the batch (store/charge_points.boot_statements).
        rows = await services.writer.execute(
            cp_store.boot_statements(charge_point.id, request, now, decided)
        )
        found = str(rows[0][0]) if rows else None
    else:
        found = await services.writer.run(unit)
    # A charge point deleted while connected is not registered any more.
    status = "Rejected" if found is None else found
    charge_point.registration_status = status
    services.liveness.seen(charge_point.id, now)
    # Accepted: interval is the heartbeat interval; Pending/Rejected: the minimum wait before the
    # next BootNotification (OCPP 1.6 §4.2.1).
    interval = (
        services.settings.heartbeat_interval
        if status == "Accepted"
        else services.settings.boot_retry_interval
    )
    channel = channels.charge_point(charge_point.identity, channels.CONNECTION)
    if services.bus.has_subscribers(channel):
        await services.bus.publish(
            channel,
            {"event": "booted", "registration_status": status, "timestamp": isoformat_z(now)},
        )
    return {"status": status, "currentTime": isoformat_z(now), "interval": interval}


async def heartbeat(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    now = ctx.services.clock.now()
    ctx.services.liveness.heartbeat(ctx.charge_point.id, now)
    return {"currentTime": isoformat_z(now)}
