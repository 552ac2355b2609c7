"""The event bus interface: publish to a channel, subscribe to channels.

Two implementations behind it: :mod:`chargegrid.bus.memory` (one node) and
:mod:`chargegrid.bus.redis` (several nodes sharing one Redis). The composition root picks one.
Messages are JSON-able dicts; delivery is at most once, in publish order per channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol


class Subscription(Protocol):
    """Messages from the subscribed channels, as ``(channel, message)``.

    Memory is bounded: at most ``max_pending`` messages wait; past that the oldest is dropped and
    counted in ``dropped``. Iteration ends after :meth:`close`.
    """

    dropped: int

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...

    async def add(self, channels: Iterable[str]) -> None:
        """Also receive ``channels``."""
        ...

    async def remove(self, channels: Iterable[str]) -> None:
        """Stop receiving ``channels``."""
        ...

    async def close(self) -> None: ...


class Bus(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def has_subscribers(self, channel: str) -> bool:
        """Cheap check so publishers can skip building payloads nobody reads. May err on the side
        of True; a False must be right (for Redis: nobody on any node listens)."""
        ...

    async def publish(self, channel: str, message: dict[str, Any], *, local: bool = False) -> None:
        """Deliver ``message`` to the channel's subscribers on every node, or with ``local``
        only to this node's (figures every node computes alike, such as the fleet stats)."""
        ...

    async def subscribe(
        self, channels: Iterable[str], *, max_pending: int = 1000
    ) -> Subscription: ...
