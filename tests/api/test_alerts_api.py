"""Alerts through the whole stack: values from a real OCPP client trip the reference's default
rules (CONFORMANCE M7: the CALLRESULT stays ``{}``), alerts are listed and acknowledged through
the REST API, rules are managed by admins; on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from apisupport import add_tag, boot, client, clients, eventually, provision, start, token_for
from ocpp.v16 import call

from support import RunningServer, charge_point, now_iso


async def send_values(cp: Any, tx: int | None, samples: list[dict[str, Any]]) -> Any:
    return await cp.call(
        call.MeterValues(
            connector_id=1,
            transaction_id=tx,
            meter_value=[{"timestamp": now_iso(), "sampled_value": samples}],
        ),
        suppress=False,
    )


async def test_default_rules_raise_resolve_and_acknowledge(server: RunningServer) -> None:
    await provision(server, "CPA")
    await add_tag(server, "TAG1")
    operator_token = await token_for(server, "op", "operator")
    async with clients(server) as (admin, viewer, _anonymous):
        rules = (await viewer.get("/alert-rules")).json()
        assert {r["name"] for r in rules} >= {
            "power-above-50kW",
            "temperature-outside-range",
            "voltage-outside-range",
            "current-above-80A",
        }
        async with charge_point(server, "CPA") as cp:
            await boot(cp)
            tx = await start(cp, 1, "TAG1", 0, now_iso())
            # 75 kW (sent in kW: normalised to W first) and 245 V: one alert, for power.
            result = await send_values(
                cp,
                tx,
                [
                    {"value": "75", "measurand": "Power.Active.Import", "unit": "kW"},
                    {"value": "245", "measurand": "Voltage", "unit": "V", "phase": "L1"},
                ],
            )
            assert result is not None  # a CALLRESULT, not a CALLERROR (M7)
            page = await eventually(
                lambda: viewer.get("/alerts", params={"state": "open"}),
                lambda r: r.json()["total"] == 1,
            )
            [alert] = page.json()["items"]
            assert alert["charge_point"] == "CPA" and alert["state"] == "raised"
            assert alert["value"] == 75_000 and alert["unit"] == "W"
            assert alert["rule"]["name"] == "power-above-50kW" and alert["session_id"] == tx
            # Back in range by more than the hysteresis: resolved.
            await send_values(cp, tx, [{"value": "7000", "measurand": "Power.Active.Import"}])
            await eventually(
                lambda: viewer.get("/alerts", params={"state": "resolved"}),
                lambda r: r.json()["total"] == 1,
            )
            # Temperature rule (outside -10..70 Celsius, "Celcius" spelling accepted, M5).
            await send_values(
                cp, tx, [{"value": "85", "measurand": "Temperature", "unit": "Celcius"}]
            )
            open_ = await eventually(
                lambda: viewer.get("/alerts", params={"state": "open", "charge_point": "CPA"}),
                lambda r: r.json()["total"] == 1,
            )
            assert open_.json()["items"][0]["severity"] == "critical"
        # Acknowledge: viewers may not, operators may.
        alert_id = alert["id"]
        assert (await viewer.post(f"/alerts/{alert_id}/acknowledge")).status_code == 403
        async with client(server, operator_token) as operator:
            response = await operator.post(f"/alerts/{alert_id}/acknowledge")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "acknowledged"
        assert response.json()["acknowledged_by"] == "op"
        acknowledged = (await viewer.get("/alerts", params={"state": "acknowledged"})).json()
        assert [a["id"] for a in acknowledged["items"]] == [alert_id]
        assert (await admin.get("/alerts/999999")).status_code == 404


async def test_rule_crud_is_admin_only_and_takes_effect(server: RunningServer) -> None:
    await provision(server, "CPB")
    async with clients(server) as (admin, viewer, anonymous):
        rule = {
            "name": "soc-low",
            "measurand": "SoC",
            "comparison": "below",
            "threshold": 10,
            "severity": "info",
            "charge_points": ["CPB"],
        }
        assert (await anonymous.post("/alert-rules", json=rule)).status_code == 401
        assert (await viewer.post("/alert-rules", json=rule)).status_code == 403
        bad = await admin.post("/alert-rules", json={**rule, "threshold": None})
        assert bad.status_code == 422
        created = await admin.post("/alert-rules", json=rule)
        assert created.status_code == 201, created.text
        rule_id = created.json()["id"]
        assert (await admin.post("/alert-rules", json=rule)).status_code == 409
        async with charge_point(server, "CPB") as cp:
            await boot(cp)
            await send_values(cp, None, [{"value": "5", "measurand": "SoC", "unit": "Percent"}])
            page = await eventually(
                lambda: viewer.get("/alerts", params={"charge_point": "CPB"}),
                lambda r: r.json()["total"] == 1,
            )
            assert page.json()["items"][0]["rule"]["name"] == "soc-low"
        changed = await admin.put(f"/alert-rules/{rule_id}", json={**rule, "threshold": 3})
        assert changed.status_code == 200 and changed.json()["threshold"] == 3
        assert (await admin.delete(f"/alert-rules/{rule_id}")).status_code == 204
        assert (await admin.get(f"/alert-rules/{rule_id}")).status_code == 404
        # The alert outlives its rule.
        assert (await viewer.get("/alerts")).json()["total"] == 1
