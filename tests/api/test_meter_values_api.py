"""REST: meter values per charge point and session, flat and grouped for charting, bounded, and
the streamed CSV export parsed back; on SQLite and PostgreSQL with values sent by real clients."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
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
from ocpp.v16 import call

from chargegrid.clock import isoformat_z
from support import RunningServer, charge_point

NOW = datetime.now(UTC).replace(microsecond=0)


def at(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def z(minutes_ago: float) -> str:
    return isoformat_z(NOW - timedelta(minutes=minutes_ago))


async def recent_session(server: RunningServer) -> int:
    """A session started 3 h ago: an old value (2 h ago) and three in the last hour."""
    await provision(server, "CP1")
    await provision(server, "CP2")
    await add_tag(server, "TAG1")
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        tx = await start(cp, 1, "TAG1", 0, at(180))
        await meter(cp, 1, tx, at(120), [energy("100")])
        await meter(
            cp,
            1,
            tx,
            at(50),
            [energy("1000"), power("7000"), voltage("230.5", "L1"), voltage("231", "L2")],
        )
        await meter(cp, 1, tx, at(40), [energy("2000"), power("6500")])
        await meter(cp, 1, tx, at(20), [energy("3000"), power("0")])
        await stop(cp, tx, 3000, at(10))
    return tx


async def test_charge_point_meter_values_flat_grouped_filtered(server: RunningServer) -> None:
    tx = await recent_session(server)
    async with clients(server) as (_, viewer, anonymous):
        assert (await anonymous.get("/charge-points/CP1/meter-values")).status_code == 401

        async def get(**params: Any) -> Any:
            response = await viewer.get("/charge-points/CP1/meter-values", params=params)
            assert response.status_code == 200, response.text
            return response.json()

        flat = await get()  # default: the last hour, oldest first
        assert [(v["timestamp"], v["measurand"], v["phase"], v["value"]) for v in flat] == [
            (z(50), "Energy.Active.Import.Register", None, 1000.0),
            (z(50), "Power.Active.Import", None, 7000.0),
            (z(50), "Voltage", "L1", 230.5),
            (z(50), "Voltage", "L2", 231.0),
            (z(40), "Energy.Active.Import.Register", None, 2000.0),
            (z(40), "Power.Active.Import", None, 6500.0),
            (z(20), "Energy.Active.Import.Register", None, 3000.0),
            (z(20), "Power.Active.Import", None, 0.0),
        ]
        assert all(v["session_id"] == tx and v["charge_point"] == "CP1" for v in flat)

        grouped = await get(grouped="true")
        assert grouped == {
            "Energy.Active.Import.Register": [
                {"timestamp": z(50), "value": 1000.0, "unit": "Wh", "phase": None},
                {"timestamp": z(40), "value": 2000.0, "unit": "Wh", "phase": None},
                {"timestamp": z(20), "value": 3000.0, "unit": "Wh", "phase": None},
            ],
            "Power.Active.Import": [
                {"timestamp": z(50), "value": 7000.0, "unit": "W", "phase": None},
                {"timestamp": z(40), "value": 6500.0, "unit": "W", "phase": None},
                {"timestamp": z(20), "value": 0.0, "unit": "W", "phase": None},
            ],
            "Voltage": [
                {"timestamp": z(50), "value": 230.5, "unit": "V", "phase": "L1"},
                {"timestamp": z(50), "value": 231.0, "unit": "V", "phase": "L2"},
            ],
        }
        # scope names and OCPP names, repeatable
        both = await get(measurand=["power", "Energy.Active.Import.Register"], grouped="true")
        assert sorted(both) == ["Energy.Active.Import.Register", "Power.Active.Import"]
        assert [v["value"] for v in await get(measurand="voltage", phase="L2")] == [231.0]
        # an explicit window reaches the older value
        old = await get(since=at(130), until=at(60), measurand="energy")
        assert [(v["timestamp"], v["value"]) for v in old] == [(z(120), 100.0)]
        assert await get(since=at(45), until=at(30), measurand="soc") == []

        response = await viewer.get("/charge-points/CP1/meter-values", params={"limit": 3})
        assert len(response.json()) == 3
        assert response.headers["x-truncated"] == "true"
        response = await viewer.get("/charge-points/CP1/meter-values", params={"limit": 8})
        assert len(response.json()) == 8
        assert response.headers["x-truncated"] == "false"

        for params, message in [
            ({"limit": 0}, "limit must be between 1 and 100000"),
            ({"limit": 100_001}, "limit must be between 1 and 100000"),
            ({"measurand": "Bogus"}, "unknown measurand 'Bogus'"),
            ({"phase": "L9"}, "unknown phase 'L9'"),
            ({"since": "an hour ago"}, "since must be an ISO 8601 date-time"),
            ({"since": at(10), "until": at(20)}, "until must not be before since"),
        ]:
            response = await viewer.get("/charge-points/CP1/meter-values", params=params)
            assert response.status_code == 422, params
            assert message in response.json()["detail"], response.json()

        missing = await viewer.get("/charge-points/NOPE/meter-values")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no charge point 'NOPE'"}
        assert (await viewer.get("/charge-points/CP2/meter-values")).json() == []


async def test_session_meter_values_whole_session_by_default(server: RunningServer) -> None:
    tx = await recent_session(server)
    async with clients(server) as (_, viewer, anonymous):
        assert (await anonymous.get(f"/sessions/{tx}/meter-values")).status_code == 401
        values = (await viewer.get(f"/sessions/{tx}/meter-values")).json()
        assert len(values) == 9
        assert values[0]["timestamp"] == z(120)
        grouped = (
            await viewer.get(
                f"/sessions/{tx}/meter-values", params={"grouped": "true", "measurand": "energy"}
            )
        ).json()
        assert grouped == {
            "Energy.Active.Import.Register": [
                {"timestamp": z(120), "value": 100.0, "unit": "Wh", "phase": None},
                {"timestamp": z(50), "value": 1000.0, "unit": "Wh", "phase": None},
                {"timestamp": z(40), "value": 2000.0, "unit": "Wh", "phase": None},
                {"timestamp": z(20), "value": 3000.0, "unit": "Wh", "phase": None},
            ]
        }
        windowed = (
            await viewer.get(f"/sessions/{tx}/meter-values", params={"since": at(45)})
        ).json()
        assert len(windowed) == 4
        missing = await viewer.get("/sessions/424242/meter-values")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no session 424242"}
        assert (
            await viewer.get(f"/sessions/{tx}/meter-values", params={"limit": 0})
        ).status_code == 422


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_csv_export_streams_every_value(server: RunningServer) -> None:
    tx = await recent_session(server)
    async with clients(server) as (_, viewer, anonymous):
        assert (await anonymous.get("/charge-points/CP1/meter-values.csv")).status_code == 401
        response = await viewer.get("/charge-points/CP1/meter-values.csv")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == (
            'attachment; filename="CP1-meter-values.csv"'
        )
        assert response.text.splitlines()[0] == (
            "timestamp,charge_point,connector_id,session_id,measurand,phase,location,context,"
            "unit,value,raw_value,format"
        )
        rows = parse_csv(response.text)
        assert len(rows) == 8
        assert rows[2] == {
            "timestamp": z(50),
            "charge_point": "CP1",
            "connector_id": "1",
            "session_id": str(tx),
            "measurand": "Voltage",
            "phase": "L1",
            "location": "Outlet",
            "context": "Sample.Periodic",
            "unit": "V",
            "value": "230.5",
            "raw_value": "230.5",
            "format": "Raw",
        }
        filtered = parse_csv(
            (
                await viewer.get(
                    "/charge-points/CP1/meter-values.csv",
                    params={"measurand": "power", "since": at(45)},
                )
            ).text
        )
        assert [(r["timestamp"], r["value"]) for r in filtered] == [
            (z(40), "6500.0"),
            (z(20), "0.0"),
        ]
        session = await viewer.get(f"/sessions/{tx}/meter-values.csv")
        assert session.headers["content-disposition"] == (
            f'attachment; filename="session-{tx}-meter-values.csv"'
        )
        assert len(parse_csv(session.text)) == 9
        assert (await viewer.get("/charge-points/NOPE/meter-values.csv")).status_code == 404
        assert (await viewer.get("/sessions/424242/meter-values.csv")).status_code == 404
        bad = await viewer.get(f"/sessions/{tx}/meter-values.csv", params={"until": "soon"})
        assert bad.status_code == 422


async def test_csv_export_of_many_values_in_batches(server: RunningServer) -> None:
    # More rows than one fetch batch (1,000): the export pages through a server-side cursor.
    await provision(server, "CP1")
    await add_tag(server, "TAG1")
    start_at = NOW - timedelta(minutes=55)
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        tx = await start(cp, 1, "TAG1", 0, at(56))
        entries = [
            {
                "timestamp": (start_at + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
                "sampled_value": [energy(str(i)), power(str(i % 7000))],
            }
            for i in range(1250)
        ]
        await cp.call(
            call.MeterValues(connector_id=1, transaction_id=tx, meter_value=entries),
            suppress=False,
        )
    async with clients(server) as (_, viewer, _anonymous):
        async with viewer.stream("GET", "/charge-points/CP1/meter-values.csv") as response:
            assert response.status_code == 200
            chunks = [chunk async for chunk in response.aiter_text()]
        rows = parse_csv("".join(chunks))
        assert len(rows) == 2500
        energies = [float(r["value"]) for r in rows if r["measurand"].startswith("Energy")]
        assert energies == [float(i) for i in range(1250)]
        # The JSON answer is bounded; the CSV is not.
        response = await viewer.get("/charge-points/CP1/meter-values", params={"limit": 2000})
        assert len(response.json()) == 2000
        assert response.headers["x-truncated"] == "true"


async def test_group_limited_user_cannot_read_other_meter_values(server: RunningServer) -> None:
    tx = await recent_session(server)
    token = await token_for(server, "limited", "viewer", groups={"g": ["CP2"]})
    async with client(server, token) as limited:
        for path in (
            "/charge-points/CP1/meter-values",
            "/charge-points/CP1/meter-values.csv",
        ):
            response = await limited.get(path)
            assert response.status_code == 404
            assert response.json() == {"detail": "no charge point 'CP1'"}
        for path in (f"/sessions/{tx}/meter-values", f"/sessions/{tx}/meter-values.csv"):
            response = await limited.get(path)
            assert response.status_code == 404
            assert response.json() == {"detail": f"no session {tx}"}
        assert (await limited.get("/charge-points/CP2/meter-values")).json() == []
