"""Which node holds which charge point: ``{prefix}owner:{identity} -> node id`` in Redis.

- **Claim** on connect: the key is set to this node with a TTL and the previous owner returned,
  so a charge point that reconnected through another node can have its stale socket closed there.
- **Refresh**: the owning node extends its keys every ``ttl / 3``. A key it finds missing (Redis
  restarted, or was down longer than the TTL) is claimed again; a key it finds held by another
  node means the charge point moved and the local socket is stale (the eviction message was lost).
- **Release** on disconnect is a compare-and-delete (Lua): a node only ever deletes its own claim,
  never the claim of the node the charge point moved to.
- **Reap**: a crashed node refreshes nothing, so its keys lapse after the TTL; one node at a time
  (a leader lock in Redis) marks such charge points ``connected = false`` in the database. A
  charge point is reaped only when its key was missing on two passes a TTL apart and its
  ``connected_at`` did not change in between, so a live owner that briefly lost Redis has time to
  claim again and a reconnect racing the reaper is never overwritten.
- **Reassert**: each owner periodically sets ``connected = true`` for charge points it holds that
  the database shows disconnected (a reap or a late disconnect of the old node raced the move).

Keys of one charge point are single keys and scripts touch one key each (refresh batches are
pipelined), so this works on a single Redis; Redis Cluster would need hash tags (not supported).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.bus import channels
from chargegrid.bus.base import Bus
from chargegrid.clock import Clock, isoformat_z
from chargegrid.cluster.link import ClusterUnavailable, RedisLink
from chargegrid.store.group_commit import GroupCommitter, StoreUnavailable
from chargegrid.store.tables import charge_points

log = logging.getLogger(__name__)

# KEYS[1] owner key; ARGV node, ttl ms. Returns the previous owner (or nil).
_CLAIM = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return old
"""
# KEYS[1] owner key; ARGV node. 1 if it was ours and is deleted, 0 otherwise.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] owner key; ARGV node, ttl ms. 0 extended, 1 claimed again (had lapsed), else the owner.
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 0 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return v
"""
# The reaper's leader lock: acquire, or extend if already ours.
_LEAD = """
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""

EXTENDED = 0
RECLAIMED = 1
_BATCH = 500


