"""Issue 8: live statistics and latest values answered by any node; fleet counts fleet-wide.

Two nodes share one PostgreSQL database and one Redis, nothing mocked. The node holding a charge
point writes its live statistics to Redis (coalesced, with a TTL it extends); any other node's
REST API answers from there. A node that crashes (a real ``chargegrid serve`` process, SIGKILLed)
stops extending its keys, and its figures lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as redis
import websockets
from clustersupport import Cluster, PrivateRedis, new_prefix
from ocpp.v16 import call

from chargegrid.bus.memory import MemoryBus
from chargegrid.clock import SystemClock, isoformat_z
from chargegrid.cluster.link import RedisLink
from chargegrid.cluster.live_stats import LiveStatsMirror
from chargegrid.config import Settings
from chargegrid.metering.live_stats import LiveStats
from chargegrid.store import users as user_store
from support import (
    RecordingChargePoint,
    RunningServer,
    charge_point,
    running_server,
)

pytestmark = [pytest.mark.postgres]

TTL = 3.0  # cluster_live_stats_ttl: short, so that lapsing is quick to see, yet a node extends
# its keys every second (TTL / 3): a stall of 2 s, not of 0.7, would let one lapse early
READING_FIELDS = ("node", "updated_at")


def node_settings(database_url: str, redis_url: str, prefix: str, name: str) -> Settings:
    return Settings(
        database_url=database_url,
        bus_url=redis_url,
        bus_prefix=prefix,
        node_id=name,
        call_timeout=2.0,
        liveness_flush_seconds=0.1,
        cluster_ownership_ttl=1.0,
        cluster_live_stats_ttl=TTL,
        live_stats_publish_interval=0.1,
        migrate_on_start=False,  # the database is a copy of a migrated template
    )


async def get(server: RunningServer, token: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=server.http_url + "/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ) as http:
        return await http.get(path)


async def until(
    probe: Callable[[], Any], accept: Callable[[Any], bool], within: float = 10.0
) -> Any:
    """Poll ``probe`` until ``accept`` holds; fail with the last value otherwise."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"not accepted in time: {value}"
        await asyncio.sleep(0.05)


def figures(body: dict[str, Any]) -> dict[str, Any]:
    """The statistics without what depends on the moment or the node that answered."""
    body = {k: copy.deepcopy(v) for k, v in body.items() if k not in READING_FIELDS}
    sessions = [body] if "session_id" in body else [c["session"] for c in body["connectors"]]
    for session in sessions:
        if session is not None:
            session.pop("duration_seconds")
    return body


def latest(body: dict[str, Any], measurand: str, phase: str | None = None) -> dict[str, Any]:
    [series] = [
        m
        for m in body["connectors"][0]["measurands"]
        if m["measurand"] == measurand and m["phase"] == phase
    ]
    return series


def at(seconds_ago: float) -> str:
    return isoformat_z(datetime.now(UTC) - timedelta(seconds=seconds_ago))


# -- a real charge point's traffic, and a viewer's token ------------------------------------


async def send(cp: Any, payload: Any) -> Any:
    return await cp.call(payload, suppress=False)  # a CALLERROR raises


