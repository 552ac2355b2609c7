"""Redis pub/sub bus: the event bus for several nodes sharing one Redis (DESIGN.md, "Scale-out").

Behaves like :class:`chargegrid.bus.memory.MemoryBus` to its users; underneath:

- **One pub/sub connection per node**, owned by a reader task, subscribed to every channel any
  local subscription wants (``{prefix}ev:{channel}``) plus the control channel
  (``{prefix}bus:subscribed``). Messages are fanned out locally to the node's subscriptions, each a
  bounded queue that drops its oldest message (counted in ``dropped``), as in MemoryBus.
- **Local delivery is direct**: a message published on this node reaches this node's subscribers at
  once, without the Redis round trip, so a node's own live streams keep working while Redis is down.
  Messages travel in an orjson envelope ``{"node": node_id, "message": ...}``; a node ignores its
  own messages coming back from Redis.
- **Publishing never waits for Redis.** :meth:`RedisBus.publish` delivers locally, then appends to a
  bounded outbox (``max_outbox``, oldest dropped) that one sender task pipelines to Redis in
  publish order. Messages that cannot reach Redis (connection down, or older than
  ``max_publish_delay`` by the time Redis is back) are dropped, logged once per outage and counted
  in ``publish_dropped``: a charge point is answered whatever Redis does. Delivery is at most once.
- **Ordering**: one sender connection and one reader connection per node, so messages published on
  one channel by one node arrive in publish order. (Messages from *different* nodes on a fleet
  channel interleave in the order Redis received them.)
- **Reconnects**: the reader reconnects by itself with exponential backoff (0.1 s doubling to 5 s,
  with jitter) and re-subscribes everything; a silent connection (no reply to a PING within
  ``3 * refresh_interval``) counts as broken. Events resume when Redis returns.

``has_subscribers`` is a set lookup, no Redis round trip. The node keeps ``_cluster``, the channels
subscribed anywhere:

- A node announces on the control channel, once Redis has *confirmed* its SUBSCRIBE, the channels it
  just subscribed (also after every reconnect); every node adds them at once.
- Every ``refresh_interval`` (1 s) each node replaces the view with
  ``PUBSUB CHANNELS {prefix}ev:*``, which drops channels nobody listens to any more. Announcements
  received while that query was in flight are kept, so a stale snapshot cannot hide a fresh
  subscriber.
- If Redis cannot be asked, the last view stays (errs on True).

**The bound.** Once ``subscribe()`` has returned on node B, ``has_subscribers`` on every node A is
True after one PUBLISH hop through Redis (milliseconds) while A's pub/sub connection is up, and in
any case within ``refresh_interval`` plus one round trip while A can reach Redis. After the last
subscriber anywhere leaves, it turns False within the same ``refresh_interval`` plus a round trip
(until then it errs on True, which costs only a useless publish). ``publish`` uses the same view to
skip Redis for channels nobody listens to, so the bound is also the window in which a brand-new
remote subscriber can miss messages.

**Start with Redis unreachable fails fast**: :meth:`RedisBus.start` raises :class:`BusUnavailable`
naming the server, so a misconfigured node does not come up half-working. Once started, outages are
survived as described above. ``subscribe()`` during an outage registers the subscription locally
and returns at once; it is subscribed in Redis on reconnect.

The protocol is RESP2 (pinned: redis-py 8 defaults to RESP3); the ``url`` is any redis-py URL (``redis://``,
``rediss://``, ``unix://``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from chargegrid.bus.queue import BoundedQueue

log = logging.getLogger(__name__)

_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0
# Publishes go to Redis in pipelines of at most this many commands.
_BATCH = 512
# How long start() and subscribe() wait for Redis before giving up (start) or moving on (subscribe).
_CONNECT_TIMEOUT = 2.0
_CONFIRM_TIMEOUT = 2.0
# On stop(), how long queued publishes get to reach Redis.
_FLUSH_TIMEOUT = 1.0

# Errors that mean "Redis is not there right now", as opposed to bugs.
_REDIS_DOWN = (RedisError, OSError)  # OSError covers TimeoutError


class BusUnavailable(RuntimeError):
    """Redis could not be reached when the bus started."""


class RedisSubscription(BoundedQueue):
    """One subscriber's channels and bounded queue; same behaviour as MemorySubscription."""

    def __init__(self, bus: RedisBus, max_pending: int) -> None:
        super().__init__(max_pending)
        self._bus = bus
        self.channels: set[str] = set()

    async def add(self, channels: Iterable[str]) -> None:
        if self._closed:
            return
        await self._bus._add(self, channels)

    async def remove(self, channels: Iterable[str]) -> None:
        await self._bus._remove(self, channels)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._bus._remove(self, list(self.channels))
        self._ready.set()


