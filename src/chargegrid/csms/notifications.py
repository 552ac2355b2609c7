"""Notifications a charge point sends that the CSMS records and acknowledges with ``{}``.

DiagnosticsStatusNotification and FirmwareStatusNotification (OCPP 1.6 §4.4, §4.5), and the
Security Whitepaper's SecurityEventNotification, LogStatusNotification and
SignedFirmwareStatusNotification. Each goes to the charge point's event log.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert

from chargegrid.csms.context import Context, Handler
from chargegrid.store import events as event_log
from chargegrid.store.tables import events

_INSERT_EVENT = insert(events)


def _recorder(action: str, category: event_log.Category, describe: str) -> Handler:
    async def handle(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        services = ctx.services
        message = describe.format_map(_Missing(request))
        row = event_log.row(
            ctx.charge_point.id, category, action, message, services.clock.now(), request
        )
        await services.writer.insert(_INSERT_EVENT, [row])
        return {}

    handle.__name__ = handle.__qualname__ = action
    return handle


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


diagnostics_status_notification = _recorder(
    "DiagnosticsStatusNotification", event_log.Category.NOTIFICATION, "diagnostics: {status}"
)
firmware_status_notification = _recorder(
    "FirmwareStatusNotification", event_log.Category.NOTIFICATION, "firmware: {status}"
)
log_status_notification = _recorder(
    "LogStatusNotification", event_log.Category.NOTIFICATION, "log upload: {status}"
)
signed_firmware_status_notification = _recorder(
    "SignedFirmwareStatusNotification", event_log.Category.NOTIFICATION, "signed firmware: {status}"
)
security_event_notification = _recorder(
    "SecurityEventNotification", event_log.Category.SECURITY, "security event: {type}"
)