class Ownership:
    """The owner keys of one node (all Redis access through ``link``)."""

    def __init__(self, link: RedisLink, *, node_id: str, prefix: str, ttl: float) -> None:
        self.link = link
        self.node_id = node_id
        self.prefix = prefix
        self.ttl = ttl
        self._ttl_ms = max(1, int(ttl * 1000))
        client = link.client
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._refresh = client.register_script(_REFRESH)
        self._lead = client.register_script(_LEAD)

    def key(self, identity: str) -> str:
        return f"{self.prefix}owner:{identity}"

    async def claim(self, identity: str) -> str | None:
        """Hold ``identity``; return the node that held it before, if another one did."""
        key = self.key(identity)

        async def work(_: Redis) -> Any:
            return await self._claim(keys=[key], args=[self.node_id, self._ttl_ms])

        previous = _text(await self.link.run(work))
        return previous if previous != self.node_id else None

    async def release(self, identity: str) -> bool:
        """Drop our claim; False if another node holds ``identity`` now (it moved)."""
        key = self.key(identity)

        async def work(_: Redis) -> Any:
            return await self._release(keys=[key], args=[self.node_id])

        return bool(await self.link.run(work))

    async def owner(self, identity: str) -> str | None:
        key = self.key(identity)
        return _text(await self.link.run(lambda client: client.get(key)))

    async def owners(self, identities: Sequence[str]) -> list[str | None]:
        found: list[str | None] = []
        for start in range(0, len(identities), _BATCH):
            keys = [self.key(i) for i in identities[start : start + _BATCH]]

            async def work(client: Redis, keys: list[str] = keys) -> list[Any]:
                return list(await client.mget(keys))

            values = await self.link.run(work)
            found.extend(_text(v) for v in values)
        return found

    async def refresh(self, identities: Sequence[str]) -> dict[str, int | str]:
        """Extend our claims; per identity :data:`EXTENDED`, :data:`RECLAIMED` or the owner."""
        result: dict[str, int | str] = {}
        for start in range(0, len(identities), _BATCH):
            chunk = identities[start : start + _BATCH]

            async def work(client: Redis, chunk: Sequence[str] = chunk) -> list[Any]:
                async with client.pipeline(transaction=False) as pipe:
                    for identity in chunk:
                        await self._refresh(
                            keys=[self.key(identity)],
                            args=[self.node_id, self._ttl_ms],
                            client=pipe,
                        )
                    return list(await pipe.execute())

            for identity, value in zip(chunk, await self.link.run(work), strict=True):
                result[identity] = value if isinstance(value, int) else str(_text(value))
        return result

    async def lead(self, role: str, hold: float) -> bool:
        """Whether this node holds (or now took) the leader lock for ``role``."""
        key = f"{self.prefix}leader:{role}"

        async def work(_: Redis) -> Any:
            return await self._lead(keys=[key], args=[self.node_id, max(1, int(hold * 1000))])

        return bool(await self.link.run(work))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class Keeper:
    """The periodic work of ownership: refresh, evict stale sockets, reassert, reap."""

    def __init__(
        self,
        ownership: Ownership,
        *,
        held: Callable[[], list[str]],
        close_stale: Callable[[str, str], Any],
        writer: GroupCommitter,
        bus: Bus,
        clock: Clock,
    ) -> None:
        self.ownership = ownership
        self._held = held
        self._close_stale = close_stale
        self._writer = writer
        self._bus = bus
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        # identity -> connected_at seen on the previous reaper pass with no owner key.
        self._suspects: dict[str, datetime | None] = {}
        self.reaped = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="cluster-ownership")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        ttl = self.ownership.ttl
        passes = 0
        while True:
            await asyncio.sleep(ttl / 3)
            passes += 1
            try:
                await self.refresh_once()
                # Reaping and reasserting every TTL: often enough, and cheap per pass.
                if passes % 3 == 0:
                    await self.reassert_once()
                    if await self.ownership.lead("reaper", 2 * ttl):
                        await self.reap_once()
                    else:
                        self._suspects.clear()  # another node reaps; our memory is stale
            except ClusterUnavailable:
                pass  # logged by the link; the next pass retries
            except StoreUnavailable as error:
                log.warning("cluster: database unavailable for ownership upkeep: %s", error)
            except Exception:
                log.exception("cluster: ownership upkeep failed")

    async def refresh_once(self) -> None:
        statuses = await self.ownership.refresh(self._held())
        for identity, status in statuses.items():
            if isinstance(status, str):
                # Another node holds it: the charge point reconnected there and the eviction
                # message did not reach us. Our socket is stale.
                log.info("%s is held by node %s; closing the stale socket here", identity, status)
                await self._close_stale(identity, status)

    async def reassert_once(self) -> None:
        held = self._held()
        if not held:
            return
        now = self._clock.now()

        async def unit(c: AsyncConnection) -> None:
            for start in range(0, len(held), _BATCH):
                await c.execute(
                    update(charge_points)
                    .where(
                        charge_points.c.identity.in_(held[start : start + _BATCH]),
                        charge_points.c.connected.is_(False),
                    )
                    .values(connected=True, connected_at=now, updated_at=now)
                )

        await self._writer.run(unit)

    async def reap_once(self) -> list[str]:
        """Mark charge points whose owner key lapsed (twice in a row) as disconnected."""

        async def load(c: AsyncConnection) -> list[tuple[str, datetime | None]]:
            rows = await c.execute(
                select(charge_points.c.identity, charge_points.c.connected_at).where(
                    charge_points.c.connected.is_(True)
                )
            )
            return [(r[0], r[1]) for r in rows]

        listed = await self._writer.run(load)
        local = set(self._held())
        candidates = [(i, at) for i, at in listed if i not in local]
        owners = await self.ownership.owners([i for i, _ in candidates])
        orphans = {i: at for (i, at), owner in zip(candidates, owners, strict=True) if not owner}
        due = {
            i: at for i, at in orphans.items() if i in self._suspects and self._suspects[i] == at
        }
        self._suspects = {i: at for i, at in orphans.items() if i not in due}
        if not due:
            return []
        now = self._clock.now()

        async def unit(c: AsyncConnection) -> list[str]:
            done: list[str] = []
            for identity, at in due.items():
                result = await c.execute(
                    update(charge_points)
                    .where(
                        charge_points.c.identity == identity,
                        charge_points.c.connected.is_(True),
                        charge_points.c.connected_at.is_not_distinct_from(at),
                    )
                    .values(connected=False, disconnected_at=now, updated_at=now)
                )
                if result.rowcount:
                    done.append(identity)
            return done

        reaped: list[str] = await self._writer.run(unit)
        self.reaped += len(reaped)
        for identity in reaped:
            log.info("%s: its node stopped refreshing ownership; marked disconnected", identity)
            message = {
                "charge_point": identity,
                "event": "disconnected",
                "reason": "its node is gone",
                "timestamp": isoformat_z(now),
            }
            for channel in (
                channels.charge_point(identity, channels.CONNECTION),
                channels.fleet(channels.CONNECTION),
            ):
                if self._bus.has_subscribers(channel):
                    await self._bus.publish(channel, message)
        return reaped
