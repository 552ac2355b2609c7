"""The cluster's own Redis connection, with a short circuit breaker.

Ownership keys and command routing need *answers* from Redis (who holds this charge point? did
anyone receive this request?), unlike the event bus, which publishes fire-and-forget. They share
one client here. When Redis is down, every caller must learn it at once rather than each waiting
for its own connect timeout, so after a failure the link refuses calls for ``cooldown`` seconds
and raises :class:`ClusterUnavailable` immediately.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "Redis is not there right now" (OSError covers timeouts and refusals).
REDIS_DOWN = (RedisError, OSError)


class ClusterUnavailable(RuntimeError):
    """Redis could not be asked; the message names the server and the cause."""


def safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{host}"


class RedisLink:
    """One redis-py client for cluster bookkeeping, failing fast while Redis is down."""

    def __init__(self, url: str, *, node_id: str, timeout: float, cooldown: float = 1.0) -> None:
        self.url = url
        self.cooldown = cooldown
        # One immediate retry: after a Redis restart the first pooled connection is dead, and a
        # fresh one succeeds. More retries would only delay the "Redis is down" answer.
        self.client = Redis.from_url(
            url,
            retry=Retry(NoBackoff(), 1),
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            socket_keepalive=True,
            client_name=f"chargegrid-cluster:{node_id}",
            protocol=2,
        )
        self._down_until = 0.0
        self.last_error: str | None = None
        self._closed = False

    @property
    def up(self) -> bool:
        """False from a failure until the next successful call."""
        return self.last_error is None

    async def run(self, work: Callable[[Redis], Awaitable[T]]) -> T:
        """``work(client)``, or :class:`ClusterUnavailable` if Redis is (known to be) down."""
        if self._closed:
            # Late cleanups after stop() must not open fresh connections on a closed client.
            raise ClusterUnavailable("the cluster link is closed (node stopping)")
        if self.last_error is not None and time.monotonic() < self._down_until:
            raise ClusterUnavailable(self.last_error)
        try:
            result = await work(self.client)
        except REDIS_DOWN as error:
            self._down_until = time.monotonic() + self.cooldown
            if self.last_error is None:
                log.warning("cluster: Redis at %s unreachable: %s", safe_url(self.url), error)
            self.last_error = f"Redis at {safe_url(self.url)} is unreachable ({error})"
            raise ClusterUnavailable(self.last_error) from error
        if self.last_error is not None:
            log.info("cluster: Redis at %s reachable again", safe_url(self.url))
            self.last_error = None
        return result

    async def close(self) -> None:
        self._closed = True
        await self.client.aclose()
