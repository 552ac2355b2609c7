"""REST: sessions index and detail (the reference's sessions#index/show), on SQLite and
PostgreSQL, with sessions produced by real OCPP clients."""

from __future__ import annotations

from typing import Any

from apisupport import (
    add_tag,
    boot,
    client,
    clients,
    energy,
    meter,
    power,
    provision,
    start,
    stop,
    token_for,
    voltage,
)

from support import RunningServer, charge_point

T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T10:15:00Z"
T2 = "2024-05-01T10:30:00Z"
T3 = "2024-05-01T10:45:00Z"


async def make_sessions(server: RunningServer) -> tuple[int, int, int]:
    """tx1: CP1, TAG1, completed, 3 kWh in 45 min; tx2: CP1, TAG2, active, 1 kWh so far;
    tx3: CP2, TAG1, completed, 10 kWh in an hour."""
    await provision(server, "CP1")
    await provision(server, "CP2")
    await add_tag(server, "TAG1")
    await add_tag(server, "TAG2")
    async with charge_point(server, "CP1") as cp1, charge_point(server, "CP2") as cp2:
        await boot(cp1)
        await boot(cp2)
        tx1 = await start(cp1, 1, "TAG1", 1000, T0)
        await meter(
            cp1,
            1,
            tx1,
            T1,
            [energy("2000"), power("7000"), voltage("230", "L1"), voltage("231", "L2")],
        )
        await meter(cp1, 1, tx1, T2, [energy("3000"), power("6000")])
        await stop(cp1, tx1, 4000, T3)
        tx2 = await start(cp1, 2, "TAG2", 500, "2024-05-02T08:00:00Z")
        await meter(cp1, 2, tx2, "2024-05-02T08:10:00Z", [energy("1500")])
        tx3 = await start(cp2, 1, "TAG1", 0, "2024-05-03T00:00:00Z")
        await stop(cp2, tx3, 10000, "2024-05-03T01:00:00Z")
    return tx1, tx2, tx3


