"""Notifications a charge point sends that the CSMS records and acknowledges with ``{}``.

DiagnosticsStatusNotification and FirmwareStatusNotification (OCPP 1.6 §4.4, §4.5), and the
Security Whitepaper's SecurityEventNotification, LogStatusNotification and
SignedFirmwareStatusNotification. Each goes to the charge point's event log.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.csms.context import Context, Handler
from chargegrid.store import events as event_log
from chargegrid.store.tables import charge_points, events

_INSERT_EVENT = insert(events)


def _recorder(
    action: str, category: event_log.Category, describe: str, status_column: str | None = None
) -> Handler:
    """A handler that logs the notification and, with ``status_column``, keeps its status on the
    charge point (what the API shows as firmware/diagnostics progress)."""

    async def handle(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        services = ctx.services
        now = services.clock.now()
        message = describe.format_map(_Missing(request))
        row = event_log.row(ctx.charge_point.id, category, action, message, now, request)
        if status_column is None:
            await services.writer.insert(_INSERT_EVENT, [row])
            return {}

        async def unit(connection: AsyncConnection) -> None:
            await event_log.record(connection, row)
            await connection.execute(
                update(charge_points)
                .where(charge_points.c.id == ctx.charge_point.id)
                .values(
                    {
                        status_column: request["status"],
                        f"{status_column}_at": now,
                        "updated_at": now,
                    }
                )
            )

        await services.writer.run(unit)
        return {}

    handle.__name__ = handle.__qualname__ = action
    return handle


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


diagnostics_status_notification = _recorder(
    "DiagnosticsStatusNotification",
    event_log.Category.NOTIFICATION,
    "diagnostics: {status}",
    "diagnostics_status",
)
firmware_status_notification = _recorder(
    "FirmwareStatusNotification",
    event_log.Category.NOTIFICATION,
    "firmware: {status}",
    "firmware_status",
)
log_status_notification = _recorder(
    "LogStatusNotification",
    event_log.Category.NOTIFICATION,
    "log upload: {status}",
    "diagnostics_status",
)
signed_firmware_status_notification = _recorder(
    "SignedFirmwareStatusNotification",
    event_log.Category.NOTIFICATION,
    "signed firmware: {status}",
    "firmware_status",
)
security_event_notification = _recorder(
    "SecurityEventNotification", event_log.Category.SECURITY, "security event: {type}"
)
