"""Publishes the fleet figures on ``fleet.stats`` when they change, while someone listens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.bus import channels
from chargegrid.bus.base import Bus
from chargegrid.clock import Clock
from chargegrid.store.stats import fleet_stats
from chargegrid.store.tables import charge_points

log = logging.getLogger(__name__)


class StatsPublisher:
    def __init__(self, engine: AsyncEngine, bus: Bus, clock: Clock, interval: float) -> None:
        self._engine = engine
        self._bus = bus
        self._clock = clock
        self._interval = interval
        self._last: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stats-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        channel = channels.fleet(channels.STATS)
        while True:
            await asyncio.sleep(self._interval)
            if not self._bus.has_subscribers(channel):
                self._last = None  # a new listener gets the current figures at once
                continue
            try:
                figures = await fleet_stats(self._engine, self._clock.now())
            except Exception as error:  # the database may be away; try again next time
                log.warning("fleet stats unavailable: %s", error)
                continue
            if figures != self._last:
                self._last = figures
                # Every node computes the same fleet-wide figures from the database: each tells
                # its own subscribers, or with several nodes everyone would get each one twice.
                await self._bus.publish(channel, figures, local=True)


class Mirror(Protocol):
    """Where the same pass also copies the snapshots (``cluster.live_stats`` with Redis)."""

    async def flush(
        self,
        changed: set[int],
        identities: Mapping[int, str],
        bodies: Mapping[int, dict[str, Any]],
    ) -> None: ...


class LiveStatsPublisher:
    """Publishes a charge point's live statistics (``metering.live_stats``) on its
    ``live_stats`` channel at most once per ``interval``, only when it got new values and
    someone listens: one snapshot, not one event per value. With a ``mirror`` (several nodes),
    the same pass hands it the changed charge points and the snapshots already built."""

    def __init__(self, engine: AsyncEngine, bus: Bus, live_stats: Any, interval: float) -> None:
        self._engine = engine
        self._bus = bus
        self._live_stats = live_stats
        self._interval = interval
        self._identities: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None
        self.mirror: Mirror | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-stats-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.publish_changed()
            except Exception as error:  # the database may be away; try again next time
                log.warning("live statistics not published: %s", error)

    async def publish_changed(self) -> None:
        changed, self._live_stats.changed = self._live_stats.changed, set()
        unknown = [cp_id for cp_id in changed if cp_id not in self._identities]
        if unknown:
            async with self._engine.connect() as connection:
                rows = await connection.execute(
                    select(charge_points.c.id, charge_points.c.identity).where(
                        charge_points.c.id.in_(unknown)
                    )
                )
                self._identities.update({int(r[0]): str(r[1]) for r in rows})
        bodies: dict[int, dict[str, Any]] = {}
        for cp_id in changed:
            identity = self._identities.get(cp_id)
            if identity is None:
                continue
            channel = channels.charge_point(identity, channels.LIVE_STATS)
            if self._bus.has_subscribers(channel):
                body = bodies[cp_id] = {
                    "charge_point": identity,
                    **self._live_stats.for_charge_point(cp_id),
                }
                await self._bus.publish(channel, body)
        if self.mirror is not None:
            await self.mirror.flush(changed, self._identities, bodies)