async def boot(cp: Any) -> None:
    result = await send(cp, call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
    assert result.status == "Accepted"


async def status(cp: Any, connector: int, state: str) -> None:
    await send(
        cp, call.StatusNotification(connector_id=connector, error_code="NoError", status=state)
    )


async def start(cp: Any, connector: int, id_tag: str, meter_start: int, timestamp: str) -> int:
    result = await send(
        cp,
        call.StartTransaction(
            connector_id=connector, id_tag=id_tag, meter_start=meter_start, timestamp=timestamp
        ),
    )
    return int(result.transaction_id)


async def meter(
    cp: Any, connector: int, tx: int | None, timestamp: str, samples: list[dict[str, Any]]
) -> None:
    await send(
        cp,
        call.MeterValues(
            connector_id=connector,
            transaction_id=tx,
            meter_value=[{"timestamp": timestamp, "sampled_value": samples}],
        ),
    )


async def stop(cp: Any, tx: int, meter_stop: int, timestamp: str) -> None:
    await send(
        cp, call.StopTransaction(transaction_id=tx, meter_stop=meter_stop, timestamp=timestamp)
    )


def energy_sample(value: str) -> dict[str, Any]:
    return {"value": value, "measurand": "Energy.Active.Import.Register", "unit": "Wh"}


def power(value: str) -> dict[str, Any]:
    return {"value": value, "measurand": "Power.Active.Import", "unit": "W"}


def voltage(value: str, phase: str) -> dict[str, Any]:
    return {"value": value, "measurand": "Voltage", "unit": "V", "phase": phase}


async def token_for(server: RunningServer, username: str) -> str:
    """A viewer's bearer token (every node accepts it: users live in the shared database)."""
    now = datetime.now(UTC)

    async def unit(connection: Any) -> str:
        user_id = await user_store.add_user(
            connection, username, role=user_store.Role.VIEWER, now=now, all_charge_points=True
        )
        return await user_store.issue_token(connection, user_id, name="test", now=now)

    token: str = await server.node.writer.run(unit)
    return token


async def add_tag(server: RunningServer, tag: str) -> None:
    await server.add_id_tag(tag)


async def test_node_b_answers_node_a_live_stats_and_fleet_counts(
    shared_database: str, shared_redis: str
) -> None:
    prefix = new_prefix()
    async with (
        running_server(node_settings(shared_database, shared_redis, prefix, "a")) as a,
        running_server(node_settings(shared_database, shared_redis, prefix, "b")) as b,
    ):
        await a.add_charge_point("CPA")
        await a.add_charge_point("CPB")
        await add_tag(a, "TAG1")
        token = await token_for(b, "viewer")
        async with charge_point(a, "CPA") as cpa, charge_point(b, "CPB") as cpb:
            await boot(cpa)
            await boot(cpb)
            await status(cpa, 0, "Available")
            await status(cpa, 1, "Charging")
            await status(cpb, 0, "Available")
            tx = await start(cpa, 1, "TAG1", 1000, at(300))
            await meter(
                cpa,
                1,
                tx,
                at(120),
                [energy_sample("1500"), power("7000"), voltage("230", "L1"), voltage("231", "L2")],
            )
            await meter(cpa, 1, tx, at(60), [energy_sample("1800"), power("6000")])

            # B holds nothing of CPA in memory: it answers what A wrote to Redis.
            from_b = await until(
                lambda: get(b, token, "/charge-points/CPA/live-stats"),
                lambda r: (
                    r.status_code == 200
                    and r.json()["connectors"]
                    and latest(r.json(), "Power.Active.Import")["count"] == 2
                ),
            )
            from_a = await get(a, token, "/charge-points/CPA/live-stats")
            assert from_a.status_code == 200
            body_b, body_a = from_b.json(), from_a.json()
            assert body_b["node"] == "a" and body_a["node"] == "a"
            assert figures(body_b) == figures(body_a)
            assert b.node.live_stats.for_charge_point(await _id(b, "CPA")) == {"connectors": []}
            assert latest(body_b, "Power.Active.Import")["value"] == 6000
            assert latest(body_b, "Voltage", "L2")["value"] == 231
            session_b = body_b["connectors"][0]["session"]
            assert session_b["session_id"] == tx and session_b["energy_wh"] == 800
            # An active session's duration runs on, whoever answers.
            assert session_b["duration_seconds"] >= 300

            session_from_b = (await get(b, token, f"/sessions/{tx}/live-stats")).json()
            session_from_a = (await get(a, token, f"/sessions/{tx}/live-stats")).json()
            assert figures(session_from_b) == figures(session_from_a)
            assert session_from_b["active"] and session_from_b["energy_wh"] == 800

            # A newer value reaches B within a publish interval or so, not at the TTL.
            await meter(cpa, 1, tx, at(1), [energy_sample("2100"), power("5000")])
            await until(
                lambda: get(b, token, "/charge-points/CPA/live-stats"),
                lambda r: latest(r.json(), "Power.Active.Import")["value"] == 5000,
                within=2.0,
            )

            # Fleet counts are the fleet's on either node: CPA (charging) on A, CPB on B.
            for node in (a, b):
                counts = await until(
                    lambda node=node: get(node, token, "/stats"),
                    lambda r: r.json()["connected"] == 2,
                )
                assert counts.json() | {"energy_today_kwh": 0} == {
                    "total": 2,
                    "connected": 2,
                    "available": 2,
                    "charging": 1,
                    "active_sessions": 1,
                    "energy_today_kwh": 0,
                }

            # The finished session's final figures stay readable on B.
            await stop(cpa, tx, 2400, at(0))
            final = await until(
                lambda: get(b, token, f"/sessions/{tx}/live-stats"),
                lambda r: r.status_code == 200 and not r.json()["active"],
            )
            assert final.json()["energy_wh"] == 1400 and final.json()["node"] == "a"
            assert figures(final.json()) == figures(
                (await get(a, token, f"/sessions/{tx}/live-stats")).json()
            )


@contextlib.asynccontextmanager
async def charger(url: str, identity: str) -> AsyncIterator[RecordingChargePoint]:
    """The ``ocpp`` package's ChargePoint on a node that runs as a process of its own."""
    async with websockets.connect(
        url + identity, subprotocols=[websockets.Subprotocol("ocpp1.6")], compression=None
    ) as ws:
        cp = RecordingChargePoint(identity, ws)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _id(server: RunningServer, identity: str) -> int:
    return int(await server.scalar("SELECT id FROM charge_points WHERE identity = :i", i=identity))


async def test_a_crashed_nodes_live_stats_lapse_with_its_ttl(
    shared_database: str, shared_redis: str, tmp_path: Path
) -> None:
    cluster = Cluster(shared_database, new_prefix(), tmp_path)
    node_a = cluster.node(
        "a",
        cluster_live_stats_ttl=TTL,
        cluster_ownership_ttl=1.0,
        live_stats_publish_interval=0.1,
        migrate_on_start="false",
    )
    keys = redis.from_url(shared_redis)
    try:
        async with running_server(
            node_settings(shared_database, shared_redis, cluster.prefix, "b")
        ) as b:
            await b.add_charge_point("CP1")
            token = await token_for(b, "viewer")
            node_a.start()
            await node_a.ready()
            async with charger(f"{node_a.ws_base}/ocpp/", "CP1") as cp:
                await boot(cp)
                await meter(cp, 1, None, at(5), [power("3700")])

                async def live() -> httpx.Response:
                    return await get(b, token, "/charge-points/CP1/live-stats")

                seen = await until(live, lambda r: bool(r.json()["connectors"]))
                assert seen.json()["node"] == "a"
                assert latest(seen.json(), "Power.Active.Import")["value"] == 3700
                # Idle for well over the TTL: A keeps extending the key while it holds CP1.
                await asyncio.sleep(2 * TTL)
                assert latest((await live()).json(), "Power.Active.Import")["value"] == 3700

                node_a.kill()
                killed = time.monotonic()
                gone = await until(live, lambda r: r.json()["connectors"] == [], within=3 * TTL)
                # Lapsed by the TTL, not removed at once by anybody.
                assert time.monotonic() - killed > TTL / 3
                assert gone.json() == {
                    "charge_point": "CP1",
                    "connectors": [],
                    "node": None,
                    "updated_at": None,
                }
                assert await keys.exists(f"{cluster.prefix}live-stats:cp:CP1") == 0
    finally:
        cluster.stop()
        await keys.aclose()


async def test_redis_down_other_nodes_charge_points_are_503_own_are_served(
    shared_database: str, private_redis: PrivateRedis
) -> None:
    prefix = new_prefix()
    async with (
        running_server(node_settings(shared_database, private_redis.url, prefix, "a")) as a,
        running_server(node_settings(shared_database, private_redis.url, prefix, "b")) as b,
    ):
        await a.add_charge_point("CP1")
        token = await token_for(b, "viewer")
        async with charge_point(a, "CP1") as cp:
            await boot(cp)
            await meter(cp, 1, None, at(5), [power("11000")])
            path = "/charge-points/CP1/live-stats"
            await until(lambda: get(b, token, path), lambda r: bool(r.json()["connectors"]))

            private_redis.stop()
            refused = await get(b, token, path)
            assert refused.status_code == 503
            assert "unreachable" in refused.json()["detail"]
            own = await get(a, token, path)
            assert own.status_code == 200
            assert latest(own.json(), "Power.Active.Import")["value"] == 11000

            # Redis returns empty; A writes CP1 again without waiting for a new value.
            await private_redis.start()
            back = await until(
                lambda: get(b, token, path),
                lambda r: r.status_code == 200 and bool(r.json()["connectors"]),
            )
            assert figures(back.json()) == figures((await get(a, token, path)).json())


async def test_a_busy_node_writes_within_its_cpu_budget_and_catches_up(shared_redis: str) -> None:
    """Snapshots of charge points with big rolling windows are costly: a pass stops building
    them at its share of the publish interval, and later passes write the rest."""
    live_stats = LiveStats(MemoryBus(), SystemClock())
    identities = {cp_id: f"BUSY{cp_id}" for cp_id in range(1, 21)}
    first = datetime.now(UTC) - timedelta(minutes=10)
    rows = [
        (cp_id, 1, None, first + timedelta(seconds=i / 10), measurand, None, "Outlet", unit, i)
        for cp_id in identities
        for i in range(5000)  # 10 values a second for ~8 minutes, all inside the window
        for measurand, unit in (("Power.Active.Import", "W"), ("Current.Import", "A"))
    ]
    live_stats.observe(rows)
    link = RedisLink(shared_redis, node_id="busy", timeout=1.0)
    prefix = new_prefix()
    mirror = LiveStatsMirror(
        link,
        live_stats,
        SystemClock(),
        node_id="busy",
        prefix=prefix,
        ttl=60.0,
        finished_ttl=60.0,
        interval=0.1,  # a budget of 5 ms a pass; one snapshot here takes about 1 ms or more
        held=lambda identity: True,
        held_identities=lambda: list(identities.values()),
    )
    keys = [mirror.cp_key(identity) for identity in identities.values()]
    try:
        await mirror.flush(set(identities), identities, {})
        written_first = await link.client.exists(*keys)
        assert 0 < written_first < len(identities)
        assert mirror.deferred > 0
        for _ in range(40):
            if await link.client.exists(*keys) == len(keys):
                break
            await mirror.flush(set(), identities, {})
        assert await link.client.exists(*keys) == len(keys)
        stored = orjson.loads(await link.client.get(mirror.cp_key("BUSY7")))
        assert stored["connectors"] == live_stats.for_charge_point(7)["connectors"]
        assert stored["node"] == "busy"
    finally:
        await link.client.delete(*keys)
        await link.close()
