"""Cluster behaviour under faults, with two in-process nodes on one PostgreSQL database.

- Redis down: each node keeps serving its own charge points; a cross-node command fails at once
  with a clear error; routing and events resume when Redis is back.
- A charge point reconnecting through another node moves ownership and its stale socket closes.
- A crashed node's charge points are marked disconnected once its keys lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis
from clustersupport import PrivateRedis, new_prefix
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, ResetStatus

from chargegrid.bus import channels
from chargegrid.commands.service import CommandError
from chargegrid.config import Settings
from support import RecordingChargePoint, RunningServer, charge_point
from support import running_server as serve

pytestmark = [pytest.mark.postgres]


class Resettable(RecordingChargePoint):
    @on(Action.reset)
    def on_reset(self, **_: Any) -> call_result.Reset:
        return call_result.Reset(status=ResetStatus.accepted)


def node_settings(database_url: str, redis_url: str, prefix: str, name: str) -> Settings:
    return Settings(
        database_url=database_url,
        bus_url=redis_url,
        bus_prefix=prefix,
        node_id=name,
        call_timeout=2.0,
        liveness_flush_seconds=0.1,
        cluster_ownership_ttl=1.0,
        cluster_route_margin=1.0,
        migrate_on_start=name == "a",
    )


@contextlib.asynccontextmanager
async def two_nodes(database_url: str, redis_url: str) -> AsyncIterator[tuple[Any, Any]]:
    prefix = new_prefix()
    async with (
        serve(node_settings(database_url, redis_url, prefix, "a")) as a,
        serve(node_settings(database_url, redis_url, prefix, "b")) as b,
    ):
        yield a, b


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_redis_down_nodes_serve_their_own_and_cross_node_fails_fast(
    shared_database: str, private_redis: PrivateRedis
) -> None:
    async with two_nodes(shared_database, private_redis.url) as (a, b):
        await a.add_charge_point("CP1")
        async with charge_point(a, "CP1", cls=Resettable) as cp:
            await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            remote = await b.node.commands.perform_now("CP1", "Reset", {"type": "Soft"})
            assert remote.status == "accepted"

            private_redis.stop()
            # A still serves its charge point: messages answered, local commands sent.
            answer = await cp.call(call.Heartbeat())
            assert answer.current_time
            local = await a.node.commands.perform_now("CP1", "Reset", {"type": "Soft"})
            assert local.status == "accepted"
            # Through B: a clear error at once, nothing recorded as sent.
            started = time.perf_counter()
            with pytest.raises(CommandError) as refused:
                await b.node.commands.perform_now("CP1", "Reset", {"type": "Soft"})
            assert time.perf_counter() - started < 2.5
            assert refused.value.status == 503
            assert "unreachable" in refused.value.message
            ready = await _readyz(b)
            assert ready["cluster"]["redis"] == "down"

            # Redis returns (empty: it kept nothing): A claims CP1 again, routing resumes.
            await private_redis.start()

            async def routed() -> bool:
                operation = await b.node.commands.perform_now("CP1", "Reset", {"type": "Soft"})
                return bool(operation.status == "accepted")

            await eventually(routed, 15)
            # Events from A reach B's subscribers again.
            channel = channels.charge_point("CP1", channels.STATUS)
            subscription = await b.node.bus.subscribe([channel])

            async def heard_of() -> bool:  # A publishes to Redis once it knows of B's subscriber
                return bool(a.node.bus.has_subscribers(channel))

            await eventually(heard_of)
            await cp.call(
                call.StatusNotification(
                    connector_id=1,
                    error_code="NoError",
                    status="Available",
                    timestamp="2026-11-01T10:00:00Z",
                )
            )
            iterator = aiter(subscription)
            _, event = await asyncio.wait_for(anext(iterator), 5)
            assert event["status"] == "Available"
            await subscription.close()
        operations = await a.rows("SELECT status FROM operations ORDER BY id")
        assert [r["status"] for r in operations] == ["accepted"] * (len(operations))


async def _readyz(server: RunningServer) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=server.http_url) as http:
        body: dict[str, Any] = (await http.get("/readyz")).json()
        return body


async def test_reconnect_through_another_node_moves_ownership_and_evicts(
    shared_database: str, shared_redis: str
) -> None:
    async with two_nodes(shared_database, shared_redis) as (a, b):
        await a.add_charge_point("CP1")
        prefix = a.node.settings.bus_prefix
        async with charge_point(a, "CP1", cls=Resettable) as old:
            await old.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            async with charge_point(b, "CP1", cls=Resettable) as new:
                # A closes the stale socket on B's word, well before any ping timeout.
                await eventually(lambda: _absent(a, "CP1"), 5)
                client = redis.from_url(shared_redis)
                try:
                    assert await client.get(f"{prefix}owner:CP1") == b"b"
                finally:
                    await client.aclose()
                # A's late cleanup left the row to B.
                assert await a.scalar("SELECT connected FROM charge_points") is True
                # Commands through A now reach the new socket on B.
                reset = await a.node.commands.perform_now("CP1", "Reset", {"type": "Soft"})
                assert reset.status == "accepted"
                await new.call(call.Heartbeat())


async def _absent(server: RunningServer, identity: str) -> bool:
    return identity not in server.node.registry


async def test_reaper_marks_a_crashed_nodes_charge_points_disconnected(
    shared_database: str, shared_redis: str
) -> None:
    async with two_nodes(shared_database, shared_redis) as (a, b):
        await a.add_charge_point("GHOST")
        # As a crashed node leaves it: connected in the database, no owner key in Redis.
        async with a.db() as connection:
            from sqlalchemy import text

            await connection.execute(
                text("UPDATE charge_points SET connected = true, connected_at = now()")
            )
            await connection.commit()
        # The background upkeep would race the passes below: run them by hand.
        await a.node.cluster.keeper.stop()
        await b.node.cluster.keeper.stop()
        keeper = a.node.cluster.keeper
        assert await keeper.reap_once() == []  # first sighting: only a suspect
        assert await keeper.reap_once() == ["GHOST"]
        assert await a.scalar("SELECT connected FROM charge_points") is False
        # And a command says "not connected" at once.
        with pytest.raises(CommandError) as refused:
            await a.node.commands.perform_now("GHOST", "Reset", {"type": "Soft"})
        assert refused.value.status == 409
