"""In-process bus: the default for a single node."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any


class MemorySubscription:
    def __init__(self, bus: MemoryBus, channels: list[str], max_pending: int) -> None:
        self._bus = bus
        self.channels = channels
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(max_pending)
        self.dropped = 0

    def offer(self, channel: str, message: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait((channel, message))
        except asyncio.QueueFull:
            # Memory stays bounded: a subscriber that does not keep up loses the oldest message.
            self.dropped += 1
            self.queue.get_nowait()
            self.queue.put_nowait((channel, message))

    async def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    async def close(self) -> None:
        self._bus._remove(self)
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self.queue.get_nowait()
            self.queue.put_nowait(None)


class MemoryBus:
    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[MemorySubscription]] = defaultdict(set)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                await subscription.close()

    def has_subscribers(self, channel: str) -> bool:
        return bool(self._subscribers.get(channel))

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        for subscription in tuple(self._subscribers.get(channel, ())):
            subscription.offer(channel, message)

    def subscribe(self, channels: list[str], *, max_pending: int = 1000) -> MemorySubscription:
        subscription = MemorySubscription(self, channels, max_pending)
        for channel in channels:
            self._subscribers[channel].add(subscription)
        return subscription

    def _remove(self, subscription: MemorySubscription) -> None:
        for channel in subscription.channels:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[channel]
