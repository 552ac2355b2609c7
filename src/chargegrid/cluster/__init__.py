"""Several nodes on one PostgreSQL and one Redis (DESIGN.md, "Scale-out").

:class:`Cluster` bundles what a node needs beyond the event bus: ownership keys
(:mod:`.ownership`), the command channel (:mod:`.routing`) and ownership-aware presence
(:mod:`.presence`). The composition root creates it when ``bus_url`` is set.
"""

from __future__ import annotations

import logging
from typing import Any

from chargegrid.bus.base import Bus
from chargegrid.clock import Clock
from chargegrid.cluster.link import ClusterUnavailable, RedisLink
from chargegrid.cluster.ownership import Keeper, Ownership
from chargegrid.cluster.presence import ClusteredPresence
from chargegrid.cluster.routing import CommandRouter, RemoteChargePoint
from chargegrid.gateway.asgi import Presence
from chargegrid.gateway.connection import ChargePointConnection
from chargegrid.gateway.registry import ConnectionRegistry
from chargegrid.store.group_commit import GroupCommitter

__all__ = ["Cluster", "ClusterUnavailable", "RemoteChargePoint"]

log = logging.getLogger(__name__)


class Cluster:
    """This node's membership of the cluster. ``start()`` after the bus, ``stop()`` before it."""

    def __init__(
        self,
        *,
        url: str,
        node_id: str,
        prefix: str,
        registry: ConnectionRegistry[ChargePointConnection],
        writer: GroupCommitter,
        bus: Bus,
        clock: Clock,
        ttl: float,
        margin: float,
        redis_timeout: float,
    ) -> None:
        self.node_id = node_id
        self.registry = registry
        self.link = RedisLink(url, node_id=node_id, timeout=redis_timeout)
        self.ownership = Ownership(self.link, node_id=node_id, prefix=prefix, ttl=ttl)
        self.router = CommandRouter(self.link, self.ownership, registry, margin=margin)
        self.keeper = Keeper(
            self.ownership,
            held=registry.identities,
            close_stale=self._close_stale,
            writer=writer,
            bus=bus,
            clock=clock,
        )

    def presence(self, inner: Presence) -> Presence:
        """``inner`` with ownership claimed on connect and released on disconnect."""
        return ClusteredPresence(inner, self.ownership, self.router)

    async def start(self) -> None:
        await self.router.start()
        await self.keeper.start()

    async def stop(self) -> None:
        await self.keeper.stop()
        # Let the charge points' next connection land anywhere without waiting for the TTL.
        for identity in self.registry.identities():
            try:
                await self.ownership.release(identity)
            except ClusterUnavailable:
                break
        await self.router.stop()
        await self.link.close()

    def status(self) -> dict[str, Any]:
        """For /readyz: Redis reachability as this node last saw it."""
        return {
            "node": self.node_id,
            "redis": "up" if self.link.up and self.router.listening else "down",
        }

    async def _close_stale(self, identity: str, owner: str) -> None:
        connection = self.registry.get(identity)
        if connection is not None:
            await connection.close(1000, f"reconnected through node {owner}")
