"""Issue 8, done-when: two ``chargegrid serve`` nodes behind nginx, sharing PostgreSQL and Redis.

A charge point connected through nginx to one node ("A") is commanded through the other node's
("B") API; a live subscriber on B sees A's events; A is SIGKILLed, the charge point reconnects
through nginx (now to B) and its transaction continues with nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
import websockets
from clustersupport import REDIS_URL, Cluster, Nginx, cli, need, new_prefix, redis_reachable
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from support import PostgresDatabases, RecordingChargePoint

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

OWNERSHIP_TTL = 2.0


class Charger(RecordingChargePoint):
    @on(Action.get_configuration)
    def on_get_configuration(self, **_: Any) -> call_result.GetConfiguration:
        return call_result.GetConfiguration(
            configuration_key=[{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
        )


@pytest.fixture
def cluster_database(postgres_databases: PostgresDatabases) -> str:
    return asyncio.run(postgres_databases.create())


@pytest.fixture
def cluster(cluster_database: str, tmp_path: Path) -> Iterator[Cluster]:
    need("nginx", Nginx.binary() is not None)
    need(f"Redis at {REDIS_URL}", asyncio.run(redis_reachable()))
    running = Cluster(cluster_database, new_prefix(), tmp_path)
    try:
        yield running
    finally:
        running.stop()


@contextlib.asynccontextmanager
async def charger(url: str, identity: str) -> AsyncIterator[tuple[Charger, Any]]:
    async with websockets.connect(
        url + identity, subprotocols=[websockets.Subprotocol("ocpp1.6")], compression=None
    ) as ws:
        cp = Charger(identity, ws)
        task = asyncio.create_task(cp.start())
        try:
            yield cp, ws
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def meter_value(tx: int, at: str, wh: int) -> call.MeterValues:
    return call.MeterValues(
        connector_id=1,
        transaction_id=tx,
        meter_value=[
            {
                "timestamp": at,
                "sampledValue": [
                    {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
                ],
            }
        ],
    )


async def recv_event(ws: Any, topic: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next live event of ``topic`` (others skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        message: dict[str, Any] = json.loads(
            await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        )
        if message.get("type") == "event" and message["topic"] == topic:
            return message


async def test_two_nodes_behind_nginx_command_events_and_failover(
    cluster: Cluster, cluster_database: str, tmp_path: Path
) -> None:
    db = cluster_database
    cli(db, "charge-points", "add", "CP1")
    cli(db, "id-tags", "add", "TAG1")
    cli(db, "users", "add", "ops", "--role", "operator", "--password", "")
    token = cli(db, "users", "token", "ops")
    settings = {"cluster_ownership_ttl": OWNERSHIP_TTL, "call_timeout": 5}
    nodes = [cluster.node("node-1", **settings), cluster.node("node-2", **settings)]
    for node in nodes:
        node.start()
    for node in nodes:
        ready = await node.ready()
        assert ready["cluster"] == {"node": node.name, "redis": "up"}
    nginx = Nginx(tmp_path, [n.port for n in nodes])
    await nginx.start()
    owner_key = f"{cluster.prefix}owner:CP1"
    store = await asyncpg.connect(db.replace("postgresql+asyncpg://", "postgresql://"))
    keys = redis.from_url(REDIS_URL)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        async with charger(nginx.ws_url, "CP1") as (cp, _ws):
            boot = await cp.call(
                call.BootNotification(charge_point_vendor="V", charge_point_model="M")
            )
            assert boot.status == "Accepted"
            owner = (await keys.get(owner_key)).decode()
            node_a = next(n for n in nodes if n.name == owner)
            node_b = next(n for n in nodes if n.name != owner)

            # A subscriber on B, for the charge point held by A.
            async with websockets.connect(f"{node_b.ws_base}/api/v1/live?token={token}") as live:
                await live.send(
                    json.dumps(
                        {
                            "type": "subscribe",
                            "charge_point": "CP1",
                            "topics": ["status", "sessions", "meter_values", "operations"],
                        }
                    )
                )
                assert json.loads(await live.recv())["type"] == "subscribed"
                await asyncio.sleep(0.5)  # the subscription is announced to node A

                await cp.call(
                    call.StatusNotification(
                        connector_id=1,
                        error_code="NoError",
                        status="Charging",
                        timestamp="2026-11-01T10:00:00Z",
                    )
                )
                status = await recv_event(live, "status")
                assert status["data"]["status"] == "Charging"
                started = await cp.call(
                    call.StartTransaction(
                        connector_id=1,
                        id_tag="TAG1",
                        meter_start=100,
                        timestamp="2026-11-01T10:00:01Z",
                    )
                )
                tx = int(started.transaction_id)
                session = await recv_event(live, "sessions")
                assert session["data"]["event"] == "started"
                assert session["data"]["session"]["id"] == tx
                for minute, wh in ((1, 200), (2, 300)):
                    await cp.call(meter_value(tx, f"2026-11-01T10:0{minute}:00Z", wh))
                value = await recv_event(live, "meter_values")
                assert value["data"]["session_id"] == tx

                # Commanded through B's API: routed to A, answered by the charge point.
                async with httpx.AsyncClient(base_url=node_b.http_url, timeout=20) as http:
                    t0 = time.perf_counter()
                    answered = await http.post(
                        "/api/v1/charge-points/CP1/commands/get-configuration",
                        params={"wait": "true"},
                        json={"key": ["HeartbeatInterval"]},
                        headers=auth,
                    )
                    assert answered.status_code == 200, answered.text
                    operation = answered.json()
                    assert operation["status"] == "accepted"
                    assert operation["response"]["configurationKey"][0]["value"] == "300"
                    assert time.perf_counter() - t0 < 5
                    published = await recv_event(live, "operations")
                    assert published["data"]["id"] == operation["id"]
                    # The charge point's CALLERROR comes back as it would locally.
                    refused = await http.post(
                        "/api/v1/charge-points/CP1/commands/clear-cache",
                        params={"wait": "true"},
                        headers=auth,
                    )
                    assert refused.status_code == 200, refused.text
                    assert refused.json()["status"] == "error"
                    assert refused.json()["error_code"] == "NotImplemented"
                    stored = await store.fetch("SELECT action, status FROM operations ORDER BY id")
                    assert [tuple(r) for r in stored] == [
                        ("GetConfiguration", "accepted"),
                        ("ClearCache", "error"),
                    ]

                # Node A crashes.
                node_a.kill()
                # Its key has not lapsed, but nobody listens for it: not connected, at once.
                async with httpx.AsyncClient(base_url=node_b.http_url, timeout=20) as http:
                    t0 = time.perf_counter()
                    gone = await http.post(
                        "/api/v1/charge-points/CP1/commands/get-configuration",
                        params={"wait": "true"},
                        json={},
                        headers=auth,
                    )
                    assert gone.status_code == 409, gone.text
                    assert "not connected" in gone.json()["detail"]
                    assert time.perf_counter() - t0 < 2

        # The charge point notices (nginx closed its socket) and reconnects through nginx.
        async with charger(nginx.ws_url, "CP1") as (cp, _ws):
            # B claims it once the handshake is through (the claim follows the upgrade).
            deadline = time.monotonic() + 5
            while (await keys.get(owner_key)) != node_b.name.encode():
                assert time.monotonic() < deadline, "node B never claimed the charge point"
                await asyncio.sleep(0.02)
            await cp.call(meter_value(tx, "2026-11-01T10:03:00Z", 400))
            stopped = await cp.call(
                call.StopTransaction(
                    meter_stop=500, timestamp="2026-11-01T10:04:00Z", transaction_id=tx
                )
            )
            assert stopped.id_tag_info is None or stopped.id_tag_info["status"] == "Accepted"
            # And it is commanded locally on B now.
            async with httpx.AsyncClient(base_url=node_b.http_url, timeout=20) as http:
                again = await http.post(
                    "/api/v1/charge-points/CP1/commands/get-configuration",
                    params={"wait": "true"},
                    json={},
                    headers=auth,
                )
                assert again.status_code == 200 and again.json()["status"] == "accepted"
            row = await store.fetchrow(
                "SELECT meter_start, meter_stop, stopped_at_raw FROM transactions WHERE id = $1", tx
            )
            assert tuple(row) == (100, 500, "2026-11-01T10:04:00Z")
            values = await store.fetch(
                "SELECT timestamp_raw, value FROM meter_values WHERE transaction_id = $1"
                " AND measurand = 'Energy.Active.Import.Register' ORDER BY timestamp",
                tx,
            )
            assert [(r[0], r[1]) for r in values] == [
                ("2026-11-01T10:01:00Z", 200.0),
                ("2026-11-01T10:02:00Z", 300.0),
                ("2026-11-01T10:03:00Z", 400.0),
            ]
            assert await store.fetchval("SELECT count(*) FROM transactions") == 1
            assert await store.fetchval(
                "SELECT connected FROM charge_points WHERE identity = 'CP1'"
            )
    finally:
        await store.close()
        await keys.aclose()
        nginx.stop()
