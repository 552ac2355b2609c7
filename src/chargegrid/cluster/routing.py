"""Commands for charge points held by another node: request/reply over Redis pub/sub.

Every node listens on its own channel ``{prefix}node:{node_id}``. A command for a charge point
held elsewhere is PUBLISHed to the owner's channel as ``{"type": "call", ...}``; the owner runs it
on its live socket (its own one-call-in-flight lock and timeout) and PUBLISHes
``{"type": "reply", ...}`` back to the requester's channel. The same channel carries
``{"type": "evict", ...}``: "this charge point reconnected through me, close your socket".

Why not the event bus: routing needs answers the bus deliberately does not give. PUBLISH returns
how many subscribers got the message, so a request to a node that is gone (crashed, its key not
yet lapsed) fails at once instead of after a timeout, and a Redis outage is an immediate error,
not a dropped message. There is no queue per charge point: a request lives only as long as its
requester waits.

Failure semantics seen by :class:`~chargegrid.commands.service.CommandService` are those of a
local :meth:`~chargegrid.gateway.connection.ChargePointConnection.call`: ``CallTimeout``,
``CallRejected`` (the charge point's CALLERROR, code and details intact) or ``ConnectionClosed``
(the socket, the owning node or Redis went away). The requester waits ``timeout + margin``: the
owner's own timeout normally answers first; the margin covers the owner's queue and two hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis

from chargegrid.cluster.link import REDIS_DOWN, ClusterUnavailable, RedisLink
from chargegrid.cluster.ownership import Ownership
from chargegrid.commands.service import CommandError
from chargegrid.gateway.connection import (
    CallRejected,
    CallTimeout,
    ChargePointConnection,
    ConnectionClosed,
)
from chargegrid.gateway.registry import ConnectionRegistry

log = logging.getLogger(__name__)

_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0
# A silent pub/sub connection is PINGed after this long, and dropped if still silent.
_IDLE = 2.0
_SUBSCRIBE_TIMEOUT = 3.0


class RemoteCallFailed(ConnectionClosed):
    """The owning node failed the call for a reason other than the charge point's answer."""


