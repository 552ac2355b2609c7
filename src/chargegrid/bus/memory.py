"""In-process bus: the default for a single node."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from chargegrid.bus.queue import BoundedQueue


class MemorySubscription(BoundedQueue):
    def __init__(self, bus: MemoryBus, max_pending: int) -> None:
        super().__init__(max_pending)
        self._bus = bus
        self.channels: set[str] = set()

    async def add(self, channels: Iterable[str]) -> None:
        for channel in channels:
            if channel not in self.channels:
                self.channels.add(channel)
                self._bus._subscribers[channel].add(self)

    async def remove(self, channels: Iterable[str]) -> None:
        for channel in channels:
            self.channels.discard(channel)
            self._bus._discard(channel, self)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.remove(list(self.channels))
        self._ready.set()


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

    async def publish(self, channel: str, message: dict[str, Any], *, local: bool = False) -> None:
        for subscription in tuple(self._subscribers.get(channel, ())):
            subscription.offer(channel, message)

    async def subscribe(
        self, channels: Iterable[str], *, max_pending: int = 1000
    ) -> MemorySubscription:
        subscription = MemorySubscription(self, max_pending)
        await subscription.add(channels)
        return subscription

    def _discard(self, channel: str, subscription: MemorySubscription) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[channel]