async def test_sessions_index_filters_and_pagination(server: RunningServer) -> None:
    tx1, tx2, tx3 = await make_sessions(server)
    async with clients(server) as (_, viewer, anonymous):
        assert (await anonymous.get("/sessions")).status_code == 401

        async def ids(**params: Any) -> tuple[list[int], int]:
            response = await viewer.get("/sessions", params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            return [s["id"] for s in body["items"]], body["total"]

        assert await ids() == ([tx3, tx2, tx1], 3)
        assert await ids(status="all") == ([tx3, tx2, tx1], 3)
        assert await ids(status="active") == ([tx2], 1)
        assert await ids(status="completed") == ([tx3, tx1], 2)
        assert await ids(charge_point="CP1") == ([tx2, tx1], 2)
        assert await ids(charge_point="NOPE") == ([], 0)
        assert await ids(id_tag="TAG1") == ([tx3, tx1], 2)
        assert await ids(since="2024-05-02T00:00:00Z") == ([tx3, tx2], 2)
        assert await ids(until="2024-05-02T00:00:00Z") == ([tx1], 1)
        assert await ids(since="2024-05-01T10:00:00Z", until="2024-05-01T10:00:01Z") == ([tx1], 1)
        assert await ids(since="2024-05-02T10:00:00+02:00") == ([tx3, tx2], 2)  # offsets honoured
        assert await ids(limit=1, offset=1) == ([tx2], 3)
        assert await ids(limit=2, offset=2) == ([tx1], 3)
        assert await ids(status="completed", charge_point="CP1", id_tag="TAG1") == ([tx1], 1)

        body = (await viewer.get("/sessions", params={"status": "completed"})).json()
        first = body["items"][1]
        assert first == {
            "id": tx1,
            "charge_point": "CP1",
            "connector_id": 1,
            "id_tag": "TAG1",
            "started_at": "2024-05-01T10:00:00.000Z",
            "stopped_at": "2024-05-01T10:45:00.000Z",
            "meter_start": 1000,
            "meter_stop": 4000,
            "energy_kwh": 3.0,
            "duration_seconds": 2700.0,
            "stop_reason": "Local",
            "stop_id_tag": None,
            "reservation_id": None,
            "status": "completed",
        }
        active = (await viewer.get("/sessions", params={"status": "active"})).json()["items"][0]
        assert active["status"] == "active"
        assert active["stopped_at"] is None
        assert active["meter_stop"] is None
        assert active["energy_kwh"] == 1.0  # 1500 - 500 Wh so far
        assert active["duration_seconds"] > 0

        for params, message in [
            ({"since": "yesterday"}, "since must be an ISO 8601 date-time"),
            ({"until": "2024-13-01"}, "until must be an ISO 8601 date-time"),
            (
                {"since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"},
                "until must not be before since",
            ),
        ]:
            response = await viewer.get("/sessions", params=params)
            assert response.status_code == 422, params
            assert message in response.json()["detail"]
        for params in ({"status": "open"}, {"limit": 0}, {"limit": 501}, {"offset": -1}):
            assert (await viewer.get("/sessions", params=params)).status_code == 422, params


async def test_session_detail_with_meter_values(server: RunningServer) -> None:
    tx1, tx2, _tx3 = await make_sessions(server)
    async with clients(server) as (_, viewer, anonymous):
        assert (await anonymous.get(f"/sessions/{tx1}")).status_code == 401
        body = (await viewer.get(f"/sessions/{tx1}")).json()
        assert body["energy_kwh"] == 3.0
        assert body["duration_seconds"] == 2700.0
        assert body["meter_values_truncated"] is False
        assert [
            (v["timestamp"], v["measurand"], v["phase"], v["value"], v["unit"])
            for v in body["meter_values"]
        ] == [
            ("2024-05-01T10:15:00.000Z", "Energy.Active.Import.Register", None, 2000.0, "Wh"),
            ("2024-05-01T10:15:00.000Z", "Power.Active.Import", None, 7000.0, "W"),
            ("2024-05-01T10:15:00.000Z", "Voltage", "L1", 230.0, "V"),
            ("2024-05-01T10:15:00.000Z", "Voltage", "L2", 231.0, "V"),
            ("2024-05-01T10:30:00.000Z", "Energy.Active.Import.Register", None, 3000.0, "Wh"),
            ("2024-05-01T10:30:00.000Z", "Power.Active.Import", None, 6000.0, "W"),
        ]
        assert body["meter_values"][0] == {
            "timestamp": "2024-05-01T10:15:00.000Z",
            "charge_point": "CP1",
            "connector_id": 1,
            "session_id": tx1,
            "measurand": "Energy.Active.Import.Register",
            "phase": None,
            "location": "Outlet",
            "context": "Sample.Periodic",
            "unit": "Wh",
            "value": 2000.0,
            "raw_value": "2000",
            "format": "Raw",
        }
        active = (await viewer.get(f"/sessions/{tx2}")).json()
        assert active["status"] == "active"
        assert active["energy_kwh"] == 1.0
        assert len(active["meter_values"]) == 1

        missing = await viewer.get("/sessions/999999")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no session 999999"}
        assert (await viewer.get("/sessions/abc")).status_code == 422
        assert (await viewer.get("/sessions/2801896338516")).status_code == 422  # not an int32
        assert (await viewer.get("/sessions", params={"offset": 10**12})).status_code == 422


async def test_group_limited_user_sees_only_its_sessions(server: RunningServer) -> None:
    tx1, _tx2, tx3 = await make_sessions(server)
    token = await token_for(server, "limited", "viewer", groups={"south": ["CP2"]})
    async with client(server, token) as limited:
        body = (await limited.get("/sessions")).json()
        assert [s["id"] for s in body["items"]] == [tx3]
        assert body["total"] == 1
        assert (await limited.get("/sessions", params={"charge_point": "CP1"})).json() == {
            "items": [],
            "total": 0,
        }
        assert (await limited.get(f"/sessions/{tx3}")).status_code == 200
        hidden = await limited.get(f"/sessions/{tx1}")
        assert hidden.status_code == 404
        assert hidden.json() == {"detail": f"no session {tx1}"}
