"""chargegrid as a library (issue 9): mounted in an application, hooks, decisions, events.

The embedding application is the one in examples/connector_sync, served by uvicorn on 127.0.0.1;
charge points are the ``ocpp`` package's ChargePoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from ocpp.exceptions import InternalError, SecurityError
from ocpp.v16 import ChargePoint as OcppChargePoint
from ocpp.v16 import call

from chargegrid import ErrorCode, HookContext, OcppError, Settings, build_app
from chargegrid.store.database import writing
from support import now_iso

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.connector_sync.app import create_app


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve any ASGI app with uvicorn on a free port; yields host:port."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, ws="websockets-sansio", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def ocpp_client(url: str, identity: str) -> AsyncIterator[OcppChargePoint]:
    async with websockets.connect(
        url + identity, subprotocols=[websockets.Subprotocol("ocpp1.6")]
    ) as ws:
        cp = OcppChargePoint(identity, ws)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _provision(node: Any, *identities: str, tags: tuple[str, ...] = ()) -> None:
    from datetime import UTC, datetime

    from chargegrid import admin

    async with writing(node.engine).begin() as connection:
        for identity in identities:
            await admin.add_charge_point(connection, identity, now=datetime.now(UTC))
        for tag in tags:
            await admin.add_id_tag(connection, tag, now=datetime.now(UTC))


async def _eventually(check: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_example_app_serves_its_routes_and_ocpp_and_syncs_its_table(
    settings: Settings, tmp_path: Path
) -> None:
    app = create_app(settings, f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    async with serve(app) as host:
        grid = app.state.grid
        await _provision(grid, "CP1")
        async with httpx.AsyncClient(base_url=f"http://{host}") as http:
            assert (await http.get("/my/connectors")).json() == []
            assert (await http.get("/healthz")).json()["status"] == "ok"  # chargegrid's own
            async with ocpp_client(f"ws://{host}/ocpp/", "CP1") as cp:
                await cp.call(
                    call.BootNotification(charge_point_vendor="V", charge_point_model="M")
                )
                for connector, status in ((1, "Available"), (2, "Faulted"), (1, "Charging")):
                    await cp.call(
                        call.StatusNotification(
                            connector_id=connector, error_code="NoError", status=status
                        )
                    )

            async def synced() -> bool:
                rows = (await http.get("/my/connectors")).json()
                return [(r["charge_point"], r["connector_id"], r["status"]) for r in rows] == [
                    ("CP1", 1, "Charging"),
                    ("CP1", 2, "Faulted"),
                ]

            await _eventually(synced)


async def test_mounted_under_a_prefix(settings: Settings) -> None:
    from fastapi import FastAPI

    grid_app = build_app(settings, dashboard=False)
    parent = FastAPI(lifespan=grid_app.lifespan)

    @parent.get("/mine")
    async def mine() -> dict[str, str]:
        return {"owner": "parent"}

    parent.mount("/cg", grid_app)
    async with serve(parent) as host:
        await _provision(grid_app.node, "CP 9")
        async with httpx.AsyncClient(base_url=f"http://{host}") as http:
            assert (await http.get("/mine")).json() == {"owner": "parent"}
            assert (await http.get("/cg/healthz")).status_code == 200
        async with ocpp_client(f"ws://{host}/cg/ocpp/", "CP%209") as cp:
            boot = await cp.call(
                call.BootNotification(charge_point_vendor="V", charge_point_model="M")
            )
            assert boot.status == "Accepted"


async def test_ocpp_only_has_no_api(settings: Settings) -> None:
    grid_app = build_app(settings, api=False, live=False, dashboard=False)
    async with serve(grid_app) as host:
        await _provision(grid_app.node, "CP1")
        async with httpx.AsyncClient(base_url=f"http://{host}") as http:
            assert (await http.get("/api/v1/stats")).status_code == 404
            assert (await http.get("/healthz")).status_code == 200
        async with ocpp_client(f"ws://{host}/ocpp/", "CP1") as cp:
            await cp.call(call.Heartbeat())


async def test_before_hook_rejects_a_boot_and_after_hook_sees_every_meter_value(
    settings: Settings,
) -> None:
    grid_app = build_app(settings)
    grid = grid_app.node
    seen: list[dict[str, Any]] = []

    @grid.hooks.before("BootNotification")
    async def only_acme(ctx: HookContext, request: dict[str, Any]) -> dict[str, Any] | None:
        if request["chargePointVendor"] != "ACME":
            raise OcppError(ErrorCode.SECURITY_ERROR, "vendor not allowed here")
        return None

    @grid.hooks.after("MeterValues")
    async def watch(ctx: HookContext, request: dict[str, Any], response: dict[str, Any]) -> None:
        seen.append({"cp": ctx.charge_point, **request})

    async with serve(grid_app) as host:
        await _provision(grid, "CP1", tags=("TAG1",))
        async with ocpp_client(f"ws://{host}/ocpp/", "CP1") as cp:
            with pytest.raises(SecurityError):
                await cp.call(
                    call.BootNotification(charge_point_vendor="Other", charge_point_model="M"),
                    suppress=False,
                )
            assert await grid_app.node.queries.charge_point("CP1") is not None
            boot = await cp.call(
                call.BootNotification(charge_point_vendor="ACME", charge_point_model="M")
            )
            assert boot.status == "Accepted"
            for n in range(5):
                await cp.call(
                    call.MeterValues(
                        connector_id=1,
                        meter_value=[{"timestamp": now_iso(), "sampledValue": [{"value": str(n)}]}],
                    )
                )

        async def all_seen() -> bool:
            return len(seen) == 5

        await _eventually(all_seen)
    assert [s["meterValue"][0]["sampledValue"][0]["value"] for s in seen] == [
        "0",
        "1",
        "2",
        "3",
        "4",
    ]
    assert {s["cp"] for s in seen} == {"CP1"}


async def test_a_before_hook_may_answer_instead(settings: Settings) -> None:
    grid_app = build_app(settings)
    grid = grid_app.node

    @grid.hooks.before("DataTransfer")
    async def answer(ctx: HookContext, request: dict[str, Any]) -> dict[str, Any] | None:
        return {"status": "Accepted", "data": "pong"} if request.get("data") == "ping" else None

    async with serve(grid_app) as host:
        await _provision(grid, "CP1")
        async with ocpp_client(f"ws://{host}/ocpp/", "CP1") as cp:
            answered = await cp.call(call.DataTransfer(vendor_id="X", data="ping"))
            assert (answered.status, answered.data) == ("Accepted", "pong")
            default = await cp.call(call.DataTransfer(vendor_id="X", data="other"))
            assert default.status == "UnknownVendorId"


async def test_hooks_that_raise_never_break_the_connection(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    grid_app = build_app(settings)
    grid = grid_app.node

    @grid.hooks.before("Heartbeat")
    async def broken_before(ctx: HookContext, request: dict[str, Any]) -> dict[str, Any] | None:
        raise KeyError("oops")

    @grid.hooks.after("StatusNotification")
    async def broken_after(
        ctx: HookContext, request: dict[str, Any], response: dict[str, Any]
    ) -> None:
        raise ValueError("also oops")

    caplog.set_level(logging.ERROR)
    async with serve(grid_app) as host:
        await _provision(grid, "CP1")
        async with (
            ocpp_client(f"ws://{host}/ocpp/", "CP1") as cp,
            httpx.AsyncClient(base_url=f"http://{host}") as http,
        ):
            with pytest.raises(InternalError):
                await cp.call(call.Heartbeat(), suppress=False)
            response = await cp.call(
                call.StatusNotification(connector_id=1, error_code="NoError", status="Available")
            )
            assert response is not None  # answered normally despite the after hook failing
            boot = await cp.call(
                call.BootNotification(charge_point_vendor="V", charge_point_model="M")
            )
            assert boot.status == "Accepted"  # the connection is still up

            async def counted() -> bool:
                return grid.hooks.failures == 2

            await _eventually(counted)
            metrics = (await http.get("/metrics")).text
            assert "chargegrid_hook_failures_total 2.0" in metrics
    assert "broken_before" in caplog.text and "broken_after" in caplog.text


async def test_external_authorizer_decides_and_times_out_to_the_local_list(
    settings: Settings,
) -> None:
    grid_app = build_app(settings)
    grid = grid_app.node
    asked: list[str] = []

    async def service(charge_point: str, id_tag: str) -> dict[str, Any] | None:
        asked.append(id_tag)
        if id_tag == "SLOW":
            await asyncio.sleep(5)
        if id_tag == "VIP":
            return {"status": "Accepted", "parentIdTag": "FLEET"}
        if id_tag == "LOCAL":
            return None  # the service leaves this one to the local list
        return {"status": "Blocked"}

    authorizer = grid.set_authorizer(service, timeout=0.3, ttl=60)
    async with serve(grid_app) as host:
        await _provision(grid, "CP1", tags=("SLOW", "LOCAL"))
        async with ocpp_client(f"ws://{host}/ocpp/", "CP1") as cp:
            await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            vip = await cp.call(call.Authorize(id_tag="VIP"))
            assert vip.id_tag_info == {"status": "Accepted", "parent_id_tag": "FLEET"}
            other = await cp.call(call.Authorize(id_tag="NOBODY"))
            assert other.id_tag_info == {"status": "Blocked"}
            local = await cp.call(call.Authorize(id_tag="LOCAL"))
            assert local.id_tag_info == {"status": "Accepted"}  # from the local list
            slow = await cp.call(call.Authorize(id_tag="SLOW"))
            assert slow.id_tag_info == {"status": "Accepted"}  # timed out: the local list
            assert authorizer.fallbacks == 1
            await cp.call(call.Authorize(id_tag="VIP"))  # cached
            start = await cp.call(
                call.StartTransaction(
                    connector_id=1, id_tag="NOBODY", meter_start=0, timestamp=now_iso()
                )
            )
            assert start.id_tag_info == {"status": "Blocked"}  # the service decided the start too
    assert asked.count("VIP") == 1


async def test_boot_policy_decides_acceptance(settings: Settings) -> None:
    grid_app = build_app(settings)
    grid = grid_app.node

    async def policy(charge_point: str, request: dict[str, Any]) -> str | None:
        return "Pending" if request["chargePointModel"] == "Beta" else None

    grid.set_boot_policy(policy)
    async with serve(grid_app) as host:
        await _provision(grid, "CP1", "CP2")
        async with ocpp_client(f"ws://{host}/ocpp/", "CP1") as cp:
            boot = await cp.call(
                call.BootNotification(charge_point_vendor="V", charge_point_model="Beta")
            )
            assert boot.status == "Pending"
        async with ocpp_client(f"ws://{host}/ocpp/", "CP2") as cp:
            boot = await cp.call(
                call.BootNotification(charge_point_vendor="V", charge_point_model="GA")
            )
            assert boot.status == "Accepted"
    async with grid.engine.connect() as connection:
        from sqlalchemy import text

        stored = dict(
            (
                await connection.execute(
                    text("SELECT identity, registration_status FROM charge_points")
                )
            ).all()
        )
    assert stored == {"CP1": "Pending", "CP2": "Accepted"}


async def test_events_from_python_and_data_transfer_handlers(settings: Settings) -> None:
    grid_app = build_app(settings)
    grid = grid_app.node
    called: list[Any] = []

    @grid.data_transfer("ACME")
    async def acme(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted", "data": request.get("data", "").upper()}

    async with serve(grid_app) as host:
        await _provision(grid, "CP1")
        stream = await grid.subscribe(charge_point="CP1", topics=["status"])
        listener = await grid.on("connection", called.append)
        async with ocpp_client(f"ws://{host}/ocpp/", "CP1") as cp:
            await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            await cp.call(
                call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing")
            )
            transfer = await cp.call(call.DataTransfer(vendor_id="ACME", data="hello"))
            assert (transfer.status, transfer.data) == ("Accepted", "HELLO")
        async with stream:
            event = await asyncio.wait_for(anext(aiter(stream)), 3)
        assert (event.topic, event.charge_point, event.data["status"]) == (
            "status",
            "CP1",
            "Preparing",
        )

        async def heard() -> bool:
            return any(e.data.get("event") == "connected" for e in called)

        await _eventually(heard)
        await listener.cancel()
        assert called[0].charge_point == "CP1"


def setup_plugin(node: Any) -> None:
    """A plugin named in settings (``plugins = ["test_embedding:setup_plugin"]``)."""

    @node.hooks.before("Heartbeat")
    async def fixed_time(ctx: HookContext, request: dict[str, Any]) -> dict[str, Any]:
        return {"currentTime": "2030-01-01T00:00:00.000Z"}


async def test_plugins_from_settings(settings: Settings) -> None:
    grid_app = build_app(settings.model_copy(update={"plugins": ["test_embedding:setup_plugin"]}))
    async with serve(grid_app) as host:
        await _provision(grid_app.node, "CP1")
        async with ocpp_client(f"ws://{host}/ocpp/", "CP1") as cp:
            beat = await cp.call(call.Heartbeat())
            assert beat.current_time == "2030-01-01T00:00:00.000Z"
    with pytest.raises(Exception, match="cannot import"):
        build_app(settings.model_copy(update={"plugins": ["no_such_module:setup"]}))


async def test_hooks_on_csms_initiated_actions(settings: Settings) -> None:
    """Before hooks may refuse an outgoing call (recorded as error, nothing sent) or answer in
    the charge point's place; after hooks see the charge point's answer."""
    from ocpp.routing import on
    from ocpp.v16 import call_result
    from ocpp.v16.enums import Action

    grid_app = build_app(settings)
    grid = grid_app.node
    received: list[str] = []
    answered: list[tuple[str, dict[str, Any]]] = []

    class Charger(OcppChargePoint):  # type: ignore[misc]
        @on(Action.reset)
        async def on_reset(self, type: str) -> call_result.Reset:
            received.append("Reset")
            return call_result.Reset(status="Accepted")

        @on(Action.clear_cache)
        async def on_clear_cache(self) -> call_result.ClearCache:
            received.append("ClearCache")
            return call_result.ClearCache(status="Accepted")

    @grid.hooks.before("Reset")
    async def no_hard_resets(ctx: HookContext, request: dict[str, Any]) -> dict[str, Any] | None:
        if request["type"] == "Hard":
            raise OcppError(ErrorCode.SECURITY_ERROR, "hard resets need a ticket")
        return None

    @grid.hooks.before("GetLocalListVersion")
    async def cached(ctx: HookContext, request: dict[str, Any]) -> dict[str, Any] | None:
        return {"listVersion": 7}

    @grid.hooks.after("*")
    async def audit(ctx: HookContext, request: dict[str, Any], response: dict[str, Any]) -> None:
        if ctx.action in ("Reset", "ClearCache", "GetLocalListVersion"):
            answered.append((ctx.action, response))

    async with serve(grid_app) as host:
        await _provision(grid, "CP1")
        async with websockets.connect(
            f"ws://{host}/ocpp/CP1", subprotocols=[websockets.Subprotocol("ocpp1.6")]
        ) as ws:
            charger = Charger("CP1", ws)
            task = asyncio.create_task(charger.start())
            await charger.call(
                call.BootNotification(charge_point_vendor="V", charge_point_model="M")
            )
            hard = await grid.commands.perform_now("CP1", "Reset", {"type": "Hard"})
            assert (hard.status, hard.error_code) == ("error", "SecurityError")
            soft = await grid.commands.perform_now("CP1", "Reset", {"type": "Soft"})
            assert soft.status == "accepted"
            version = await grid.commands.perform_now("CP1", "GetLocalListVersion", {})
            assert (version.status, version.response) == ("accepted", {"listVersion": 7})
            cleared = await grid.commands.perform_now("CP1", "ClearCache", {})
            assert cleared.status == "accepted"
            task.cancel()
        assert received == ["Reset", "ClearCache"]  # the refused and the answered never went out

        async def all_answered() -> bool:
            return len(answered) == 3

        await _eventually(all_answered)
    assert answered == [
        ("Reset", {"status": "Accepted"}),
        ("GetLocalListVersion", {"listVersion": 7}),
        ("ClearCache", {"status": "Accepted"}),
    ]
