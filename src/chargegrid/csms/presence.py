"""Connection state of charge points: stored, published, and liveness on every message."""

from __future__ import annotations

import logging
from typing import Any

from chargegrid.bus import channels
from chargegrid.clock import isoformat_z
from chargegrid.csms.context import Context, Services
from chargegrid.gateway.asgi import Presence
from chargegrid.gateway.connection import ChargePointConnection
from chargegrid.store import charge_points as cp_store
from chargegrid.store.group_commit import StoreUnavailable

log = logging.getLogger(__name__)


class StoredPresence(Presence):
    def __init__(self, services: Services) -> None:
        self._services = services

    def activity(self, connection: ChargePointConnection) -> None:
        context: Context = connection.charge_point
        self._services.liveness.seen(context.charge_point.id, self._services.clock.now())

    async def connected(self, connection: ChargePointConnection) -> None:
        await self._changed(connection, True, "connected")

    async def disconnected(self, connection: ChargePointConnection, reason: str) -> None:
        await self._changed(connection, False, reason)

    async def _changed(
        self, connection: ChargePointConnection, connected: bool, reason: str
    ) -> None:
        services = self._services
        context: Context = connection.charge_point
        charge_point_id = context.charge_point.id
        now = services.clock.now()
        try:
            if services.engine.dialect.name == "sqlite":
                # One trip with the rest of the batch (store/charge_points).
                await services.writer.execute(
                    cp_store.connected_statements(charge_point_id, connected, now)
                )
            else:
                await services.writer.run(
                    lambda c: cp_store.set_connected(c, charge_point_id, connected, now)
                )
        except StoreUnavailable as error:
            log.warning("%s: could not store connection state: %s", connection.identity, error)
        message: dict[str, Any] = {
            "event": "connected" if connected else "disconnected",
            "reason": reason,
            "timestamp": isoformat_z(now),
        }
        for channel in (
            channels.charge_point(connection.identity, channels.CONNECTION),
            channels.fleet(channels.CONNECTION),
        ):
            if services.bus.has_subscribers(channel):
                await services.bus.publish(
                    channel, {"charge_point": connection.identity, **message}
                )
