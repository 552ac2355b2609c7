"""Live events for Python code in the same process, on the bus the live streams use.

::

    async with grid.subscribe(charge_point="CP001", topics=["status", "sessions"]) as events:
        async for event in events:
            print(event.topic, event.charge_point, event.data)

    grid.on("sessions", handle_session)              # a callback for every charge point
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from chargegrid.bus import channels
from chargegrid.bus.base import Bus, Subscription

log = logging.getLogger(__name__)

TOPICS = (
    channels.STATUS,
    channels.SESSIONS,
    channels.METER_VALUES,
    channels.CONNECTION,
    channels.ALERTS,
    channels.OPERATIONS,
    channels.STATS,
    channels.LIVE_STATS,
)


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    charge_point: str | None  # None for fleet-wide figures (stats)
    data: dict[str, Any]


def _channels(charge_point: str | None, topics: Iterable[str] | None) -> list[str]:
    chosen = list(topics) if topics is not None else list(TOPICS)
    unknown = sorted(set(chosen) - set(TOPICS))
    if unknown:
        raise ValueError(f"unknown topics {unknown}; choose from {list(TOPICS)}")
    if charge_point is None:
        # Every charge point: the fleet channels carry each event with its charge point.
        return [
            channels.fleet(t)
            for t in chosen
            if t not in (channels.METER_VALUES, channels.LIVE_STATS)
        ]
    return [channels.charge_point(charge_point, t) for t in chosen if t != channels.STATS]


class EventStream:
    """An async iterator of :class:`Event`; close it (or use ``async with``) when done."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for channel, message in self._subscription:
            if channel.startswith("fleet."):
                topic = channel[len("fleet.") :]
                yield Event(topic, message.get("charge_point"), message)
            else:
                identity, _, topic = channel[len("charge_point.") :].rpartition(".")
                yield Event(topic, identity, message)

    @property
    def dropped(self) -> int:
        """Events lost because this stream was not read fast enough (bounded memory)."""
        return self._subscription.dropped

    async def close(self) -> None:
        await self._subscription.close()


async def subscribe(
    bus: Bus,
    *,
    charge_point: str | None = None,
    topics: Iterable[str] | None = None,
    max_pending: int = 10_000,
) -> EventStream:
    """Events of one charge point, or of all (``charge_point=None``; meter values excluded:
    subscribe per charge point for those)."""
    return EventStream(
        await bus.subscribe(_channels(charge_point, topics), max_pending=max_pending)
    )


class Listener:
    """A running callback subscription (:meth:`ChargeGrid.on`); ``await cancel()`` to stop."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def listen(stream: EventStream, callback: Callable[[Event], Awaitable[None] | None]) -> Listener:
    async def run() -> None:
        try:
            async for event in stream:
                try:
                    result = callback(event)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception(
                        "event callback %s failed", getattr(callback, "__qualname__", callback)
                    )
        finally:
            await stream.close()

    return Listener(asyncio.get_running_loop().create_task(run()))
