"""Ownership on connect and disconnect, wrapped around the node's stored presence.

On connect the node claims the charge point before the database says "connected", and tells the
previous owner (if another node) to close its stale socket. On disconnect the claim is released
with compare-and-delete; if another node holds the charge point by then, it moved, and the
database row and the "disconnected" event belong to that node, so nothing is written here.
Redis being down never blocks a charge point: the claim is retried by the refresh loop.
"""

from __future__ import annotations

import logging

from chargegrid.cluster.link import ClusterUnavailable
from chargegrid.cluster.ownership import Ownership
from chargegrid.cluster.routing import CommandRouter
from chargegrid.gateway.asgi import Presence
from chargegrid.gateway.connection import ChargePointConnection

log = logging.getLogger(__name__)


class ClusteredPresence(Presence):
    def __init__(self, inner: Presence, ownership: Ownership, router: CommandRouter) -> None:
        self._inner = inner
        self._ownership = ownership
        self._router = router

    def activity(self, connection: ChargePointConnection) -> None:
        self._inner.activity(connection)

    async def connected(self, connection: ChargePointConnection) -> None:
        try:
            previous = await self._ownership.claim(connection.identity)
        except ClusterUnavailable:
            previous = None  # the refresh loop claims it once Redis is back
        if previous is not None:
            await self._router.evict(previous, connection.identity)
        await self._inner.connected(connection)

    async def disconnected(self, connection: ChargePointConnection, reason: str) -> None:
        try:
            ours = await self._ownership.release(connection.identity)
        except ClusterUnavailable:
            ours = True  # cannot tell; the other node's owner reassertion repairs the row
        if not ours:
            log.info(
                "%s moved to another node; leaving its state to that node", connection.identity
            )
            return
        await self._inner.disconnected(connection, reason)
