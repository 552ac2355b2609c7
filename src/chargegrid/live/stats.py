"""Publishes the fleet figures on ``fleet.stats`` when they change, while someone listens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.bus import channels
from chargegrid.bus.base import Bus
from chargegrid.clock import Clock
from chargegrid.store.stats import fleet_stats

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
                await self._bus.publish(channel, figures)
