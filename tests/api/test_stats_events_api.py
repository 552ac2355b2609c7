"""REST: dashboard stats (the reference's calculate_stats) and the per-charge-point event log,
on SQLite and PostgreSQL, with real OCPP clients producing the state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from apisupport import (
    add_tag,
    boot,
    client,
    clients,
    eventually,
    provision,
    send,
    start,
    status,
    stop,
    token_for,
)
from ocpp.v16 import call

from support import RunningServer, charge_point


def minutes_ago(minutes: float) -> str:
    stamp = datetime.now(UTC) - timedelta(minutes=minutes)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    stamp = max(stamp, midnight + timedelta(seconds=1))  # stay "today" just after midnight
    return stamp.isoformat().replace("+00:00", "Z")


async def test_stats(server: RunningServer) -> None:
    for identity in ("CP1", "CP2", "CP3", "CP4"):
        await provision(server, identity)
    await add_tag(server, "TAG1")
    await add_tag(server, "TAG2")
    limited_token = await token_for(server, "limited", "viewer", groups={"g": ["CP2", "CP3"]})
    async with (
        clients(server) as (_, viewer, anonymous),
        client(server, limited_token) as limited,
    ):
        assert (await anonymous.get("/stats")).status_code == 401
        empty = (await viewer.get("/stats")).json()
        assert empty == {
            "total": 4,
            "connected": 0,
            "available": 0,
            "charging": 0,
            "active_sessions": 0,
            "energy_today_kwh": 0.0,
        }
        async with (
            charge_point(server, "CP1") as cp1,
            charge_point(server, "CP2") as cp2,
            charge_point(server, "CP3") as cp3,
        ):
            for cp in (cp1, cp2, cp3):
                await boot(cp)
            await status(cp1, 0, "Available")
            await status(cp2, 0, "Available")
            await status(cp2, 1, "Charging")
            await status(cp3, 0, "Unavailable")
            # today: a completed 2.5 kWh session and an active one; yesterday: 40 kWh
            tx = await start(cp1, 1, "TAG1", 1000, minutes_ago(30))
            await stop(cp1, tx, 3500, minutes_ago(1))
            old = await start(cp3, 1, "TAG1", 0, "2020-01-01T00:00:00Z")
            await stop(cp3, old, 40000, "2020-01-01T05:00:00Z")
            await start(cp2, 1, "TAG2", 0, minutes_ago(5))
            tx_cp3 = await start(cp3, 2, "TAG1", 0, minutes_ago(20))
            await stop(cp3, tx_cp3, 1250, minutes_ago(2))

            async def stats() -> Any:
                return (await viewer.get("/stats")).json()

            body = await eventually(stats, lambda b: b["connected"] == 3)
            assert body == {
                "total": 4,
                "connected": 3,
                "available": 2,
                "charging": 1,
                "active_sessions": 1,
                "energy_today_kwh": 3.75,
            }
            assert (await limited.get("/stats")).json() == {
                "total": 2,
                "connected": 2,
                "available": 1,
                "charging": 1,
                "active_sessions": 1,
                "energy_today_kwh": 1.25,
            }


async def test_charge_point_events(server: RunningServer) -> None:
    await provision(server, "CP1")
    await provision(server, "CP2")
    limited_token = await token_for(server, "limited", "viewer", groups={"g": ["CP2"]})
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        await send(cp, call.FirmwareStatusNotification(status="Downloading"))
        await send(cp, call.DataTransfer(vendor_id="com.acme", message_id="hello", data="x"))
        # A stop for a transaction never started: answered, recorded as an anomaly.
        await send(
            cp,
            call.StopTransaction(
                meter_stop=10, timestamp="2024-05-01T10:00:00Z", transaction_id=987654
            ),
        )
        await send(cp, call.FirmwareStatusNotification(status="Downloaded"))
    async with clients(server) as (_, viewer, anonymous), client(server, limited_token) as limited:
        assert (await anonymous.get("/charge-points/CP1/events")).status_code == 401

        async def events(**params: Any) -> Any:
            response = await viewer.get("/charge-points/CP1/events", params=params)
            assert response.status_code == 200, response.text
            return response.json()

        body = await eventually(events, lambda b: b["total"] == 4)
        assert body["total"] == 4
        assert [(e["category"], e["type"]) for e in body["items"]] == [
            ("notification", "FirmwareStatusNotification"),
            ("anomaly", "StopTransaction.unknown_transaction"),
            ("data_transfer", "DataTransfer"),
            ("notification", "FirmwareStatusNotification"),
        ]
        newest = body["items"][0]
        assert newest["charge_point"] == "CP1"
        assert newest["payload"] == {"status": "Downloaded"}
        assert newest["timestamp"].endswith("Z")
        assert "Downloaded" in newest["message"]
        anomaly = body["items"][1]
        assert anomaly["message"] == "StopTransaction for unknown transaction 987654"
        assert anomaly["payload"] == {"transaction_id": 987654, "meter_stop": 10}

        notifications = await events(category="notification")
        assert notifications["total"] == 2
        assert [e["payload"]["status"] for e in notifications["items"]] == [
            "Downloaded",
            "Downloading",
        ]
        page = await events(limit=1, offset=1)
        assert page["total"] == 4
        assert [e["id"] for e in page["items"]] == [body["items"][1]["id"]]
        assert await events(category="security") == {"items": [], "total": 0}
        assert (
            await viewer.get("/charge-points/CP1/events", params={"limit": 0})
        ).status_code == 422
        assert (await viewer.get("/charge-points/CP2/events")).json() == {"items": [], "total": 0}

        missing = await viewer.get("/charge-points/NOPE/events")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no charge point 'NOPE'"}
        hidden = await limited.get("/charge-points/CP1/events")
        assert hidden.status_code == 404
        assert hidden.json() == {"detail": "no charge point 'CP1'"}
