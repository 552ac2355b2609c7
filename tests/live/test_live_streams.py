"""Live streams end to end (issue 5): an OCPP client acts, WebSocket and SSE subscribers see it.

The charge point is the ``ocpp`` package's ChargePoint; the WebSocket subscriber is a plain
``websockets`` client and the SSE subscriber reads the raw ``text/event-stream`` with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import websockets
from ocpp.v16 import call

from chargegrid.store import users
from chargegrid.store.database import writing
from support import RunningServer, charge_point


async def _token(
    server: RunningServer,
    name: str,
    role: users.Role = users.Role.VIEWER,
    *,
    groups: list[str] | None = None,
) -> str:
    now = datetime.now(UTC)
    async with writing(server.node.engine).begin() as connection:
        user_id = await users.add_user(
            connection, name, role=role, now=now, all_charge_points=groups is None
        )
        for group in groups or []:
            group_id = await users.group_id(connection, group) or await users.add_group(
                connection, group, now
            )
            await users.grant_group(connection, user_id, group_id)
        return await users.issue_token(connection, user_id, name="test", now=now)


@contextlib.asynccontextmanager
async def live_socket(server: RunningServer, token: str) -> AsyncIterator[Any]:
    url = f"ws://{server.host}:{server.port}/api/v1/live?token={token}"
    async with websockets.connect(url) as ws:
        yield ws


async def _recv(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def _sse_events(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    """Read ``count`` events (id, event, data) from an open SSE response."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("event: "):
            current["event"] = line[7:]
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and "data" in current:
            events.append(current)
            current = {}
            if len(events) == count:
                break
        elif line == "":
            current = {}
    return events


async def _session(server: RunningServer, cp: Any) -> int:
    await cp.call(
        call.StatusNotification(
            connector_id=1,
            error_code="NoError",
            status="Charging",
            timestamp="2026-11-01T10:00:00Z",
        )
    )
    started = await cp.call(
        call.StartTransaction(
            connector_id=1, id_tag="TAG1", meter_start=100, timestamp="2026-11-01T10:00:01Z"
        )
    )
    await cp.call(
        call.MeterValues(
            connector_id=1,
            transaction_id=started.transaction_id,
            meter_value=[
                {
                    "timestamp": "2026-11-01T10:01:00Z",
                    "sampledValue": [
                        {"value": "600"},
                        {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
                    ],
                }
            ],
        )
    )
    await cp.call(
        call.StopTransaction(
            meter_stop=1100, timestamp="2026-11-01T10:30:00Z", transaction_id=started.transaction_id
        )
    )
    return int(started.transaction_id)


def _expected(tx: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "status",
            {
                "connector_id": 1,
                "status": "Charging",
                "error_code": "NoError",
                "info": None,
                "timestamp": "2026-11-01T10:00:00.000Z",
            },
        ),
        (
            "sessions",
            {
                "event": "started",
                "session": {
                    "id": tx,
                    "charge_point": "CP1",
                    "connector_id": 1,
                    "id_tag": "TAG1",
                    "started_at": "2026-11-01T10:00:01.000Z",
                    "stopped_at": None,
                    "meter_start": 100,
                    "meter_stop": None,
                    "stop_reason": None,
                    "energy_consumed": None,
                },
            },
        ),
        (
            "meter_values",
            {
                "connector_id": 1,
                "measurand": "Energy.Active.Import.Register",
                "value": 600.0,
                "unit": "Wh",
                "phase": None,
                "context": "Sample.Periodic",
                "timestamp": "2026-11-01T10:01:00.000Z",
                "session_id": tx,
            },
        ),
        (
            "meter_values",
            {
                "connector_id": 1,
                "measurand": "Power.Active.Import",
                "value": 7200.0,
                "unit": "W",
                "phase": None,
                "context": "Sample.Periodic",
                "timestamp": "2026-11-01T10:01:00.000Z",
                "session_id": tx,
            },
        ),
        (
            "sessions",
            {
                "event": "stopped",
                "session": {
                    "id": tx,
                    "charge_point": "CP1",
                    "connector_id": 1,
                    "id_tag": "TAG1",
                    "started_at": "2026-11-01T10:00:01.000Z",
                    "stopped_at": "2026-11-01T10:30:00.000Z",
                    "meter_start": 100,
                    "meter_stop": 1100,
                    "stop_reason": "Local",
                    "energy_consumed": 1.0,
                },
            },
        ),
    ]


