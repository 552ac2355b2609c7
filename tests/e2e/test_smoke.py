"""A first end-to-end pass through a charge point's life (details in the per-table tests)."""

from __future__ import annotations

from ocpp.v16 import call

from support import RunningServer, charge_point, now_iso


async def test_boot_start_meter_stop(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    async with charge_point(server, "CP1") as cp:
        boot = await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        assert boot.status == "Accepted"
        start = await cp.call(
            call.StartTransaction(
                connector_id=1, id_tag="TAG1", meter_start=1000, timestamp=now_iso()
            )
        )
        assert start.id_tag_info["status"] == "Accepted"
        await cp.call(
            call.MeterValues(
                connector_id=1,
                transaction_id=start.transaction_id,
                meter_value=[
                    {"timestamp": now_iso(), "sampledValue": [{"value": "1.5", "unit": "kWh"}]}
                ],
            )
        )
        await cp.call(
            call.StopTransaction(
                meter_stop=2500, timestamp=now_iso(), transaction_id=start.transaction_id
            )
        )
    assert await server.scalar("SELECT energy_wh FROM transactions") == 1500.0
    assert await server.scalar("SELECT value FROM meter_values") == 1500.0
