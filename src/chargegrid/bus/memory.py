"""In-process bus: the default for a single node."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable
from typing import Any


class MemorySubscription:
    def __init__(self, bus: MemoryBus, max_pending: int) -> None:
        self._bus = bus
        self.channels: set[str] = set()
        self._pending: deque[tuple[str, dict[str, Any]]] = deque()
        self._max_pending = max_pending
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def offer(self, channel: str, message: dict[str, Any]) -> None:
        if self._closed:
            return
        if len(self._pending) >= self._max_pending:
            # Memory stays bounded: a subscriber that does not keep up loses the oldest message.
            self._pending.popleft()
            self.dropped += 1
        self._pending.append((channel, message))
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        while True:
            while self._pending:
                yield self._pending.popleft()
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()

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

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
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
