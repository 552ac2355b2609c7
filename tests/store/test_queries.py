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
