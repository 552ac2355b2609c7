"""Alerts through the whole stack: values from a real OCPP client trip the reference's default
rules (CONFORMANCE M7: the CALLRESULT stays ``{}``), alerts are listed and acknowledged through
the REST API (acknowledging never changes the condition's state), rules are managed by admins;
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from apisupport import add_tag, boot, client, clients, eventually, provision, start, token_for
from ocpp.v16 import call

from chargegrid.bus import channels
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
        assert alert["acknowledged"] is False
        assert (await viewer.post(f"/alerts/{alert_id}/acknowledge")).status_code == 403
        async with client(server, operator_token) as operator:
            response = await operator.post(f"/alerts/{alert_id}/acknowledge")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["state"], body["acknowledged"]) == ("resolved", True)
        assert body["acknowledged_by"] == "op" and body["acknowledged_at"] is not None
        # The deprecated state filter still finds it; "resolved" too, with or without it.
        acknowledged = (await viewer.get("/alerts", params={"state": "acknowledged"})).json()
        assert [a["id"] for a in acknowledged["items"]] == [alert_id]
        resolved = (await viewer.get("/alerts", params={"state": "resolved"})).json()
        assert [a["id"] for a in resolved["items"]] == [alert_id]
        assert (await admin.get("/alerts/999999")).status_code == 404


async def test_an_acknowledged_alert_still_out_of_range_stays_raised(server: RunningServer) -> None:
    await provision(server, "CPK")
    operator_token = await token_for(server, "op", "operator")
    events = await server.node.bus.subscribe([channels.fleet(channels.ALERTS)])
    async with (
        clients(server) as (_admin, viewer, _anonymous),
        client(server, operator_token) as operator,
        charge_point(server, "CPK") as cp,
    ):
        await boot(cp)
        await send_values(cp, None, [{"value": "90", "measurand": "Temperature"}])
        page = await eventually(
            lambda: viewer.get("/alerts", params={"charge_point": "CPK"}),
            lambda r: r.json()["total"] == 1,
        )
        alert_id = page.json()["items"][0]["id"]
        acknowledged = (await operator.post(f"/alerts/{alert_id}/acknowledge")).json()
        assert (acknowledged["state"], acknowledged["acknowledged"]) == ("raised", True)
        fetched = (await viewer.get(f"/alerts/{alert_id}")).json()
        assert (fetched["state"], fetched["acknowledged"]) == ("raised", True)
        # Still open: it is listed as such; what still needs someone no longer lists it.
        for params, ids in (
            ({"state": "open"}, [alert_id]),
            ({"state": "raised"}, [alert_id]),
            ({"state": "open", "acknowledged": "false"}, []),
            ({"state": "open", "acknowledged": "true"}, [alert_id]),
            ({"state": "resolved"}, []),
        ):
            listed = (await viewer.get("/alerts", params=params)).json()
            assert [a["id"] for a in listed["items"]] == ids, params
        # The condition goes on by itself: back in range (by the 2 degree hysteresis), resolved,
        # and still acknowledged.
        await send_values(cp, None, [{"value": "60", "measurand": "Temperature"}])
        await eventually(
            lambda: viewer.get(f"/alerts/{alert_id}"), lambda r: r.json()["state"] == "resolved"
        )
        final = (await viewer.get(f"/alerts/{alert_id}")).json()
        assert (final["state"], final["acknowledged"], final["acknowledged_by"]) == (
            "resolved",
            True,
            "op",
        )
    # Events say what happened (event) apart from the condition (state).
    received = []
    async for _channel, message in events:
        received.append((message["event"], message["state"], message["acknowledged"]))
        if len(received) == 3:
            break
    await events.close()
    assert received == [
        ("raised", "raised", False),
        ("acknowledged", "raised", True),
        ("resolved", "resolved", True),
    ]


async def test_power_reported_only_per_phase_trips_the_total_rule(server: RunningServer) -> None:
    """The default 50 kW rule has no phase: it checks the total, here the sum of L1, L2, L3."""
    await provision(server, "CP3P")
    async with clients(server) as (_admin, viewer, _anonymous), charge_point(server, "CP3P") as cp:
        await boot(cp)
        await send_values(
            cp,
            None,
            [
                {"value": "20", "measurand": "Power.Active.Import", "unit": "kW", "phase": p}
                for p in ("L1", "L2", "L3")
            ],
        )
        page = await eventually(
            lambda: viewer.get("/alerts", params={"charge_point": "CP3P"}),
            lambda r: r.json()["total"] == 1,
        )
        [alert] = page.json()["items"]
        assert alert["rule"]["name"] == "power-above-50kW"
        assert (alert["phase"], alert["value"], alert["unit"]) == (None, 60_000, "W")
        assert "L1+L2+L3" in alert["message"]
        # 16 kW per phase: 48 kW in total, 2 kW under the threshold: resolved.
        await send_values(
            cp,
            None,
            [
                {"value": "16000", "measurand": "Power.Active.Import", "phase": p}
                for p in ("L1", "L2", "L3")
            ],
        )
        await eventually(
            lambda: viewer.get("/alerts", params={"charge_point": "CP3P", "state": "resolved"}),
            lambda r: r.json()["total"] == 1,
        )
        # A meterValue per phase would never have raised it: nothing else was raised.
        assert (await viewer.get("/alerts", params={"charge_point": "CP3P"})).json()["total"] == 1


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


async def test_rule_notices_between_nodes_are_not_a_live_topic(server: RunningServer) -> None:
    """``internal.alert_rules`` carries node-to-node notices: no live stream or Python
    subscriber can ask for it, whatever it names."""
    token = await token_for(server, "watcher", "admin")
    url = f"ws://{server.host}:{server.port}/api/v1/live?token={token}"
    async with websockets.connect(url) as ws:
        for request in (
            {"type": "subscribe", "fleet": True, "topics": ["alert_rules"]},
            {"type": "subscribe", "fleet": True, "topics": [channels.INTERNAL_ALERT_RULES]},
            {"type": "subscribe", "charge_point": "internal", "topics": ["alert_rules"]},
        ):
            await ws.send(json.dumps(request))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert answer["type"] == "error" and "unknown topics" in answer["error"], request
    async with client(server, token) as api:
        sse = await api.get("/events", params={"topics": "alert_rules"})
        assert sse.status_code == 422
    with pytest.raises(ValueError, match="unknown topics"):
        await server.node.subscribe(topics=["alert_rules"])