async def test_websocket_and_sse_subscribers_receive_exactly_the_events_in_order(
    server: RunningServer,
) -> None:
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    token = await _token(server, "viewer")
    async with (
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
        live_socket(server, token) as ws,
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
        assert await _recv(ws) == {
            "type": "subscribed",
            "charge_point": "CP1",
            "topics": ["status", "sessions", "meter_values"],
        }
        async with http.stream(
            "GET",
            "/api/v1/events",
            params={"topics": "status,sessions"},
            headers={"Authorization": f"Bearer {token}"},
        ) as sse:
            assert sse.status_code == 200
            assert sse.headers["content-type"].startswith("text/event-stream")
            # The stream is subscribed once its first line (retry) arrived.
            await asyncio.sleep(0.3)
            async with charge_point(server, "CP1") as cp:
                await cp.call(
                    call.BootNotification(charge_point_vendor="V", charge_point_model="M")
                )
                tx = await _session(server, cp)
            received = [await _recv(ws) for _ in range(5)]
            assert [(m["topic"], m["data"]) for m in received] == _expected(tx)
            assert all(m["type"] == "event" and m["charge_point"] == "CP1" for m in received)
            assert [m["id"] for m in received] == sorted(m["id"] for m in received)
            fleet = await asyncio.wait_for(_sse_events(sse, 3), 5)
        expected_fleet = [(t, d) for t, d in _expected(tx) if t != "meter_values"]
        assert [(e["event"], e["data"]["data"]) for e in fleet] == [
            (t, {"charge_point": "CP1", **d}) if t == "status" else (t, d)
            for t, d in expected_fleet
        ]


async def test_unauthenticated_subscribers_are_rejected(server: RunningServer) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"ws://{server.host}:{server.port}/api/v1/live"):
            pass
    assert refused.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as bad:
        async with websockets.connect(f"ws://{server.host}:{server.port}/api/v1/live?token=nope"):
            pass
    assert bad.value.response.status_code == 401
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/api/v1/events")).status_code == 401


async def test_another_users_charge_point_is_refused(server: RunningServer) -> None:
    await server.add_charge_point("MINE")
    await server.add_charge_point("THEIRS")
    now = datetime.now(UTC)
    async with writing(server.node.engine).begin() as connection:
        group = await users.add_group(connection, "depot", now)
        await users.add_to_group(connection, group, "MINE")
    token = await _token(server, "limited", groups=["depot"])
    async with live_socket(server, token) as ws:
        await ws.send(json.dumps({"type": "subscribe", "charge_point": "THEIRS"}))
        refused = await _recv(ws)
        assert refused["type"] == "error" and "THEIRS" in refused["error"]
        await ws.send(json.dumps({"type": "subscribe", "charge_point": "NOBODY"}))
        unknown = await _recv(ws)
        assert unknown["type"] == "error"
        assert unknown["error"].replace("NOBODY", "X") == refused["error"].replace("THEIRS", "X")
        await ws.send(json.dumps({"type": "subscribe", "fleet": True, "topics": ["status"]}))
        assert (await _recv(ws))["type"] == "subscribed"
        for identity in ("THEIRS", "MINE"):
            async with charge_point(server, identity) as cp:
                await cp.call(
                    call.BootNotification(charge_point_vendor="V", charge_point_model="M")
                )
                await cp.call(
                    call.StatusNotification(
                        connector_id=0, error_code="NoError", status="Available"
                    )
                )
        event = await _recv(ws)
        assert event["charge_point"] == "MINE"  # THEIRS' status was filtered out
        with pytest.raises(TimeoutError):
            await _recv(ws, timeout=0.5)


