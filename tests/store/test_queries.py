"""The Python query API (issue 2, item 8): the reference guide's scopes over real data.

Data is produced the real way: an OCPP client talks to the running server; then the scopes are read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ocpp.v16 import call

from support import RunningServer, charge_point


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def test_scopes_follow_what_charge_points_report(server: RunningServer) -> None:
    for identity in ("CP-A", "CP-B", "CP-C"):
        await server.add_charge_point(identity)
    await server.add_id_tag("TAG1")
    await server.add_id_tag("TAG2")
    t0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    queries = server.node.queries

    async with charge_point(server, "CP-A") as a, charge_point(server, "CP-B") as b:
        for cp in (a, b):
            await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            await cp.call(
                call.StatusNotification(connector_id=0, error_code="NoError", status="Available")
            )
        await a.call(
            call.StatusNotification(connector_id=1, error_code="NoError", status="Charging")
        )
        started = await a.call(
            call.StartTransaction(
                connector_id=1, id_tag="TAG1", meter_start=100, timestamp=_iso(t0)
            )
        )
        tx = started.transaction_id
        await a.call(
            call.MeterValues(
                connector_id=1,
                transaction_id=tx,
                meter_value=[
                    {
                        "timestamp": _iso(t0 + timedelta(minutes=minute)),
                        "sampledValue": [
                            {"value": str(100 + minute * 50)},
                            {
                                "value": str(7000 + minute),
                                "measurand": "Power.Active.Import",
                                "unit": "W",
                            },
                            {"value": "231", "measurand": "Voltage", "phase": "L1", "unit": "V"},
                        ],
                    }
                    for minute in range(1, 4)
                ],
            )
        )
        done = await b.call(
            call.StartTransaction(connector_id=1, id_tag="TAG2", meter_start=0, timestamp=_iso(t0))
        )
        await b.call(
            call.StopTransaction(
                meter_stop=2000,
                timestamp=_iso(t0 + timedelta(hours=1)),
                transaction_id=done.transaction_id,
            )
        )

        assert [cp.identity for cp in await queries.connected_charge_points()] == ["CP-A", "CP-B"]
        assert [cp.identity for cp in await queries.available_charge_points()] == ["CP-A", "CP-B"]
        assert [cp.identity for cp in await queries.charging_charge_points()] == ["CP-A"]
        assert [cp.identity for cp in await queries.charge_points(connected=False)] == ["CP-C"]

        current = await queries.current_session("CP-A")
        assert current is not None and current.id == tx and current.active
        assert await queries.current_session("CP-B") is None
        assert [s.id for s in await queries.active_sessions()] == [tx]
        completed = await queries.completed_sessions()
        assert [s.id for s in completed] == [done.transaction_id]
        assert completed[0].energy_kwh == 2.0
        assert completed[0].duration_seconds(datetime.now(UTC)) == 3600.0

        power = await queries.meter_values("CP-A", measurand="power")
        assert [v.value for v in power] == [7003.0, 7002.0, 7001.0]  # newest first
        energy = await queries.meter_values("CP-A", measurand="energy", newest_first=False)
        assert [v.value for v in energy] == [150.0, 200.0, 250.0]
        assert len(await queries.meter_values(session_id=tx)) == 9
        ranged = await queries.meter_values(
            "CP-A", since=t0 + timedelta(minutes=2), until=t0 + timedelta(minutes=3)
        )
        assert {v.timestamp for v in ranged} == {t0 + timedelta(minutes=2)}
        latest = await queries.latest_meter_value("CP-A", "voltage", phase="L1")
        assert latest is not None and latest.value == 231.0 and latest.unit == "V"
        assert await queries.energy_since(t0) == 2000.0
        assert [c.connector_id for c in await queries.connectors("CP-A")] == [0, 1]


async def test_latest_value_of_a_rare_measurand_before_and_after_rollups_merge(
    server: RunningServer,
) -> None:
    """The sample index leads with (charge point, timestamp), so the latest value of a measurand
    is searched from the series' newest hourly rollup on (store/queries.py); the answer must be
    the same whether the newest values are merged into rollups yet or not, and a newer value
    without a number (signed data) still counts as the latest."""
    await server.add_charge_point("CP-R")
    t0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    queries = server.node.queries

    def values(at: datetime, soc: dict[str, str] | None) -> dict[str, object]:
        sampled: list[dict[str, str]] = [
            {"value": "7000", "measurand": "Power.Active.Import", "unit": "W"}
        ]
        if soc is not None:
            sampled.append({"measurand": "SoC", "unit": "Percent", **soc})
        return {"timestamp": _iso(at), "sampledValue": sampled}

    async with charge_point(server, "CP-R") as cp:
        await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        # SoC once at 06:00, then five hours of power only.
        await cp.call(
            call.MeterValues(
                connector_id=1,
                meter_value=[values(t0, {"value": "40"})]
                + [values(t0 + timedelta(minutes=m), None) for m in range(10, 300, 10)],
            )
        )
        latest = await queries.latest_meter_value("CP-R", "soc")
        assert latest is not None and latest.value == 40.0 and latest.timestamp == t0
        await server.node.rollups.settle(server.node.writer)
        latest = await queries.latest_meter_value("CP-R", "soc")
        assert latest is not None and latest.value == 40.0

        # A newer SoC, not merged into rollups yet: newer than the rollup's hour, so found.
        later = t0 + timedelta(hours=4, minutes=5)
        await cp.call(
            call.MeterValues(connector_id=1, meter_value=[values(later, {"value": "80"})])
        )
        latest = await queries.latest_meter_value("CP-R", "soc")
        assert latest is not None and latest.value == 80.0 and latest.timestamp == later
        # An older one arriving late (an offline queue) does not displace it.
        await cp.call(
            call.MeterValues(
                connector_id=1, meter_value=[values(t0 + timedelta(hours=1), {"value": "55"})]
            )
        )
        await server.node.rollups.settle(server.node.writer)
        latest = await queries.latest_meter_value("CP-R", "soc")
        assert latest is not None and latest.value == 80.0

        # Signed data (no number, so no rollup) newer than every numeric SoC is the latest.
        signed = later + timedelta(minutes=1)
        await cp.call(
            call.MeterValues(
                connector_id=1,
                meter_value=[values(signed, {"value": "c2lnbmVk", "format": "SignedData"})],
            )
        )
        latest = await queries.latest_meter_value("CP-R", "soc")
        assert latest is not None and latest.timestamp == signed and latest.value is None
        assert await queries.latest_meter_value("CP-R", "temperature") is None
