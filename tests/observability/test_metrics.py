"""``GET /metrics`` through the real server: counters move by exactly what a charge point did.

Each test scrapes, makes a real client talk over 127.0.0.1, scrapes again and compares. Every
node has its own registry, so nothing leaks from test to test (or the deltas would be off).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import orjson
import pytest
import websockets
from obssupport import delta, eventually, moved, scrape, value
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, ResetStatus

from chargegrid.ocpp.errors import ErrorCode, OcppError
from support import RecordingChargePoint, RunningServer, charge_point, raw_socket

RECEIVED = "chargegrid_ocpp_messages_received_total"
ERRORS_SENT = "chargegrid_ocpp_callerrors_sent_total"
CONNECTIONS = "chargegrid_websocket_connections_total"
CONNECTED = "chargegrid_connected_charge_points"


async def boot(cp: Any) -> None:
    result = await cp.call(
        call.BootNotification(charge_point_vendor="V", charge_point_model="M"), suppress=False
    )
    assert result.status == "Accepted"


async def exchange(ws: Any, text: str) -> list[Any]:
    await ws.send(text)
    reply: list[Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    return reply


async def test_metrics_is_prometheus_text_without_authentication(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    for family in (
        "chargegrid_connected_charge_points",
        "chargegrid_ocpp_messages_received",
        "chargegrid_ocpp_callerrors_sent",
        "chargegrid_websocket_connections",
        "chargegrid_command_duration_seconds",
        "chargegrid_group_commit_batch_items",
        "chargegrid_group_commit_duration_seconds",
        "chargegrid_group_commit_queue_depth",
        "chargegrid_trace_frames_dropped",
    ):
        assert re.search(rf"^# TYPE {family}(_total)? ", response.text, re.MULTILINE), family


async def test_counters_move_as_a_charge_point_talks(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    before = await scrape(server)
    assert value(before, CONNECTED) == 0
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        for _ in range(3):
            await cp.call(call.Heartbeat(), suppress=False)
        await cp.call(
            call.StatusNotification(connector_id=1, error_code="NoError", status="Available"),
            suppress=False,
        )
        during = await scrape(server)
    assert value(during, CONNECTED) == 1
    assert moved(before, during) == {
        (RECEIVED, frozenset({("action", "BootNotification"), ("result", "ok")})): 1,
        (RECEIVED, frozenset({("action", "Heartbeat"), ("result", "ok")})): 3,
        (RECEIVED, frozenset({("action", "StatusNotification"), ("result", "ok")})): 1,
        (CONNECTIONS, frozenset({("outcome", "accepted"), ("status", "101")})): 1,
    }
    # the boot, the status and the connection state went through group commit
    batches = delta(before, during, "chargegrid_group_commit_batch_items_count")
    assert batches >= 1
    assert delta(before, during, "chargegrid_group_commit_duration_seconds_count") == batches
    assert delta(before, during, "chargegrid_group_commit_batch_items_sum") >= batches
    assert value(during, "chargegrid_group_commit_queue_depth") >= 0

    async def disconnected() -> bool:
        return value(await scrape(server), CONNECTED) == 0

    await eventually(disconnected)


async def test_callerrors_are_counted_by_code_and_action(server: RunningServer) -> None:
    await server.add_charge_point("CP1", registration_status="Pending")
    before = await scrape(server)
    async with raw_socket(server, "CP1") as ws:
        # not accepted yet: SecurityError (errata §3.8)
        assert (await exchange(ws, '[2,"s1","Heartbeat",{}]'))[2] == "SecurityError"
        reply = await exchange(ws, '[2,"b1","BootNotification",{"chargePointVendor":"V",')
        assert reply[:3] == [4, "b1", "FormationViolation"]
        reply = await exchange(ws, '[2,"b2","BootNotification",{"chargePointVendor":"V"}]')
        assert reply[:3] == [4, "b2", "OccurenceConstraintViolation"]
        reply = await exchange(ws, '[2,"x1","NoSuchAction",{}]')
        assert reply[:3] == [4, "x1", "NotImplemented"]
        reply = await exchange(
            ws, '[2,"b3","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]'
        )
        assert reply[0] == 3  # answered Pending: still a CALLRESULT
        after = await scrape(server)
    heartbeat = ("action", "Heartbeat")
    boot_action = ("action", "BootNotification")
    assert {
        key: change for key, change in moved(before, after).items() if key[0] != CONNECTIONS
    } == {
        (RECEIVED, frozenset({heartbeat, ("result", "SecurityError")})): 1,
        # the truncated frame's action cannot be read: it is "unknown", as is an unknown name
        (RECEIVED, frozenset({("action", "unknown"), ("result", "FormationViolation")})): 1,
        (RECEIVED, frozenset({boot_action, ("result", "OccurenceConstraintViolation")})): 1,
        (RECEIVED, frozenset({("action", "unknown"), ("result", "NotImplemented")})): 1,
        (RECEIVED, frozenset({boot_action, ("result", "ok")})): 1,
        (ERRORS_SENT, frozenset({("code", "SecurityError")})): 1,
        (ERRORS_SENT, frozenset({("code", "FormationViolation")})): 1,
        (ERRORS_SENT, frozenset({("code", "OccurenceConstraintViolation")})): 1,
        (ERRORS_SENT, frozenset({("code", "NotImplemented")})): 1,
    }


async def test_handler_callerrors_are_counted(server: RunningServer) -> None:
    """A CALLERROR from a handler (not the engine) counts too: OcppError and a crash."""

    async def refuse(context: Any, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("vendorId") == "crash":
            raise RuntimeError("handler bug")
        raise OcppError(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, "no")

    server.node.dispatcher.routes["DataTransfer"] = refuse
    await server.add_charge_point("CP1")
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        before = await scrape(server)
        for vendor in ("v", "crash", "v"):
            assert await cp.call(call.DataTransfer(vendor_id=vendor)) is None  # a CALLERROR
        after = await scrape(server)
    data_transfer = ("action", "DataTransfer")
    assert {k: c for k, c in moved(before, after).items() if k[0] in (RECEIVED, ERRORS_SENT)} == {
        (RECEIVED, frozenset({data_transfer, ("result", "PropertyConstraintViolation")})): 2,
        (RECEIVED, frozenset({data_transfer, ("result", "InternalError")})): 1,
        (ERRORS_SENT, frozenset({("code", "PropertyConstraintViolation")})): 2,
        (ERRORS_SENT, frozenset({("code", "InternalError")})): 1,
    }


async def test_refused_connections_are_counted_by_status(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    before = await scrape(server)
    with pytest.raises(websockets.InvalidStatus) as unknown:
        async with raw_socket(server, "NOBODY"):
            pass
    assert unknown.value.response.status_code == 404
    with pytest.raises(websockets.InvalidStatus) as no_protocol:
        async with websockets.connect(server.ws_url + "CP1", compression=None):
            pass
    assert no_protocol.value.response.status_code == 400
    with pytest.raises(websockets.InvalidStatus):
        async with raw_socket(server, "NOBODY"):
            pass
    after = await scrape(server)
    assert moved(before, after) == {
        (CONNECTIONS, frozenset({("outcome", "refused"), ("status", "404")})): 2,
        (CONNECTIONS, frozenset({("outcome", "refused"), ("status", "400")})): 1,
    }
    assert value(after, CONNECTED) == 0


class ResettableChargePoint(RecordingChargePoint):
    @on(Action.reset)
    def on_reset(self, type: str) -> call_result.Reset:
        return call_result.Reset(status=ResetStatus.accepted)


async def test_command_latency_by_action_and_outcome(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    async with charge_point(server, "CP1", cls=ResettableChargePoint) as cp:
        await boot(cp)
        before = await scrape(server)
        commands = server.node.commands
        reset = await commands.perform_now("CP1", "Reset", {"type": "Soft"})
        assert reset.status == "accepted"
        # the ocpp package answers an action it has no handler for with a CALLERROR
        unlock = await commands.perform_now("CP1", "UnlockConnector", {"connectorId": 1})
        assert unlock.status == "error"
        after = await scrape(server)
    histogram = "chargegrid_command_duration_seconds"
    accepted = {"action": "Reset", "outcome": "accepted"}
    error = {"action": "UnlockConnector", "outcome": "error"}
    assert delta(before, after, f"{histogram}_count", **accepted) == 1
    assert delta(before, after, f"{histogram}_count", **error) == 1
    assert 0 < delta(before, after, f"{histogram}_sum", **accepted) < 2.0
    assert delta(before, after, f"{histogram}_bucket", le="+Inf", **accepted) == 1


async def test_each_node_has_its_own_registry(server: RunningServer) -> None:
    from chargegrid.app import ChargeGrid

    other = ChargeGrid(server.node.settings)
    try:
        assert other.metrics.registry is not server.node.metrics.registry
        other.metrics.handshakes[101] += 5
        assert value(await scrape(server), CONNECTIONS, outcome="accepted", status="101") == 0
    finally:
        await other.engine.dispose()
