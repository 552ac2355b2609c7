"""The event bus interface: publish to a channel, subscribe to channels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class Subscription(Protocol):
    """Messages from the subscribed channels, as ``(channel, message)``."""

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...

    async def close(self) -> None: ...


class Bus(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def has_subscribers(self, channel: str) -> bool:
        """Cheap check so publishers can skip building payloads nobody reads."""
        ...

    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...

    def subscribe(self, channels: list[str], *, max_pending: int = 1000) -> Subscription: ...
