"""The node's live-event hub: one bus subscription shared by every live subscriber.

Bus channels are reference-counted: the hub listens to a channel while some subscriber wants it,
and for a grace period after the last one left, so that a client that reconnects within it can
resume from its last event id (SSE ``Last-Event-ID``) with nothing missed. Each event gets a
node-wide increasing id and is kept in a small ring buffer per channel for that replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

from chargegrid.bus import channels
from chargegrid.bus.base import Bus, Subscription
from chargegrid.live.outbox import Envelope, Outbox

log = logging.getLogger(__name__)

CHARGE_POINT_TOPICS = (
    channels.STATUS,
    channels.SESSIONS,
    channels.METER_VALUES,
    channels.CONNECTION,
    channels.ALERTS,
    channels.OPERATIONS,
    channels.LIVE_STATS,
)
# Meter values are per charge point only: fleet-wide they would be the whole ingest rate.
FLEET_TOPICS = (
    channels.STATUS,
    channels.SESSIONS,
    channels.CONNECTION,
    channels.ALERTS,
    channels.OPERATIONS,
    channels.STATS,
)


# What ``can_see`` is asked for an event about the whole fleet rather than one charge point.
ALL_CHARGE_POINTS = "\x00all"


def channel_for(charge_point: str | None, topic: str) -> str:
    return (
        channels.fleet(topic)
        if charge_point is None
        else channels.charge_point(charge_point, topic)
    )


def parse_channel(channel: str) -> tuple[str | None, str]:
    """``charge_point.CP.1.status`` -> ("CP.1", "status"); ``fleet.status`` -> (None, "status")."""
    if channel.startswith("fleet."):
        return None, channel[len("fleet.") :]
    rest = channel[len("charge_point.") :]
    identity, _, topic = rest.rpartition(".")
    return identity, topic


class LiveSubscriber:
    """One WebSocket or SSE client: what it listens to and its outbox."""

    def __init__(
        self, *, can_see: Callable[[str], bool], limit: int, meter_interval: float
    ) -> None:
        self.can_see = can_see
        self.outbox = Outbox(limit=limit, meter_interval=meter_interval)
        self.channels: set[str] = set()

    def deliver(self, envelope: Envelope) -> None:
        identity = envelope["charge_point"]
        # Fleet-wide figures (no charge point) go only to users who see the whole fleet.
        if not self.can_see(identity if identity is not None else ALL_CHARGE_POINTS):
            return
        self.outbox.put(envelope)


class LiveHub:
    def __init__(self, bus: Bus, *, grace: float = 60.0, buffer_size: int = 500) -> None:
        self._bus = bus
        self._grace = grace
        self._buffer_size = buffer_size
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self.last_id = 0
        self._listeners: defaultdict[str, set[LiveSubscriber]] = defaultdict(set)
        self._buffers: dict[str, deque[Envelope]] = {}
        self._since: dict[str, int] = {}  # channel -> last id before the hub listened to it
        self._release: dict[str, asyncio.TimerHandle] = {}

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe([], max_pending=100_000)
        self._task = asyncio.create_task(self._pump(), name="live-hub")

    async def stop(self) -> None:
        for handle in self._release.values():
            handle.cancel()
        self._release.clear()
        if self._subscription is not None:
            await self._subscription.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def open(
        self, *, can_see: Callable[[str], bool], limit: int = 1000, meter_interval: float = 0.0
    ) -> LiveSubscriber:
        return LiveSubscriber(can_see=can_see, limit=limit, meter_interval=meter_interval)

    async def add(self, subscriber: LiveSubscriber, names: Iterable[str]) -> None:
        new: list[str] = []
        for channel in names:
            if channel in subscriber.channels:
                continue
            subscriber.channels.add(channel)
            self._listeners[channel].add(subscriber)
            handle = self._release.pop(channel, None)
            if handle is not None:
                handle.cancel()
            elif channel not in self._buffers:
                self._buffers[channel] = deque(maxlen=self._buffer_size)
                self._since[channel] = self.last_id
                new.append(channel)
        if new and self._subscription is not None:
            await self._subscription.add(new)

    async def remove(self, subscriber: LiveSubscriber, names: Iterable[str]) -> None:
        for channel in list(names):
            if channel not in subscriber.channels:
                continue
            subscriber.channels.discard(channel)
            listeners = self._listeners.get(channel)
            if listeners is not None:
                listeners.discard(subscriber)
                if not listeners:
                    del self._listeners[channel]
                    self._release[channel] = asyncio.get_running_loop().call_later(
                        self._grace, self._schedule_release, channel
                    )

    async def close(self, subscriber: LiveSubscriber) -> None:
        await self.remove(subscriber, list(subscriber.channels))

    def replay(self, names: Iterable[str], after: int) -> list[Envelope] | None:
        """Events with id > ``after`` on ``names``, oldest first; None if some may be missing."""
        events: list[Envelope] = []
        for channel in names:
            buffer = self._buffers.get(channel)
            if buffer is None or self._since.get(channel, after) > after:
                return None
            if len(buffer) == buffer.maxlen and buffer[0]["id"] > after + 1:
                return None
            events.extend(e for e in buffer if e["id"] > after)
        events.sort(key=lambda e: e["id"])
        return events

    def _schedule_release(self, channel: str) -> None:
        asyncio.get_running_loop().create_task(self._release_channel(channel))

    async def _release_channel(self, channel: str) -> None:
        self._release.pop(channel, None)
        if channel in self._listeners:
            return
        self._buffers.pop(channel, None)
        self._since.pop(channel, None)
        if self._subscription is not None:
            await self._subscription.remove([channel])

    async def _pump(self) -> None:
        assert self._subscription is not None
        async for channel, message in self._subscription:
            identity, topic = parse_channel(channel)
            if identity is None:
                # A fleet message names its charge point at the top, or, keeping the reference
                # session payload ({"event", "session"}) exact, inside its session.
                identity = message.get("charge_point")
                if identity is None and isinstance(message.get("session"), dict):
                    identity = message["session"].get("charge_point")
            event_id = next(self._ids)
            self.last_id = event_id
            envelope: Envelope = {
                "id": event_id,
                "topic": topic,
                "charge_point": identity,
                "fleet": channel.startswith("fleet."),
                "data": message,
            }
            buffer = self._buffers.get(channel)
            if buffer is not None:
                buffer.append(envelope)
            for subscriber in tuple(self._listeners.get(channel, ())):
                subscriber.deliver(envelope)


def wanted(message_topics: Any, allowed: tuple[str, ...]) -> list[str]:
    """Validate a client's topic list: default all; unknown names raise ValueError."""
    if message_topics is None:
        return list(allowed)
    if not isinstance(message_topics, list) or not all(isinstance(t, str) for t in message_topics):
        raise ValueError("topics must be a list of strings")
    unknown = sorted(set(message_topics) - set(allowed))
    if unknown:
        raise ValueError(f"unknown topics {unknown}; choose from {list(allowed)}")
    return list(dict.fromkeys(message_topics))
