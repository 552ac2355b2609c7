"""History (raw / hourly / daily by span) and live statistics through the whole stack, with
values from a real OCPP client; unit conversion and register resets included (CONFORMANCE M8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apisupport import add_tag, boot, clients, energy, meter, power, provision, start, stop

from chargegrid.clock import isoformat_z
from support import RunningServer, charge_point

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def at(minutes_ago: float) -> str:
    return isoformat_z(NOW - timedelta(minutes=minutes_ago))


async def test_history_picks_resolution_and_rollups_are_reset_aware(server: RunningServer) -> None:
    await provision(server, "CPH")
    await add_tag(server, "TAGH")
    async with clients(server) as (_admin, viewer, _anonymous):
        async with charge_point(server, "CPH") as cp:
            await boot(cp)
            tx = await start(cp, 1, "TAGH", 1000, at(170))
            # Two hours of values; the register is in kWh for a while (M8), then reset.
            await meter(cp, 1, tx, at(150), [energy("1.5", "kWh"), power("7000")])
            await meter(cp, 1, tx, at(130), [energy("2.5", "kWh"), power("11000")])
            await meter(cp, 1, tx, at(90), [energy("4000"), power("9000")])
            await meter(cp, 1, tx, at(70), [energy("300"), power("3000")])  # reset
            await meter(cp, 1, tx, at(50), [energy("800"), power("5000")])
            live = (await viewer.get(f"/sessions/{tx}/live-stats")).json()
            assert live["active"] and live["energy_wh"] == 500 + 1000 + 1500 + 300 + 500
            assert live["power_w"] == 5000
            [power_stats] = [
                m for m in live["measurands"] if m["measurand"] == "Power.Active.Import"
            ]
            assert power_stats["count"] == 5 and power_stats["max"] == 11000
            cp_live = (await viewer.get("/charge-points/CPH/live-stats")).json()
            assert cp_live["connectors"][0]["power_w"] == 5000
            await stop(cp, tx, 900, at(40))
        since, until = at(180), at(0)
        hourly = (
            await viewer.get(
                "/charge-points/CPH/history",
                params={"measurand": "energy", "since": since, "until": until},
            )
        ).json()
        assert hourly["resolution"] == "raw"  # 3 h: short enough for raw values
        assert [p["value"] for p in hourly["series"][0]["points"]] == [
            1500,
            2500,
            4000,
            300,
            800,
        ]
        rolled = (
            await viewer.get(
                "/charge-points/CPH/history",
                params={
                    "measurand": "energy",
                    "since": since,
                    "until": until,
                    "resolution": "hour",
                },
            )
        ).json()
        points = rolled["series"][0]["points"]
        assert sum(p["count"] for p in points) == 5
        # Energy credited per hour adds up across the reset, never negative: 1000 + 1500 + 300
        # + 500 (the first reading has no predecessor in the series).
        assert sum(p["energy"] for p in points) == 3300
        assert all(p["energy"] >= 0 for p in points)
        month = (
            await viewer.get(
                "/charge-points/CPH/history",
                params={"measurand": "power", "since": at(60 * 24 * 30), "until": until},
            )
        ).json()
        assert month["resolution"] == "hour"
        assert sum(p["count"] for p in month["series"][0]["points"]) == 5
        assert max(p["max"] for p in month["series"][0]["points"]) == 11000
        year = (
            await viewer.get(
                "/charge-points/CPH/history",
                params={"measurand": "power", "since": at(60 * 24 * 200), "until": until},
            )
        ).json()
        assert year["resolution"] == "day"
        points = year["series"][0]["points"]
        assert sum(p["count"] for p in points) == 5
        assert sum(p["avg"] * p["count"] for p in points) == 35000
        # The session keeps its energy: the register difference summed across the reset
        # (meterStart 1000 .. 4000, reset, 300 .. meterStop 900).
        session = (await viewer.get(f"/sessions/{tx}")).json()
        assert session["energy_kwh"] == 3.9
        assert (await viewer.get("/charge-points/NOPE/history")).status_code == 404