class RedisBus:
    def __init__(
        self,
        url: str,
        *,
        node_id: str | None = None,
        prefix: str = "chargegrid:",
        refresh_interval: float = 1.0,
        max_outbox: int = 10_000,
        max_publish_delay: float = 5.0,
    ) -> None:
        self.url = url
        self.node_id = node_id or uuid.uuid4().hex
        self.prefix = prefix
        self.refresh_interval = refresh_interval
        self.max_outbox = max_outbox
        self.max_publish_delay = max_publish_delay
        self._data_prefix = f"{prefix}ev:"
        self._data_prefix_bytes = self._data_prefix.encode()
        self._control = f"{prefix}bus:subscribed".encode()
        self._pattern = _glob_escape(self._data_prefix) + "*"

        self._client: Redis | None = None
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []

        # Local subscriptions per channel; a channel is subscribed in Redis while it has any.
        self._local: dict[str, set[RedisSubscription]] = {}
        # Channels subscribed on any node (ours included), as last seen; see the module docstring.
        self._cluster: frozenset[str] = frozenset()
        # Channel -> when its last announcement arrived (monotonic).
        self._announced: dict[str, float] = {}

        # The pub/sub connection while it is up, and its bookkeeping (reset on every reconnect).
        self._conn: AbstractConnection | None = None
        self._up = asyncio.Event()
        # A "subscribe" reply resolves the channel's future; UNSUBSCRIBEs still in flight mean
        # a reply belongs to a SUBSCRIBE sent before them, which does not count.
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._unsubscribes_in_flight: dict[bytes, int] = {}
        self.reconnects = 0

        # Publishes waiting for the sender: (enqueued at, redis channel, payload).
        self._outbox: deque[tuple[float, bytes, bytes]] = deque()
        self._outbox_ready = asyncio.Event()
        self._sender_idle = asyncio.Event()
        self._sender_idle.set()
        self.publish_dropped = 0

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up (for health checks and tests)."""
        return self._conn is not None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        # No retries inside redis-py: the bus has its own backoff and must not stall in a retry.
        self._client = Redis.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=5.0,
            socket_keepalive=True,
            # Shows which node a connection belongs to in CLIENT LIST (a URL option overrides it).
            client_name=f"chargegrid-bus:{self.node_id}",
            # RESP2 whatever the redis-py version's default: the pub/sub replies parsed below.
            protocol=2,
        )
        try:
            await self._refresh_view()
        except _REDIS_DOWN as error:
            await self._client.aclose()
            self._client = None
            raise BusUnavailable(
                f"event bus: Redis at {_safe_url(self.url)} is unreachable: {error}"
            ) from error
        self._running = True
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="bus-redis-reader"),
            asyncio.create_task(self._send_loop(), name="bus-redis-sender"),
            asyncio.create_task(self._refresh_loop(), name="bus-redis-refresh"),
        ]
        try:
            await asyncio.wait_for(self._up.wait(), _CONNECT_TIMEOUT * 2)
        except TimeoutError:
            await self.stop()
            raise BusUnavailable(
                f"event bus: no pub/sub connection to Redis at {_safe_url(self.url)}"
            ) from None

    async def stop(self) -> None:
        if self._running:
            self._running = False
            # Best effort: what was published before stop() still reaches the other nodes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sender_idle.wait(), _FLUSH_TIMEOUT)
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                # A cancel that lands just as redis-py's read timeout fires comes out of its
                # asyncio.timeout as a TimeoutError (Python 3.11), which the reader takes for a
                # lost connection and retries: one cancel is not always enough. Ask again.
                while not task.done():
                    await asyncio.wait([task], timeout=0.5)
                    if not task.done():
                        task.cancel()
                if not task.cancelled() and task.exception() is not None:
                    log.error("event bus: %s failed: %s", task.get_name(), task.exception())
            self._tasks = []
            # A stopped bus publishes locally only, so only local subscribers count now.
            self._cluster = frozenset()
            self._announced.clear()
            self._outbox.clear()
        for subscribers in list(self._local.values()):
            for subscription in list(subscribers):
                await subscription.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the Bus interface ---------------------------------------------------------------------

    def has_subscribers(self, channel: str) -> bool:
        return channel in self._local or channel in self._cluster

    async def publish(self, channel: str, message: dict[str, Any], *, local: bool = False) -> None:
        for subscription in tuple(self._local.get(channel, ())):
            subscription.offer(channel, message)
        if local:
            return
        # Nobody elsewhere within the documented bound: skip Redis (publishers often call us
        # for a pair of channels of which only one is listened to).
        if not self._running or channel not in self._cluster:
            return
        try:
            payload = orjson.dumps({"node": self.node_id, "message": message})
        except TypeError:
            # A bug in the publisher, but the charge point must still get its answer.
            log.exception("event bus: cannot encode message for %s", channel)
            self.publish_dropped += 1
            return
        if len(self._outbox) >= self.max_outbox:
            self._outbox.popleft()
            self.publish_dropped += 1
        self._outbox.append((time.monotonic(), self._redis_channel(channel), payload))
        self._sender_idle.clear()
        self._outbox_ready.set()

    async def subscribe(
        self, channels: Iterable[str], *, max_pending: int = 1000
    ) -> RedisSubscription:
        subscription = RedisSubscription(self, max_pending)
        await subscription.add(channels)
        return subscription

    # -- subscriptions -------------------------------------------------------------------------

    async def _add(self, subscription: RedisSubscription, channels: Iterable[str]) -> None:
        requested = list(channels)
        new: list[str] = []
        for channel in requested:
            if channel in subscription.channels:
                continue
            subscription.channels.add(channel)
            subscribers = self._local.get(channel)
            if subscribers is None:
                subscribers = self._local[channel] = set()
                new.append(channel)
            subscribers.add(subscription)
        conn = self._conn
        if not self._running or conn is None:
            # Down (or not started): the reader subscribes everything in _local when it connects.
            return
        waiting = {self._confirmation(self._redis_channel(c)) for c in new}
        # Another subscription may have just asked for one of these channels: wait for that
        # SUBSCRIBE too, so that when subscribe() returns, Redis delivers to us.
        for channel in requested:
            future = self._confirmations.get(self._redis_channel(channel))
            if future is not None:
                waiting.add(future)
        if new:
            try:
                await conn.send_command("SUBSCRIBE", *(self._redis_channel(c) for c in new))
            except _REDIS_DOWN as error:
                # The reader sees the broken connection too and re-subscribes on reconnect.
                log.debug("event bus: SUBSCRIBE failed: %s", error)
                return
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=_CONFIRM_TIMEOUT)
            if late:
                log.warning("event bus: Redis did not confirm a subscription in time")
                return
        if new:
            await self._announce(new)

    async def _remove(self, subscription: RedisSubscription, channels: Iterable[str]) -> None:
        gone: list[bytes] = []
        for channel in list(channels):
            subscription.channels.discard(channel)
            subscribers = self._local.get(channel)
            if subscribers is None:
                continue
            subscribers.discard(subscription)
            if not subscribers:
                del self._local[channel]
                name = self._redis_channel(channel)
                gone.append(name)
                # Nobody here wants it any more: whoever still waits for its SUBSCRIBE can go.
                future = self._confirmations.pop(name, None)
                if future is not None and not future.done():
                    future.set_result(None)
        conn = self._conn
        if not gone or conn is None:
            return
        for name in gone:
            self._unsubscribes_in_flight[name] = self._unsubscribes_in_flight.get(name, 0) + 1
        try:
            await conn.send_command("UNSUBSCRIBE", *gone)
        except _REDIS_DOWN as error:
            # A new connection subscribes only what _local holds, so nothing to undo.
            log.debug("event bus: UNSUBSCRIBE failed: %s", error)

    def _confirmation(self, redis_channel: bytes) -> asyncio.Future[None]:
        future = self._confirmations.get(redis_channel)
        if future is None:
            future = self._confirmations[redis_channel] = asyncio.get_running_loop().create_future()
        return future

    async def _announce(self, channels: list[str]) -> None:
        client = self._client
        if client is None:
            return
        try:
            await client.publish(
                self._control, orjson.dumps({"node": self.node_id, "channels": channels})
            )
        except _REDIS_DOWN as error:
            # Other nodes still learn of the channels from their next PUBSUB CHANNELS.
            log.debug("event bus: announcement failed: %s", error)

    async def _announce_when_confirmed(
        self, channels: list[str], futures: list[asyncio.Future[None]]
    ) -> None:
        _, late = await asyncio.wait(set(futures), timeout=_CONFIRM_TIMEOUT)
        if not late:
            await self._announce(channels)

    # -- the reader: one pub/sub connection per node -------------------------------------------

    async def _read_loop(self) -> None:
        assert self._client is not None
        delay = _BACKOFF_MIN
        broken_before = False
        announcer: asyncio.Task[None] | None = None
        while True:
            # Our own connection, outside the pool: it is never handed out for commands.
            pool = self._client.connection_pool
            conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                self._confirmations_reset()
                self._conn = conn
                channels = list(self._local)
                names = [self._redis_channel(c) for c in channels]
                futures = [self._confirmation(name) for name in names]
                await conn.send_command("SUBSCRIBE", self._control, *names)
                self._up.set()
                if broken_before:
                    log.info("event bus: Redis pub/sub connection restored")
                    broken_before = False
                if channels:
                    # Tell the other nodes again: their refresh may have dropped our channels
                    # while we were away.
                    announcer = asyncio.create_task(
                        self._announce_when_confirmed(channels, futures)
                    )
                last_seen = time.monotonic()
                while True:
                    # push_request: pub/sub replies are returned to us, not to a push handler.
                    response = await conn.read_response(
                        timeout=self.refresh_interval, push_request=True
                    )
                    now = time.monotonic()
                    if response is None:
                        # Quiet: make sure the connection is alive (a dead peer sends no FIN).
                        if now - last_seen > 3 * self.refresh_interval:
                            raise ConnectionError("pub/sub connection silent, no PING reply")
                        await conn.send_command("PING")
                        continue
                    last_seen = now
                    delay = _BACKOFF_MIN
                    self._handle(response)
            except _REDIS_DOWN as error:
                if not self._running:
                    return  # stopping (see stop(): the cancel may have become a TimeoutError)
                if not broken_before:
                    log.warning(
                        "event bus: Redis pub/sub connection lost (%s); reconnecting", error
                    )
                broken_before = True
            finally:
                self._conn = None
                self._up.clear()
                if announcer is not None:
                    announcer.cancel()
                    announcer = None
                with contextlib.suppress(*_REDIS_DOWN):
                    await conn.disconnect(nowait=True)
            self.reconnects += 1
            # Jitter so that nodes do not all reconnect in the same instant after an outage.
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, _BACKOFF_MAX)

    def _confirmations_reset(self) -> None:
        # A new connection: replies of the old one never come. Waiting subscribers keep their
        # futures (the new connection subscribes everything in _local and resolves them).
        self._unsubscribes_in_flight.clear()

    def _handle(self, response: Any) -> None:
        if not isinstance(response, list) or len(response) < 2:
            return
        kind = response[0]
        if kind == b"message":
            channel, data = response[1], response[2]
            try:
                if channel == self._control:
                    self._on_announcement(data)
                else:
                    self._on_message(channel, data)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                # Someone else's garbage on our channels must not kill the reader.
                log.warning("event bus: undecodable message on %r", channel)
        elif kind == b"subscribe":
            name = response[1]
            if self._unsubscribes_in_flight.get(name, 0) == 0:
                future = self._confirmations.pop(name, None)
                if future is not None and not future.done():
                    future.set_result(None)
        elif kind == b"unsubscribe":
            name = response[1]
            count = self._unsubscribes_in_flight.get(name, 0)
            if count > 1:
                self._unsubscribes_in_flight[name] = count - 1
            else:
                self._unsubscribes_in_flight.pop(name, None)

    def _on_message(self, redis_channel: bytes, data: bytes) -> None:
        if not redis_channel.startswith(self._data_prefix_bytes):
            return
        channel = redis_channel[len(self._data_prefix_bytes) :].decode()
        subscribers = self._local.get(channel)
        if not subscribers:
            return
        envelope = orjson.loads(data)
        if envelope["node"] == self.node_id:
            return  # already delivered locally when it was published
        message = envelope["message"]
        for subscription in tuple(subscribers):
            subscription.offer(channel, message)

    def _on_announcement(self, data: bytes) -> None:
        announcement = orjson.loads(data)
        channels = [str(c) for c in announcement["channels"]]
        now = time.monotonic()
        for channel in channels:
            self._announced[channel] = now
        self._cluster = self._cluster.union(channels)

    # -- the cluster view ----------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self._refresh_view()
            except _REDIS_DOWN as error:
                # Keep the last view: a False must be right, a stale True is only wasted work.
                if not failing:
                    log.warning("event bus: cannot refresh subscriber view from Redis: %s", error)
                failing = True
            else:
                failing = False

    async def _refresh_view(self) -> None:
        assert self._client is not None
        started = time.monotonic()
        names = await self._client.pubsub_channels(self._pattern)
        skip = len(self._data_prefix)
        # Bytes, as the client does not decode responses; str only if the URL asked for decoding.
        view = {(n.decode() if isinstance(n, bytes) else n)[skip:] for n in names}
        # Announcements that arrived after we asked may be newer than Redis' answer.
        self._announced = {c: t for c, t in self._announced.items() if t >= started}
        view.update(self._announced)
        self._cluster = frozenset(view)

    # -- the sender ----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        assert self._client is not None
        delay = _BACKOFF_MIN
        failing = False
        while True:
            if not self._outbox:
                self._sender_idle.set()
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            # Events this late are no longer live; drop them rather than replay an outage.
            too_old = time.monotonic() - self.max_publish_delay
            while self._outbox and self._outbox[0][0] < too_old:
                self._outbox.popleft()
                self.publish_dropped += 1
            batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), _BATCH))]
            if not batch:
                continue
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for _, channel, payload in batch:
                        pipe.publish(channel, payload)
                    await pipe.execute()
            except _REDIS_DOWN as error:
                self.publish_dropped += len(batch)
                if not failing:
                    log.warning("event bus: cannot publish to Redis (%s); dropping events", error)
                failing = True
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, _BACKOFF_MAX)
            else:
                if failing:
                    log.info("event bus: publishing to Redis again")
                failing = False
                delay = _BACKOFF_MIN

    def _redis_channel(self, channel: str) -> bytes:
        return (self._data_prefix + channel).encode()


def _glob_escape(text: str) -> str:
    # PUBSUB CHANNELS takes a glob pattern; the prefix must match literally.
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _safe_url(url: str) -> str:
    """The URL without a password, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{host}"
