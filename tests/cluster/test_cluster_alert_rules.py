"""Alert rule changes reach every node: two in-process nodes on one PostgreSQL database and one
Redis. A rule created, changed or deleted through node A's API takes effect on node B, which holds
the charge point, within seconds (far inside B's 60 s periodic reload, so only the notice can make
these tests pass); and a notice B missed while its Redis connection was down is made up for when
it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from clustersupport import new_prefix
from ocpp.v16 import call
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.config import Settings
from chargegrid.store import users as user_store
from outage_proxy import Proxy
from support import RunningServer, charge_point, now_iso
from support import running_server as serve

pytestmark = [pytest.mark.postgres]

RULE = {
    "name": "soc-low",
    "measurand": "SoC",
    "comparison": "below",
    "threshold": 10,
    "severity": "info",
}


def node_settings(database_url: str, redis_url: str, prefix: str, name: str) -> Settings:
    return Settings(
        database_url=database_url,
        bus_url=redis_url,
        bus_prefix=prefix,
        node_id=name,
        call_timeout=2.0,
        liveness_flush_seconds=0.1,
        migrate_on_start=name == "a",
    )


@contextlib.asynccontextmanager
async def two_nodes(
    database_url: str, redis_url: str, *, b_redis_url: str | None = None
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    prefix = new_prefix()
    async with (
        serve(node_settings(database_url, redis_url, prefix, "a")) as a,
        serve(node_settings(database_url, b_redis_url or redis_url, prefix, "b")) as b,
    ):
        # Each node's subscription to the notices is announced across Redis.
        await asyncio.sleep(0.5)
        yield a, b


async def admin_api(server: RunningServer) -> httpx.AsyncClient:
    now = datetime.now(UTC)

    async def unit(connection: AsyncConnection) -> str:
        user_id = await user_store.add_user(
            connection, "admin", role=user_store.Role.ADMIN, now=now, all_charge_points=True
        )
        return await user_store.issue_token(connection, user_id, name="test", now=now)

    token = await server.node.writer.run(unit)
    return httpx.AsyncClient(
        base_url=server.http_url + "/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def soc(cp: Any, percent: int) -> None:
    await cp.call(
        call.MeterValues(
            connector_id=1,
            meter_value=[
                {
                    "timestamp": now_iso(),
                    "sampled_value": [{"value": str(percent), "measurand": "SoC"}],
                }
            ],
        ),
        suppress=False,
    )


def rule_names(server: RunningServer) -> set[str]:
    return {rule.name for rule in server.node.alerts.rules}


async def alerts_of(api: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    response = await api.get("/alerts", params={"charge_point": "CPB", **params})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_rule_changed_through_node_a_takes_effect_on_node_b(
    shared_database: str, shared_redis: str
) -> None:
    async with two_nodes(shared_database, shared_redis) as (a, b):
        await a.add_charge_point("CPB")
        api = await admin_api(a)
        async with api, charge_point(b, "CPB") as cp:
            await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            assert "soc-low" not in rule_names(b)

            created = await api.post("/alert-rules", json=RULE)
            assert created.status_code == 201, created.text
            rule_id = created.json()["id"]

            async def b_has_it() -> bool:
                return "soc-low" in rule_names(b)

            await eventually(b_has_it)
            # The charge point on B crosses the rule: B raises the alert.
            await soc(cp, 5)

            async def raised() -> bool:
                return [x["state"] for x in await alerts_of(api)] == ["raised"]

            await eventually(raised)
            [alert] = await alerts_of(api)
            assert alert["rule"]["name"] == "soc-low" and alert["value"] == 5

            # Changed through A (5 % is no longer low): the next value resolves it on B.
            changed = await api.put(f"/alert-rules/{rule_id}", json={**RULE, "threshold": 3})
            assert changed.status_code == 200, changed.text

            async def b_has_the_change() -> bool:
                return any(r.name == "soc-low" and r.threshold == 3 for r in b.node.alerts.rules)

            await eventually(b_has_the_change)
            await soc(cp, 5)

            async def resolved() -> bool:
                return [x["state"] for x in await alerts_of(api)] == ["resolved"]

            await eventually(resolved)

            # Deleted through A: B stops checking it.
            assert (await api.delete(f"/alert-rules/{rule_id}")).status_code == 204

            async def b_dropped_it() -> bool:
                return "soc-low" not in rule_names(b)

            await eventually(b_dropped_it)
            await soc(cp, 1)
            await asyncio.sleep(0.5)
            assert len(await alerts_of(api)) == 1


async def test_a_notice_missed_while_redis_was_away_is_made_up_for_on_reconnect(
    shared_database: str, shared_redis: str
) -> None:
    proxy = Proxy(shared_redis)
    await proxy.start()
    try:
        async with two_nodes(shared_database, shared_redis, b_redis_url=proxy.url) as (a, b):
            await a.add_charge_point("CPB")
            api = await admin_api(a)
            async with api:
                await proxy.stop()

                async def b_is_cut_off() -> bool:
                    return not getattr(b.node.bus, "connected", True)

                await eventually(b_is_cut_off)
                created = await api.post("/alert-rules", json=RULE)
                assert created.status_code == 201, created.text
                await asyncio.sleep(1.5)  # the notice is long gone
                assert "soc-low" not in rule_names(b)

                await proxy.start()

                async def b_has_it() -> bool:
                    return "soc-low" in rule_names(b)

                # Reconnect backoff (at most a few seconds here) plus a watch interval or two.
                await eventually(b_has_it, within=15)
                async with charge_point(b, "CPB") as cp:
                    await cp.call(
                        call.BootNotification(charge_point_vendor="V", charge_point_model="M")
                    )
                    await soc(cp, 5)

                    async def raised() -> bool:
                        return [x["state"] for x in await alerts_of(api)] == ["raised"]

                    await eventually(raised)
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.stop()
