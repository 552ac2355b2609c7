"""Live statistics answered by every node: the node holding a charge point mirrors them to Redis.

A node computes live statistics (:mod:`chargegrid.metering.live_stats`) from the values it
ingests, that is for the charge points it holds. In a cluster it also keeps a copy in Redis:

- ``{prefix}live-stats:cp:{identity}``: the body of ``GET /charge-points/{identity}/live-stats``;
- ``{prefix}live-stats:session:{id}``: the body of ``GET /sessions/{id}/live-stats``.

**Writing** is coalesced, never per value (DESIGN.md performance budget): the live-stats
publisher's pass, once per ``live_stats_publish_interval``, hands over the charge points that got
new values since the last pass, and one pipelined batch writes one snapshot for each of them that
this node holds (the same snapshot the ``live_stats`` topic carries, built once for both).
Building snapshots gets a CPU budget per pass (:data:`_CPU_SHARE`); under overload the rest waits
for later passes. Every key has a TTL (``cluster_live_stats_ttl``). Every third of it the node
extends the keys of the charge points it still holds (one pipelined ``PEXPIRE`` each) and has any
missing key written again (Redis restarted, or a write failed while it was down). So the figures
of a crashed node, or of a charge point that disconnected, lapse within the TTL. A session that
stops gets its final figures written once, with ``cluster_live_stats_finished_ttl``: they no
longer change.

**Reading** (any node): a charge point held here is answered from memory (what this node ingests
is the freshest there is); any other from Redis. A charge point held here that has no figures
here yet (it has just moved from another node) is answered from Redis too, until it sends values.
If Redis cannot be asked, a charge point held elsewhere raises :class:`ClusterUnavailable` (the
API answers 503): a node never passes off its own, possibly stale, memory as the fleet's figures.
Answers carry ``node`` (whose figures these are) and ``updated_at`` (when they were taken); an
active session's ``duration_seconds`` is computed at reading time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from chargegrid.clock import Clock, isoformat_z, parse_timestamp
from chargegrid.cluster.link import ClusterUnavailable, RedisLink
from chargegrid.metering.live_stats import LiveStats, SessionStats

log = logging.getLogger(__name__)

_BATCH = 500
# Finished sessions whose final write failed (Redis down) are retried, at most this many.
_FINISHED_BACKLOG = 1000
# Building a snapshot costs about 0.1 ms for a charge point sending a value a minute, but grows
# with the values in its rolling window (~13 ms at 20 values/s, as in the benchmarks). A pass
# spends at most this share of the publish interval building them, in slices between which the
# event loop serves charge points; what is left waits for the next pass (its key is kept alive
# meanwhile). Under normal load a pass writes everything that changed.
_CPU_SHARE = 0.05
_SLICE = 0.005  # seconds of building before yielding to the event loop

Record = tuple[str, bytes, int]  # key, value, TTL in ms


class LiveStatsMirror:
    """This node's live statistics in Redis, and the other nodes' read from there."""

    def __init__(
        self,
        link: RedisLink,
        live_stats: LiveStats,
        clock: Clock,
        *,
        node_id: str,
        prefix: str,
        ttl: float,
        finished_ttl: float,
        interval: float,
        held: Callable[[str], bool],
        held_identities: Callable[[], list[str]],
    ) -> None:
        self.link = link
        self.node_id = node_id
        self.prefix = prefix
        self.ttl = ttl
        self._ttl_ms = max(1, int(ttl * 1000))
        self._finished_ttl_ms = max(1, int(finished_ttl * 1000))
        self._budget = _CPU_SHARE * interval
        self._live_stats = live_stats
        self._clock = clock
        self._held = held
        self._held_identities = held_identities
        # identity -> (charge point id, active session ids) of the keys this node wrote and
        # keeps alive; identity -> charge point id of every charge point it has figures for.
        self._written: dict[str, tuple[int, list[int]]] = {}
        self._ids: dict[str, int] = {}
        # Charge points (database ids) to write, oldest first; sessions that stopped.
        self._pending: dict[int, None] = {}
        self._finished: dict[int, SessionStats] = {}
        self._task: asyncio.Task[None] | None = None
        self.deferred = 0  # charge points left for a later pass by the CPU budget (overload)
        live_stats.on_finish = self._session_finished

    def cp_key(self, identity: str) -> str:
        return f"{self.prefix}live-stats:cp:{identity}"

    def session_key(self, session_id: int) -> str:
        return f"{self.prefix}live-stats:session:{session_id}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="cluster-live-stats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- writing ----------------------------------------------------------------------------

    def _session_finished(self, stats: SessionStats) -> None:
        # Every node hears every session stop (the sessions topic crosses nodes); only a node
        # that ingested values of the session has figures worth writing.
        if stats.first_at is not None:
            self._finished[stats.id] = stats
            while len(self._finished) > _FINISHED_BACKLOG:
                del self._finished[next(iter(self._finished))]

    async def flush(
        self,
        changed: set[int],
        identities: Mapping[int, str],
        bodies: Mapping[int, dict[str, Any]],
    ) -> None:
        """Write the charge points in ``changed`` (database ids, named by ``identities``) that
        this node holds, those left over from earlier passes, and the sessions that stopped.
        ``bodies``: the snapshots already built for the ``live_stats`` topic, reused."""
        pending = self._pending
        pending.update(dict.fromkeys(changed))
        pending.update(dict.fromkeys(s.charge_point_id for s in self._finished.values()))
        if not pending or not self.link.up:
            # Redis is down: building snapshots now would be wasted. The refresh pass probes
            # Redis every TTL/3; these are written on the first pass after it answers.
            return
        finished, self._finished = self._finished, {}
        stamp = isoformat_z(self._clock.now())
        records: list[Record] = []
        written: dict[str, tuple[int, list[int]]] = {}
        began = slice_began = time.perf_counter()
        for cp_id in list(pending):
            now = time.perf_counter()
            if written and now - began > self._budget:
                self.deferred += len(pending)
                break
            if now - slice_began > _SLICE:
                await asyncio.sleep(0)
                slice_began = time.perf_counter()
            if cp_id not in pending:
                continue
            del pending[cp_id]
            identity = identities.get(cp_id)
            if identity is None:
                continue
            self._ids[identity] = cp_id
            if not self._held(identity):
                continue  # the charge point moved on; the node holding it now writes it
            body = bodies.get(cp_id) or self._body(identity, cp_id)
            if body["connectors"]:
                written[identity] = self._records(identity, cp_id, body, stamp, records)
        for session in finished.values():
            identity = identities.get(session.charge_point_id)
            snapshot = self._live_stats.for_session(session.id)
            if identity is None or snapshot is None or not self._held(identity):
                continue
            records.append(
                (self.session_key(session.id), self._encode(snapshot, stamp), self._finished_ttl_ms)
            )
        try:
            await self._write(records)
        except ClusterUnavailable:
            # Not written: retried once Redis answers again.
            pending.update(dict.fromkeys(cp_id for cp_id, _ in written.values()))
            for session_id, session in finished.items():
                self._finished.setdefault(session_id, session)
            return
        self._written.update(written)

    def _body(self, identity: str, cp_id: int) -> dict[str, Any]:
        return {"charge_point": identity, **self._live_stats.for_charge_point(cp_id)}

    def _encode(self, body: Mapping[str, Any], stamp: str) -> bytes:
        return orjson.dumps({**body, "node": self.node_id, "updated_at": stamp})

    def _records(
        self, identity: str, cp_id: int, body: dict[str, Any], stamp: str, records: list[Record]
    ) -> tuple[int, list[int]]:
        """Append the charge point's record and its active sessions' records; return what the
        refresh pass keeps alive."""
        records.append((self.cp_key(identity), self._encode(body, stamp), self._ttl_ms))
        sessions: list[int] = []
        for connector in body["connectors"]:
            session = connector["session"]
            if session is not None:
                sessions.append(int(session["session_id"]))
                records.append(
                    (
                        self.session_key(session["session_id"]),
                        self._encode(session, stamp),
                        self._ttl_ms,
                    )
                )
        return cp_id, sessions

    async def _write(self, records: Sequence[Record]) -> None:
        for start in range(0, len(records), _BATCH):
            chunk = records[start : start + _BATCH]

            async def work(client: Redis, chunk: Sequence[Record] = chunk) -> None:
                async with client.pipeline(transaction=False) as pipe:
                    for key, value, ttl_ms in chunk:
                        pipe.set(key, value, px=ttl_ms)
                    await pipe.execute()

            await self.link.run(work)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.refresh_once()
            except ClusterUnavailable:
                pass  # logged by the link; the next pass writes what is missing
            except Exception:
                log.exception("cluster: live statistics upkeep failed")

    async def refresh_once(self) -> None:
        """Extend the keys of the charge points held here; have the missing ones written (by
        the next flush, within its CPU budget)."""
        if not self.link.up:
            # Flushes do not build snapshots while Redis is down; this is what notices it back.
            await self.link.run(lambda client: client.ping())
        for identity in [i for i in self._written if not self._held(i)]:
            del self._written[identity]  # no longer ours: its keys lapse
        held = self._held_identities()
        # (identity, its active sessions) as of now: a flush may rewrite them while we wait.
        extend = [(i, list(self._written[i][1])) for i in held if i in self._written]
        missing = [i for i in held if i not in self._written and i in self._ids]
        for start in range(0, len(extend), _BATCH):
            chunk = extend[start : start + _BATCH]

            async def work(client: Redis, chunk: list[tuple[str, list[int]]] = chunk) -> list[Any]:
                async with client.pipeline(transaction=False) as pipe:
                    for identity, sessions in chunk:
                        pipe.pexpire(self.cp_key(identity), self._ttl_ms)
                        for session_id in sessions:
                            pipe.pexpire(self.session_key(session_id), self._ttl_ms)
                    return list(await pipe.execute())

            results = iter(await self.link.run(work))
            for identity, sessions in chunk:
                if not next(results):
                    missing.append(identity)  # the key is gone (Redis restarted): write it
                for _ in sessions:
                    next(results)
        for identity in missing:
            self._written.pop(identity, None)
            self._pending[self._ids[identity]] = None

    # -- reading ----------------------------------------------------------------------------

    def _local(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {**body, "node": self.node_id, "updated_at": isoformat_z(self._clock.now())}

    async def _read(self, key: str) -> dict[str, Any] | None:
        raw = await self.link.run(lambda client: client.get(key))
        if raw is None:
            return None
        stored: dict[str, Any] = orjson.loads(raw)
        return stored

    def _age(self, session: dict[str, Any]) -> None:
        """An active session's duration up to now, not up to when it was written."""
        if session.get("active") and session.get("started_at"):
            started = parse_timestamp(session["started_at"])
            session["duration_seconds"] = (self._clock.now() - started).total_seconds()

    async def charge_point(self, identity: str, cp_id: int) -> dict[str, Any]:
        """The body of ``GET /charge-points/{identity}/live-stats`` as the fleet knows it."""
        held = self._held(identity)
        if held:
            local = self._local(self._body(identity, cp_id))
            if local["connectors"]:
                return local
            try:
                stored = await self._read(self.cp_key(identity))
            except ClusterUnavailable:
                return local  # held here: what this node has is all there is
        else:
            stored = await self._read(self.cp_key(identity))
        if stored is None:
            return {"charge_point": identity, "connectors": [], "node": None, "updated_at": None}
        for connector in stored.get("connectors", ()):
            if connector.get("session") is not None:
                self._age(connector["session"])
        return stored

    async def session(self, session_id: int, identity: str) -> dict[str, Any] | None:
        """The body of ``GET /sessions/{id}/live-stats`` as the fleet knows it; None if no
        node has figures for it. ``identity``: its charge point."""
        held = self._held(identity)
        local = self._live_stats.for_session(session_id) if held else None
        # Without values here the local entry is only what the sessions topic told this node.
        if local is not None and local["last_value_at"] is not None:
            return self._local(local)
        try:
            stored = await self._read(self.session_key(session_id))
        except ClusterUnavailable:
            if held:
                return self._local(local) if local is not None else None
            raise
        if stored is None:
            return self._local(local) if local is not None else None
        self._age(stored)
        return stored
