"""The bounded, drop-oldest message queue every bus subscription delivers through."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any


class BoundedQueue:
    """Messages waiting for one subscriber, at most ``max_pending`` of them.

    Memory stays bounded: a subscriber that does not keep up loses the oldest message, counted
    in ``dropped``. Iteration ends once ``_closed`` is set and the queue is drained.
    """

    def __init__(self, max_pending: int) -> None:
        self._pending: deque[tuple[str, dict[str, Any]]] = deque()
        self._max_pending = max_pending
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def offer(self, channel: str, message: dict[str, Any]) -> None:
        if self._closed:
            return
        if len(self._pending) >= self._max_pending:
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
