"""The per-charge-point OCPP message trace, through the real server, API and raw sockets.

Frames are compared as the exact texts that crossed the socket: what the raw client sent, and
what it received.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from obssupport import eventually, scrape, token_for, value
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, ConfigurationStatus
from sqlalchemy import insert

from chargegrid.config import Settings, TraceLevel
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.store.database import writing
from chargegrid.store.tables import message_trace
from support import RecordingChargePoint, RunningServer, charge_point, raw_socket, running_server

BOOT = '[2,"boot","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]'


async def operator(server: RunningServer) -> httpx.AsyncClient:
    token = await token_for(server, f"op-{uuid.uuid4().hex[:8]}", "operator")
    return httpx.AsyncClient(
        base_url=server.http_url + "/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    )


async def set_level(http: httpx.AsyncClient, identity: str, level: str | None) -> dict[str, Any]:
    response = await http.put(f"/charge-points/{identity}/trace-level", json={"level": level})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def frames(http: httpx.AsyncClient, identity: str, **params: Any) -> list[tuple[str, str]]:
    response = await http.get(f"/charge-points/{identity}/trace", params=params)
    assert response.status_code == 200, response.text
    return [(f["direction"], f["frame"]) for f in response.json()["frames"]]


async def exchange(ws: Any, text: str) -> str:
    await ws.send(text)
    reply: str = await asyncio.wait_for(ws.recv(), 5)
    return reply


async def rows(server: RunningServer) -> int:
    await server.node.trace.flush()
    return int(await server.scalar("SELECT count(*) FROM message_trace"))


async def test_all_records_every_frame_both_ways_and_applies_to_the_live_connection(
    server: RunningServer,
) -> None:
    await server.add_charge_point("CP1")
    async with await operator(server) as http, raw_socket(server, "CP1") as ws:
        await exchange(ws, BOOT)  # before the level is set: not traced
        state = await set_level(http, "CP1", "all")
        assert state == {
            "charge_point": "CP1",
            "level": "all",
            "effective": "all",
            "applied_live": True,
        }
        assert await server.scalar("SELECT trace_level FROM charge_points") == "all"
        heartbeat = '[2,"h1","Heartbeat",{}]'
        heartbeat_result = await exchange(ws, heartbeat)
        assert await frames(http, "CP1") == [("in", heartbeat), ("out", heartbeat_result)]

        # a CSMS-initiated call: our CALL out, its CALLRESULT in
        operation = await server.node.commands.perform_later("CP1", "Reset", {"type": "Hard"})
        reset = await asyncio.wait_for(ws.recv(), 5)
        reset_result = f'[3,"{orjson.loads(reset)[1]}",{{"status":"Accepted"}}]'
        await ws.send(reset_result)

        async def done() -> bool:
            got = await server.node.commands.get(operation.id)
            return bool(got.final)

        await eventually(done)
        assert (await frames(http, "CP1"))[2:] == [("out", reset), ("in", reset_result)]

    # stored: a new connection is traced from its first frame
    async with await operator(server) as http, raw_socket(server, "CP1") as ws:
        boot_result = await exchange(ws, BOOT)
        assert (await frames(http, "CP1"))[-2:] == [("in", BOOT), ("out", boot_result)]
        assert len(await frames(http, "CP1")) == 6


async def test_errors_records_callerrors_both_ways_with_the_call_they_answer(
    server: RunningServer,
) -> None:
    async def refuse(context: Any, payload: dict[str, Any]) -> dict[str, Any]:
        raise OcppError(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, "refused by the test")

    server.node.dispatcher.routes["DataTransfer"] = refuse
    await server.add_charge_point("CP1")
    async with await operator(server) as http, raw_socket(server, "CP1") as ws:
        await exchange(ws, BOOT)
        assert (await set_level(http, "CP1", "errors"))["effective"] == "errors"
        await exchange(ws, '[2,"h1","Heartbeat",{}]')  # fine: not recorded

        unknown = '[2,"u1","NoSuchAction",{}]'
        unknown_error = await exchange(ws, unknown)  # the engine's CALLERROR
        data_transfer = '[2,"d1","DataTransfer",{"vendorId":"V"}]'
        handler_error = await exchange(ws, data_transfer)  # a handler's CALLERROR
        assert orjson.loads(handler_error)[2] == "PropertyConstraintViolation"
        await exchange(ws, '[2,"h2","Heartbeat",{}]')
        await ws.send("[9]")  # not an OCPP-J message type: ignored, but telling

        # our CALL answered with a CALLERROR, then one answered fine (not recorded)
        commands = server.node.commands
        failed = await commands.perform_later("CP1", "Reset", {"type": "Soft"})
        reset = await asyncio.wait_for(ws.recv(), 5)
        reset_error = f'[4,"{orjson.loads(reset)[1]}","NotSupported","no reset here",{{}}]'
        await ws.send(reset_error)
        fine = await commands.perform_later("CP1", "ClearCache", {})
        clear = await asyncio.wait_for(ws.recv(), 5)
        await ws.send(f'[3,"{orjson.loads(clear)[1]}",{{"status":"Accepted"}}]')

        async def settled() -> bool:
            operations = [await commands.get(operation.id) for operation in (failed, fine)]
            return all(operation.final for operation in operations)

        await eventually(settled)
        assert await frames(http, "CP1") == [
            ("in", unknown),
            ("out", unknown_error),
            ("in", data_transfer),
            ("out", handler_error),
            ("in", "[9]"),
            ("out", reset),
            ("in", reset_error),
        ]


async def test_off_records_nothing(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    async with await operator(server) as http, raw_socket(server, "CP1") as ws:
        await exchange(ws, BOOT)
        await exchange(ws, '[2,"u1","NoSuchAction",{}]')
        assert await rows(server) == 0  # the node default is off

        await set_level(http, "CP1", "all")
        await exchange(ws, '[2,"h1","Heartbeat",{}]')
        assert await rows(server) == 2
        assert await set_level(http, "CP1", "off") == {
            "charge_point": "CP1",
            "level": "off",
            "effective": "off",
            "applied_live": True,
        }
        await exchange(ws, '[2,"h2","Heartbeat",{}]')
        await exchange(ws, '[2,"u2","NoSuchAction",{}]')
        assert await rows(server) == 2
        # null: back to the node default (off)
        assert (await set_level(http, "CP1", None))["effective"] == "off"
        assert await server.scalar("SELECT trace_level FROM charge_points") is None
        await exchange(ws, '[2,"u3","NoSuchAction",{}]')
        assert await rows(server) == 2


async def test_node_default_applies_where_no_level_is_stored(settings: Settings) -> None:
    tracing = Settings.model_validate({**settings.model_dump(), "trace_default": "all"})
    async with running_server(tracing) as server:
        assert server.node.trace.default is TraceLevel.ALL
        await server.add_charge_point("CP1")
        await server.add_charge_point("CP2")
        async with await operator(server) as http:
            await set_level(http, "CP2", "off")  # not connected: stored only
            async with raw_socket(server, "CP1") as one, raw_socket(server, "CP2") as two:
                boot_result = await exchange(one, BOOT)
                await exchange(two, BOOT)
            assert await frames(http, "CP1") == [("in", BOOT), ("out", boot_result)]
            assert await frames(http, "CP2") == []


async def test_since_and_limit(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    async with await operator(server) as http, raw_socket(server, "CP1") as ws:
        await set_level(http, "CP1", "all")
        texts = []
        for n in range(3):
            texts.append(f'[2,"h{n}","Heartbeat",{{}}]')
            await exchange(ws, texts[-1])
        await asyncio.sleep(0.01)
        cut = datetime.now(UTC)
        await asyncio.sleep(0.01)
        last = '[2,"h3","Heartbeat",{}]'
        last_result = await exchange(ws, last)
        everything = await frames(http, "CP1")
        assert [f for d, f in everything if d == "in"] == [*texts, last]
        assert await frames(http, "CP1", limit=2) == [("in", last), ("out", last_result)]
        since = cut.isoformat().replace("+00:00", "Z")
        assert await frames(http, "CP1", since=since) == [("in", last), ("out", last_result)]
        assert await frames(http, "CP1", since=since, limit=1) == [("in", last)]


async def test_retention_purge_removes_old_frames_in_batches(server: RunningServer) -> None:
    charge_point_id = await server.add_charge_point("CP1")
    now = datetime.now(UTC)
    retention = server.node.trace.retention
    assert retention == timedelta(hours=72)
    old = [now - retention - timedelta(minutes=m) for m in range(1, 6)]
    recent = [now - retention + timedelta(minutes=5), now]
    async with writing(server.node.engine).begin() as connection:
        await connection.execute(
            insert(message_trace),
            [
                {
                    "charge_point_id": charge_point_id,
                    "timestamp": t,
                    "direction": "in",
                    "frame": "[]",
                }
                for t in old + recent
            ],
        )
    assert await server.node.trace.purge(batch=2) == 5
    left = await server.rows("SELECT timestamp FROM message_trace")
    assert len(left) == 2
    assert await server.node.trace.purge() == 0
    # the background purge is running
    assert any(task.get_name() == "trace-purge" and not task.done() for task in asyncio.all_tasks())


class ConfigurableChargePoint(RecordingChargePoint):
    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str) -> call_result.ChangeConfiguration:
        return call_result.ChangeConfiguration(status=ConfigurationStatus.accepted)


async def test_secret_configuration_values_are_masked(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    secret = "0123456789abcdef0123"
    async with (
        await operator(server) as http,
        charge_point(server, "CP1", cls=ConfigurableChargePoint) as cp,
    ):
        await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        await set_level(http, "CP1", "all")
        operation = await server.node.commands.perform_now(
            "CP1", "ChangeConfiguration", {"key": "AuthorizationKey", "value": secret}
        )
        assert operation.status == "accepted"
        traced = await frames(http, "CP1")
    assert len(traced) == 2
    direction, frame = traced[0]
    assert direction == "out"
    assert orjson.loads(frame)[3] == {"key": "AuthorizationKey", "value": "********"}
    assert all(secret not in f for _, f in traced)
    assert secret not in str(await server.rows("SELECT frame FROM message_trace"))


async def test_a_full_buffer_drops_and_counts(server: RunningServer) -> None:
    charge_point_id = await server.add_charge_point("CP1")
    trace = server.node.trace
    trace.buffer_limit = 2
    for n in range(5):  # no await in between: the flusher cannot run
        trace.record(charge_point_id, "in", f"[{n}]")
    assert trace.dropped == 3
    await trace.flush()
    assert await server.scalar("SELECT count(*) FROM message_trace") == 2
    assert value(await scrape(server), "chargegrid_trace_frames_dropped_total") == 3


async def test_trace_api_needs_an_operator_and_valid_input(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    viewer = await token_for(server, "viewer", "viewer")
    async with httpx.AsyncClient(base_url=server.http_url + "/api/v1") as anonymous:
        assert (await anonymous.get("/charge-points/CP1/trace")).status_code == 401
        response = await anonymous.put("/charge-points/CP1/trace-level", json={"level": "all"})
        assert response.status_code == 401
        headers = {"Authorization": f"Bearer {viewer}"}
        assert (await anonymous.get("/charge-points/CP1/trace", headers=headers)).status_code == 403
    async with await operator(server) as http:
        assert (await http.get("/charge-points/NOPE/trace")).status_code == 404
        response = await http.put("/charge-points/NOPE/trace-level", json={"level": "all"})
        assert response.status_code == 404
        response = await http.put("/charge-points/CP1/trace-level", json={"level": "verbose"})
        assert response.status_code == 422
        assert "off" in response.text  # says which levels exist
        assert (await http.get("/charge-points/CP1/trace?limit=0")).status_code == 422
        assert (await http.get("/charge-points/CP1/trace?since=yesterday")).status_code == 422
    assert await server.scalar("SELECT trace_level FROM charge_points") is None
