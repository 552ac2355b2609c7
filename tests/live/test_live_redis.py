"""Issue 5 on the Redis bus: two app instances sharing one Redis (and one database).

The charge point talks to node A; subscribers on node B see exactly what the single-node tests see.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from ocpp.v16 import call
from test_live_streams import _expected, _recv, _session, _sse_events, _token, live_socket

from chargegrid.bus import channels
from chargegrid.config import Settings
from support import charge_point, running_server

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis_settings(settings: Settings) -> Settings:
    client = redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception:
        import os

        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Redis is required in CI and not reachable at {REDIS_URL}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    finally:
        await client.aclose()
    return settings.model_copy(
        update={"bus_url": REDIS_URL, "bus_prefix": f"cgtest:{uuid.uuid4().hex[:8]}:"}
    )


async def test_subscribers_on_node_b_see_node_a_events_in_order(redis_settings: Settings) -> None:
    node_a_settings = redis_settings.model_copy(update={"node_id": "node-a"})
    node_b_settings = redis_settings.model_copy(
        update={"node_id": "node-b", "migrate_on_start": False}
    )
    async with running_server(node_a_settings) as node_a:
        await node_a.add_charge_point("CP1")
        await node_a.add_id_tag("TAG1")
        async with running_server(node_b_settings) as node_b:
            token = await _token(node_b, "viewer")
            async with (
                httpx.AsyncClient(base_url=node_b.http_url, timeout=10) as http,
                live_socket(node_b, token) as ws,
            ):
                await ws.send(
                    json.dumps(
                        {
                            "type": "subscribe",
                            "charge_point": "CP1",
                            "topics": ["status", "sessions", "meter_values"],
                        }
                    )
                )
                assert (await _recv(ws))["type"] == "subscribed"
                async with http.stream(
                    "GET",
                    "/api/v1/events",
                    params={"topics": "status,sessions"},
                    headers={"Authorization": f"Bearer {token}"},
                ) as sse:
                    # Node A publishes to Redis only the channels it knows B listens to: wait
                    # until it has heard of every one (a fixed 0.5 s raced a slow machine).
                    wanted = [
                        *(
                            channels.charge_point("CP1", topic)
                            for topic in (channels.STATUS, channels.SESSIONS, channels.METER_VALUES)
                        ),
                        *(channels.fleet(topic) for topic in (channels.STATUS, channels.SESSIONS)),
                    ]
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 10
                    while not all(node_a.node.bus.has_subscribers(c) for c in wanted):
                        assert loop.time() < deadline, "node A never heard of B's subscriptions"
                        await asyncio.sleep(0.02)
                    async with charge_point(node_a, "CP1") as cp:
                        await cp.call(
                            call.BootNotification(charge_point_vendor="V", charge_point_model="M")
                        )
                        tx = await _session(node_a, cp)
                    received = [await _recv(ws) for _ in range(5)]
                    fleet = await asyncio.wait_for(_sse_events(sse, 3), 5)
    assert [(m["topic"], m["data"]) for m in received] == _expected(tx)
    expected_fleet: list[tuple[str, dict[str, Any]]] = [
        (t, {"charge_point": "CP1", **d} if t == "status" else d)
        for t, d in _expected(tx)
        if t != "meter_values"
    ]
    assert [(e["event"], e["data"]["data"]) for e in fleet] == expected_fleet