async def test_bad_subscribe_messages_get_clear_errors(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await _token(server, "viewer")
    async with live_socket(server, token) as ws:
        for message, fragment in [
            ("not json", "JSON"),
            (json.dumps([1]), "JSON"),
            (json.dumps({"type": "dance"}), "subscribe"),
            (json.dumps({"type": "subscribe"}), "charge_point"),
            (
                json.dumps({"type": "subscribe", "charge_point": "CP1", "topics": ["weather"]}),
                "weather",
            ),
            (
                json.dumps({"type": "subscribe", "fleet": True, "topics": ["meter_values"]}),
                "meter_values",
            ),
        ]:
            await ws.send(message)
            reply = await _recv(ws)
            assert reply["type"] == "error" and fragment in reply["error"], (message, reply)
        await ws.send(json.dumps({"type": "ping"}))
        assert await _recv(ws) == {"type": "pong"}


async def test_sse_resumes_from_last_event_id(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await _token(server, "viewer")
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
        charge_point(server, "CP1") as cp,
    ):
        await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        async with http.stream(
            "GET", "/api/v1/events", params={"topics": "status"}, headers=headers
        ) as sse:
            await asyncio.sleep(0.3)
            await cp.call(
                call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing")
            )
            first = (await asyncio.wait_for(_sse_events(sse, 1), 5))[0]
        # Disconnected: two events happen meanwhile.
        await cp.call(
            call.StatusNotification(connector_id=1, error_code="NoError", status="Charging")
        )
        await cp.call(
            call.StatusNotification(connector_id=1, error_code="NoError", status="Finishing")
        )
        async with http.stream(
            "GET",
            "/api/v1/events",
            params={"topics": "status"},
            headers={**headers, "Last-Event-ID": str(first["id"])},
        ) as sse:
            missed = await asyncio.wait_for(_sse_events(sse, 2), 5)
        assert [e["data"]["data"]["status"] for e in missed] == ["Charging", "Finishing"]
    # A stream the hub started listening to after the client's last event: a gap, said plainly.
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        async with http.stream(
            "GET",
            "/api/v1/events",
            params={"topics": "sessions"},
            headers={**headers, "Last-Event-ID": str(first["id"])},
        ) as sse:
            lines: list[str] = []
            async for line in sse.aiter_lines():
                lines.append(line)
                if line.startswith("event: reset") or len(lines) > 20:
                    break
        assert "event: reset" in lines


async def test_a_subscriber_that_never_reads_does_not_grow_memory(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await _token(server, "viewer")
    url = f"ws://{server.host}:{server.port}/api/v1/live?token={token}"
    # No reading, a one-message queue and a 4 kB receive window: websockets stops reading the
    # socket, the TCP window closes, and the server's sends wait (uvicorn honours backpressure).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.connect((server.host, server.port))
    sock.setblocking(False)
    async with websockets.connect(url, sock=sock, max_queue=1) as ws:
        await ws.send(json.dumps({"type": "subscribe", "charge_point": "CP1"}))
        hub = server.node.live
        for _ in range(500):  # subscribed (a fixed pause was a race with a slow machine)
            if any(hub._listeners.values()):
                break
            await asyncio.sleep(0.02)
        (subscriber,) = {s for subs in hub._listeners.values() for s in subs}
        # 50,000 meter values on 14 series (about 12 MB of events, more than any socket buffer
        # holds), published on the real bus the way the MeterValues handler publishes them.
        channel = "charge_point.CP1.meter_values"
        series = [("Voltage", p) for p in ("L1", "L2", "L3", "L1-N", "L2-N", "L3-N")]
        series += [("Current.Import", p) for p in ("L1", "L2", "L3", "L1-N", "L2-N", "L3-N")]
        series += [("Power.Active.Import", None), ("Energy.Active.Import.Register", None)]
        for i in range(50_000):
            measurand, phase = series[i % len(series)]
            await server.node.bus.publish(
                channel,
                {
                    "connector_id": 1,
                    "measurand": measurand,
                    "value": float(i),
                    "unit": "V",
                    "phase": phase,
                    "context": "Sample.Periodic",
                    "timestamp": "2026-11-01T10:00:00.000Z",
                    "session_id": 1,
                },
            )
            if i % 500 == 0:
                await asyncio.sleep(0)  # let the hub and the sender run, as real traffic would
        await asyncio.sleep(0.5)
        # The subscriber owes at most one value per series, however many were published.
        assert len(subscriber.outbox) <= len(series)
        assert subscriber.outbox.coalesced > 40_000


async def test_charge_point_sse_stream_with_token_in_url(server: RunningServer) -> None:
    """``GET /api/v1/charge-points/{id}/events`` with ``Accept: text/event-stream`` streams live
    events; EventSource cannot send headers, so the token may come in the URL."""
    await server.add_charge_point("CP1")
    token = await _token(server, "viewer")
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        log = await http.get(
            "/api/v1/charge-points/CP1/events", headers={"Authorization": f"Bearer {token}"}
        )
        assert log.status_code == 200 and "items" in log.json()  # JSON: the event log
        assert (
            await http.get("/api/v1/charge-points/CP1/events", params={"token": token})
        ).status_code == 401  # a URL token only counts for event streams
        async with http.stream(
            "GET",
            "/api/v1/charge-points/CP1/events",
            params={"token": token, "topics": "status,connection"},
            headers={"Accept": "text/event-stream"},
        ) as stream:
            assert stream.status_code == 200
            await asyncio.sleep(0.3)
            async with charge_point(server, "CP1") as cp:
                await cp.call(
                    call.BootNotification(charge_point_vendor="V", charge_point_model="M")
                )
                await cp.call(
                    call.StatusNotification(connector_id=2, error_code="NoError", status="Faulted")
                )
                events = await asyncio.wait_for(_sse_events(stream, 3), 5)
    assert [e["event"] for e in events] == ["connection", "connection", "status"]
    assert events[0]["data"]["data"]["event"] == "connected"
    assert events[1]["data"]["data"]["event"] == "booted"
    assert events[2]["data"]["data"]["status"] == "Faulted"
    assert events[2]["data"]["charge_point"] == "CP1"


async def test_the_javascript_client_is_served(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/static/chargegrid-live.js")
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    for callback in ("onStatusChange", "onSessionStarted", "onSessionStopped", "onMeterValue"):
        assert callback in response.text
    for callback in ("onEnergy", "onPower", "onVoltage", "onCurrent", "onSoC", "onTemperature"):
        assert f'"{callback}"' in response.text


async def test_fleet_stats_are_pushed_when_they_change(settings: Any) -> None:
    from support import running_server

    async with running_server(settings.model_copy(update={"live_stats_interval": 0.1})) as server:
        await server.add_charge_point("CP1")
        await server.add_charge_point("CP2")
        token = await _token(server, "viewer")
        async with live_socket(server, token) as ws:
            await ws.send(json.dumps({"type": "subscribe", "fleet": True, "topics": ["stats"]}))
            assert (await _recv(ws))["type"] == "subscribed"
            first = await _recv(ws)
            assert first["topic"] == "stats" and first["data"]["total"] == 2
            assert first["data"]["connected"] == 0
            async with charge_point(server, "CP1") as cp:
                await cp.call(
                    call.BootNotification(charge_point_vendor="V", charge_point_model="M")
                )
                await cp.call(
                    call.StatusNotification(
                        connector_id=0, error_code="NoError", status="Available"
                    )
                )
                changed = await _recv(ws)
                while changed["data"]["available"] != 1:  # connected first, then available
                    changed = await _recv(ws)
                assert changed["data"]["connected"] == 1
        limited = await _token(server, "limited", groups=["nobody"])
        async with live_socket(server, limited) as ws:
            await ws.send(json.dumps({"type": "subscribe", "fleet": True, "topics": ["stats"]}))
            assert (await _recv(ws))["type"] == "subscribed"
            with pytest.raises(TimeoutError):  # fleet-wide figures are not for group-limited users
                await _recv(ws, timeout=0.6)


async def test_live_statistics_are_published_per_charge_point(settings: Any) -> None:
    """Issue 4: live statistics published on the bus (topic ``live_stats``), one snapshot per
    interval rather than one event per value."""
    from support import running_server

    fast = settings.model_copy(update={"live_stats_publish_interval": 0.1})
    async with running_server(fast) as server:
        await server.add_charge_point("CP1")
        await server.add_id_tag("TAG1")
        token = await _token(server, "viewer")
        async with live_socket(server, token) as ws, charge_point(server, "CP1") as cp:
            await ws.send(
                json.dumps({"type": "subscribe", "charge_point": "CP1", "topics": ["live_stats"]})
            )
            assert (await _recv(ws))["type"] == "subscribed"
            await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            started = await cp.call(
                call.StartTransaction(
                    connector_id=1,
                    id_tag="TAG1",
                    meter_start=1000,
                    timestamp="2026-11-01T10:00:00Z",
                )
            )
            for minute, (energy, power) in enumerate([(1500, 11000), (2200, 11500)], start=1):
                await cp.call(
                    call.MeterValues(
                        connector_id=1,
                        transaction_id=started.transaction_id,
                        meter_value=[
                            {
                                "timestamp": f"2026-11-01T10:0{minute}:00Z",
                                "sampledValue": [
                                    {"value": str(energy)},
                                    {
                                        "value": str(power),
                                        "measurand": "Power.Active.Import",
                                        "unit": "W",
                                    },
                                ],
                            }
                        ],
                    )
                )
            snapshot = await _recv(ws)
            while snapshot["data"]["connectors"][0]["power_w"] != 11500.0:
                snapshot = await _recv(ws)
    assert snapshot["topic"] == "live_stats" and snapshot["charge_point"] == "CP1"
    connector = snapshot["data"]["connectors"][0]
    assert connector["connector_id"] == 1
    assert connector["session"]["session_id"] == started.transaction_id
    assert connector["session"]["energy_wh"] == 1200.0  # 2200 - meterStart 1000