class RemoteChargePoint:
    """A charge point held by ``owner``: what CommandService calls instead of a socket."""

    def __init__(self, router: CommandRouter, identity: str, owner: str) -> None:
        self.identity = identity
        self.owner = owner
        self._router = router

    async def call(self, action: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self._router.call_remote(self.owner, self.identity, action, payload, timeout)


class CommandRouter:
    """This node's command channel: serves requests for local sockets, routes the others."""

    def __init__(
        self,
        link: RedisLink,
        ownership: Ownership,
        registry: ConnectionRegistry[ChargePointConnection],
        *,
        margin: float,
    ) -> None:
        self.link = link
        self.ownership = ownership
        self.node_id = ownership.node_id
        self.registry = registry
        self.margin = margin
        self._prefix = ownership.prefix
        self._channel = self.channel(self.node_id)
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], str]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.served = 0
        self.routed = 0

    def channel(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}"

    @property
    def listening(self) -> bool:
        """Whether this node's command channel is subscribed in Redis right now."""
        return self._subscribed.is_set()

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name="cluster-router")
        with contextlib.suppress(TimeoutError):
            # The bus already refused to start without Redis; this only avoids a window in
            # which other nodes see our keys but not yet our channel.
            await asyncio.wait_for(self._subscribed.wait(), _SUBSCRIBE_TIMEOUT)

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        for task in list(self._serving):
            task.cancel()
        self._fail_pending("this node is shutting down")

    # -- requester side ------------------------------------------------------------------------

    async def locate(self, identity: str) -> RemoteChargePoint | None:
        """The node holding ``identity`` if another live node does; None if nobody does.

        Raises CommandError(503) when Redis cannot be asked: the caller gets a clear answer at
        once rather than a command that can never arrive.
        """
        try:
            owner = await self.ownership.owner(identity)
            if owner is None or owner == self.node_id:
                return None
            channel = self.channel(owner)

            async def listeners(client: Redis) -> int:
                counts = await client.pubsub_numsub(channel)
                return int(counts[0][1]) if counts else 0

            if await self.link.run(listeners) == 0:
                # The owner crashed and its key has not lapsed yet: not connected, now.
                return None
        except ClusterUnavailable as error:
            raise CommandError(
                503,
                f"{identity} is not connected to this node, and the node holding it cannot be "
                f"reached: {error}",
            ) from None
        return RemoteChargePoint(self, identity, owner)

    async def call_remote(
        self, owner: str, identity: str, action: str, payload: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, owner)
        message = orjson.dumps(
            {
                "type": "call",
                "id": request_id,
                "from": self.node_id,
                "identity": identity,
                "action": action,
                "payload": payload,
                "timeout": timeout,
            }
        )
        channel = self.channel(owner)
        try:
            try:
                receivers = await self.link.run(lambda client: client.publish(channel, message))
            except ClusterUnavailable as error:
                raise ConnectionClosed(
                    f"cannot reach node {owner} holding {identity}: {error}"
                ) from None
            if receivers == 0:
                raise ConnectionClosed(f"node {owner} holding {identity} is gone")
            self.routed += 1
            wait = timeout + self.margin
            try:
                reply = await asyncio.wait_for(future, wait)
            except TimeoutError:
                raise CallTimeout(
                    f"no answer to {action} from node {owner} within {wait:g} s"
                ) from None
        finally:
            self._pending.pop(request_id, None)
        return _outcome(reply)

    def _fail_pending(self, reason: str, owner: str | None = None) -> None:
        for future, node in list(self._pending.values()):
            if (owner is None or node == owner) and not future.done():
                future.set_exception(ConnectionClosed(reason))

    async def evict(self, owner: str, identity: str) -> None:
        """Tell ``owner`` that ``identity`` reconnected here: its socket there is stale."""
        message = orjson.dumps({"type": "evict", "identity": identity, "by": self.node_id})
        channel = self.channel(owner)
        # If Redis is down the owner finds out on its next refresh (the key is ours now).
        with contextlib.suppress(ClusterUnavailable):
            await self.link.run(lambda client: client.publish(channel, message))

    # -- owner side ----------------------------------------------------------------------------

    async def _serve_call(self, request: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"type": "reply", "id": request["id"]}
        identity = str(request["identity"])
        connection = self.registry.get(identity)
        try:
            if connection is None:
                raise ConnectionClosed(f"{identity} is not connected to node {self.node_id}")
            response = await connection.call(
                str(request["action"]), dict(request["payload"]), float(request["timeout"])
            )
            reply["response"] = response
        except CallTimeout as error:
            reply["error"] = {"kind": "timeout", "description": str(error)}
        except CallRejected as error:
            reply["error"] = {
                "kind": "rejected",
                "code": error.code,
                "description": error.description,
                "details": error.details,
            }
        except ConnectionClosed as error:
            reply["error"] = {"kind": "closed", "description": str(error)}
        except Exception as error:
            log.exception("routed %s for %s failed", request.get("action"), identity)
            reply["error"] = {"kind": "failed", "description": type(error).__name__}
        self.served += 1
        channel = self.channel(str(request["from"]))
        data = orjson.dumps(reply)
        try:
            await self.link.run(lambda client: client.publish(channel, data))
        except ClusterUnavailable as error:
            log.warning("cannot return the answer for %s to node %s: %s", identity, channel, error)

    async def _serve_evict(self, message: dict[str, Any]) -> None:
        identity = str(message["identity"])
        connection = self.registry.get(identity)
        if connection is None:
            return
        with contextlib.suppress(ClusterUnavailable):
            # It may have come back here since: only the current key owner's word counts.
            if await self.ownership.owner(identity) == self.node_id:
                return
        log.info("%s reconnected through node %s; closing its socket here", identity, message["by"])
        await connection.close(1000, "reconnected through another node")

    def _dispatch(self, data: bytes) -> None:
        message = orjson.loads(data)
        kind = message.get("type")
        if kind == "reply":
            entry = self._pending.get(str(message.get("id")))
            if entry is not None and not entry[0].done():
                entry[0].set_result(message)
            return
        work: Callable[[dict[str, Any]], Awaitable[None]]
        if kind == "call":
            work = self._serve_call
        elif kind == "evict":
            work = self._serve_evict
        else:
            return
        task = asyncio.create_task(work(message))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _read_loop(self) -> None:
        delay = _BACKOFF_MIN
        broken = False
        while True:
            pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                if broken:
                    log.info("cluster: command channel subscribed again")
                    broken = False
                idle = 0.0
                while True:
                    message = await pubsub.get_message(timeout=_IDLE)
                    if message is None:
                        idle += _IDLE
                        if idle > 2 * _IDLE:
                            raise ConnectionError("command channel silent, no PING reply")
                        await pubsub.ping()
                        continue
                    idle = 0.0
                    delay = _BACKOFF_MIN
                    if message.get("type") == "message":
                        try:
                            self._dispatch(message["data"])
                        except (ValueError, KeyError, TypeError):
                            log.warning("cluster: undecodable message on the command channel")
                    # "pong" and other replies only prove the connection is alive.
            except REDIS_DOWN as error:
                if not broken:
                    log.warning("cluster: command channel lost (%s); reconnecting", error)
                broken = True
            finally:
                self._subscribed.clear()
                # Answers for requests in flight travel on this channel: they cannot come now.
                self._fail_pending("lost the connection to Redis while waiting for the answer")
                with contextlib.suppress(*REDIS_DOWN):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, _BACKOFF_MAX)


def _outcome(reply: dict[str, Any]) -> dict[str, Any]:
    """The CALLRESULT payload of a reply, or the exception a local call would have raised."""
    error = reply.get("error")
    if error is None:
        return dict(reply["response"])
    kind = error.get("kind")
    description = str(error.get("description", ""))
    if kind == "timeout":
        raise CallTimeout(description)
    if kind == "rejected":
        raise CallRejected(str(error.get("code")), description, dict(error.get("details") or {}))
    if kind == "closed":
        raise ConnectionClosed(description)
    raise RemoteCallFailed(f"the owning node failed the call: {description}")
