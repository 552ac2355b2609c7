"""REST: charge points list/detail/provisioning/rotation and their sub-resources, through the real
app on SQLite and PostgreSQL, with data produced by real OCPP clients."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import websockets
from apisupport import (
    add_tag,
    boot,
    client,
    clients,
    energy,
    eventually,
    meter,
    provision,
    send,
    start,
    status,
    token_for,
)
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from chargegrid.clock import isoformat_z, parse_timestamp
from support import RecordingChargePoint, RunningServer, charge_point

KEY = "0123456789abcdef0123"
NEW_KEY = "fedcba9876543210fedc"


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


class ObedientChargePoint(RecordingChargePoint):
    """Answers the CSMS's calls the way a well-behaved charger does."""

    answer = "Accepted"

    @on(Action.change_configuration)
    async def on_change_configuration(self, key: str, value: str) -> Any:
        return call_result.ChangeConfiguration(status=self.answer)

    @on(Action.get_configuration)
    async def on_get_configuration(self, key: list[str] | None = None) -> Any:
        return call_result.GetConfiguration(
            configuration_key=[
                {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
                {"key": "NumberOfConnectors", "readonly": True, "value": "2"},
            ]
        )

    @on(Action.reserve_now)
    async def on_reserve_now(self, **kwargs: Any) -> Any:
        return call_result.ReserveNow(status="Accepted")

    @on(Action.set_charging_profile)
    async def on_set_charging_profile(self, **kwargs: Any) -> Any:
        return call_result.SetChargingProfile(status="Accepted")


class RefusingChargePoint(ObedientChargePoint):
    answer = "Rejected"


async def test_auth_required_and_roles(server: RunningServer) -> None:
    await provision(server, "CP1")
    async with clients(server) as (admin, viewer, anonymous):
        for method, path in [
            ("GET", "/charge-points"),
            ("GET", "/charge-points/CP1"),
            ("GET", "/charge-points/CP1/connectors"),
            ("GET", "/charge-points/CP1/configuration"),
            ("GET", "/charge-points/CP1/reservations"),
            ("GET", "/charge-points/CP1/charging-profiles"),
            ("POST", "/charge-points"),
            ("DELETE", "/charge-points/CP1"),
        ]:
            response = await anonymous.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"] == "Bearer"
        forbidden = [
            await viewer.post("/charge-points", json={"identity": "CPX"}),
            await viewer.patch("/charge-points/CP1", json={"registration_status": "Pending"}),
            await viewer.delete("/charge-points/CP1"),
            await viewer.post("/charge-points/CP1/rotate-auth-key", json={"auth_key": NEW_KEY}),
        ]
        for response in forbidden:
            assert response.status_code == 403
            assert response.json() == {"detail": "this needs the admin role or higher"}
        assert (await viewer.get("/charge-points")).status_code == 200
        # nothing changed
        assert (await admin.get("/charge-points/CP1")).json()["registration_status"] == "Accepted"


async def test_list_filters_search_pagination_and_current_session(server: RunningServer) -> None:
    async with clients(server) as (admin, viewer, _):
        for identity in ("CP1", "CP2"):
            response = await admin.post("/charge-points", json={"identity": identity})
            assert response.status_code == 201, response.text
        await provision(server, "CP3")
        await add_tag(server, "TAG1")
        async with (
            charge_point(server, "CP1") as cp1,
            charge_point(server, "CP2") as cp2,
        ):
            await boot(cp1, vendor="Vend", model="Mod")
            await status(cp1, 0, "Available")
            await status(cp1, 1, "Available")
            await boot(cp2, vendor="Other", model="Wallbox")
            await status(cp2, 0, "Available")
            await status(cp2, 1, "Charging")
            started = ago(120)
            tx = await start(cp2, 1, "TAG1", 1000, started)
            await meter(cp2, 1, tx, ago(60), [energy("1500")])
            await meter(cp2, 1, tx, ago(30), [energy("3500")])

            async def identities(**params: Any) -> tuple[list[str], int]:
                body = (await viewer.get("/charge-points", params=params)).json()
                return [item["identity"] for item in body["items"]], body["total"]

            await eventually(
                lambda: identities(connected="true"), lambda r: r == (["CP1", "CP2"], 2)
            )
            assert await identities() == (["CP1", "CP2", "CP3"], 3)
            assert await identities(connected="true") == (["CP1", "CP2"], 2)
            assert await identities(connected="false") == (["CP3"], 1)
            assert await identities(available="true") == (["CP1", "CP2"], 2)
            assert await identities(available="false") == (["CP3"], 1)
            assert await identities(charging="true") == (["CP2"], 1)
            assert await identities(charging="false") == (["CP1", "CP3"], 2)
            assert await identities(status="Available") == (["CP1", "CP2"], 2)
            assert await identities(q="oth") == (["CP2"], 1)  # vendor, any case
            assert await identities(q="WALL") == (["CP2"], 1)  # model
            assert await identities(q="cp3") == (["CP3"], 1)  # identity
            assert await identities(q="%") == ([], 0)  # a LIKE wildcard is taken literally
            assert await identities(limit=2) == (["CP1", "CP2"], 3)
            assert await identities(limit=2, offset=2) == (["CP3"], 3)
            assert await identities(limit=1, offset=1, connected="true") == (["CP2"], 2)

            body = (await viewer.get("/charge-points", params={"q": "CP2"})).json()
            item = body["items"][0]
            assert item["current_session"] == {
                "id": tx,
                "connector_id": 1,
                "id_tag": "TAG1",
                "started_at": item["current_session"]["started_at"],
                "energy_kwh": 2.5,  # 3500 - 1000 Wh
            }
            assert item["current_session"]["started_at"] == isoformat_z(parse_timestamp(started))
            assert {k: item[k] for k in item if k not in ("last_seen_at", "current_session")} == {
                "identity": "CP2",
                "connected": True,
                "status": "Available",
                "error_code": "NoError",
                "registration_status": "Accepted",
                "security_profile": 0,
                "vendor": "Other",
                "model": "Wallbox",
                "firmware_version": "1.2.3",
                "last_heartbeat_at": None,
            }
            assert item["last_seen_at"].endswith("Z")
            cp1_item = (await viewer.get("/charge-points", params={"q": "CP1"})).json()["items"][0]
            assert cp1_item["current_session"] is None

        for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"connected": "maybe"}):
            response = await viewer.get("/charge-points", params=bad)
            assert response.status_code == 422, bad


async def test_detail(server: RunningServer) -> None:
    await provision(server, "CP1")
    async with clients(server) as (_, viewer, _anonymous):
        async with charge_point(server, "CP1") as cp:
            await boot(cp)
            await status(cp, 0, "Available")
            await send(
                cp,
                call.StatusNotification(
                    connector_id=1,
                    error_code="OtherError",
                    status="Faulted",
                    info="lock stuck",
                    vendor_id="ACME",
                    vendor_error_code="E42",
                    timestamp="2024-05-01T10:00:00Z",
                ),
            )
            await send(cp, call.Heartbeat())
            await send(cp, call.FirmwareStatusNotification(status="Downloading"))

            async def detail() -> Any:
                return (await viewer.get("/charge-points/CP1")).json()

            body = await eventually(detail, lambda b: b["last_heartbeat_at"] is not None)
            assert body["identity"] == "CP1"
            assert body["connected"] is True
            assert body["live"] is True
            assert body["vendor"] == "Vend"
            assert body["model"] == "Mod"
            assert body["serial_number"] == "SN-1"
            assert body["firmware_version"] == "1.2.3"
            assert body["registration_status"] == "Accepted"
            assert body["has_auth_key"] is False
            assert body["firmware_status"] == "Downloading"
            assert body["firmware_status_at"].endswith("Z")
            assert body["diagnostics_status"] is None
            assert body["local_list_version"] is None
            assert body["last_heartbeat_at"].endswith("Z")
            assert body["last_boot_at"].endswith("Z")
            assert body["current_session"] is None
            assert [{k: c[k] for k in c if k != "updated_at"} for c in body["connectors"]] == [
                {
                    "connector_id": 0,
                    "status": "Available",
                    "error_code": "NoError",
                    "info": None,
                    "vendor_id": None,
                    "vendor_error_code": None,
                    "status_at": None,
                },
                {
                    "connector_id": 1,
                    "status": "Faulted",
                    "error_code": "OtherError",
                    "info": "lock stuck",
                    "vendor_id": "ACME",
                    "vendor_error_code": "E42",
                    "status_at": "2024-05-01T10:00:00.000Z",
                },
            ]
            connectors = (await viewer.get("/charge-points/CP1/connectors")).json()
            assert connectors == body["connectors"]

            missing = await viewer.get("/charge-points/NOPE")
            assert missing.status_code == 404
            assert missing.json() == {"detail": "no charge point 'NOPE'"}

        body = await eventually(detail, lambda b: b["connected"] is False)
        assert body["connected"] is False
        assert body["live"] is False
        assert body["disconnected_at"].endswith("Z")


async def test_provision_update_delete(server: RunningServer) -> None:
    async with clients(server) as (admin, viewer, _):
        response = await admin.post(
            "/charge-points",
            json={
                "identity": "CP-A",
                "auth_key": KEY,
                "security_profile": 1,
                "registration_status": "Pending",
            },
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["identity"] == "CP-A"
        assert body["security_profile"] == 1
        assert body["registration_status"] == "Pending"
        assert body["has_auth_key"] is True
        assert body["connected"] is False
        assert body["connectors"] == []
        assert "auth_key" not in body and KEY not in response.text
        stored = await server.scalar(
            "SELECT auth_key_hash FROM charge_points WHERE identity='CP-A'"
        )
        assert stored.startswith("pbkdf2_sha256$") and KEY not in stored

        duplicate = await admin.post("/charge-points", json={"identity": "CP-A"})
        assert duplicate.status_code == 409
        assert duplicate.json() == {"detail": "charge point 'CP-A' already exists"}

        bad_inputs = [
            ({"identity": "CP-B", "security_profile": 1}, "needs an auth key"),
            ({"identity": "CP-B", "auth_key": "short", "security_profile": 1}, "16 to 40"),
            ({"identity": "CP-B", "security_profile": 7}, "security profile must be one of"),
            ({"identity": "CP-B", "registration_status": "Maybe"}, "registration status must"),
            ({"identity": "a/b"}, "invalid charge point identity"),
            ({"identity": ""}, "invalid charge point identity"),
        ]
        for payload, message in bad_inputs:
            response = await admin.post("/charge-points", json=payload)
            assert response.status_code == 422, payload
            assert message in response.json()["detail"], response.json()
        missing_identity = await admin.post("/charge-points", json={})
        assert missing_identity.status_code == 422
        assert (await viewer.get("/charge-points")).json()["total"] == 1

        response = await admin.patch(
            "/charge-points/CP-A", json={"registration_status": "Accepted", "security_profile": 0}
        )
        assert response.status_code == 200, response.text
        assert response.json()["registration_status"] == "Accepted"
        assert response.json()["security_profile"] == 0
        bad = await admin.patch("/charge-points/CP-A", json={"registration_status": "Nope"})
        assert bad.status_code == 422
        assert "registration status must be one of Accepted, Pending, Rejected" in bad.text
        bad = await admin.patch("/charge-points/CP-A", json={"auth_key": "x" * 41})
        assert bad.status_code == 422
        assert (await admin.patch("/charge-points/NOPE", json={})).status_code == 404

        # Direct key set (onboarding): the charge point must then connect with it.
        response = await admin.patch(
            "/charge-points/CP-A", json={"auth_key": NEW_KEY, "security_profile": 1}
        )
        assert response.status_code == 200
        async with charge_point(server, "CP-A", auth_key=NEW_KEY) as cp:
            await boot(cp)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with charge_point(server, "CP-A", auth_key=KEY):
                pass
        assert refused.value.response.status_code == 401

        assert (await admin.delete("/charge-points/CP-A")).status_code == 204
        assert (await viewer.get("/charge-points/CP-A")).status_code == 404
        assert (await admin.delete("/charge-points/CP-A")).status_code == 404
        assert await server.scalar("SELECT count(*) FROM charge_points") == 0


async def test_delete_closes_a_connected_charge_point(server: RunningServer) -> None:
    await provision(server, "CP1")
    async with clients(server) as (admin, _, _anonymous), charge_point(server, "CP1") as cp:
        await boot(cp)
        assert (await admin.delete("/charge-points/CP1")).status_code == 204
        await asyncio.wait_for(cp._connection.wait_closed(), 5)
        assert cp._connection.close_code == 1000
        assert cp._connection.close_reason == "removed"
        assert "CP1" not in server.node.registry


async def test_rotate_auth_key_switches_only_on_accepted(server: RunningServer) -> None:
    await provision(server, "CP1", auth_key=KEY, security_profile=1)
    async with clients(server) as (admin, _, _anonymous):
        # Not connected: 409, nothing sent.
        response = await admin.post(
            "/charge-points/CP1/rotate-auth-key", json={"auth_key": NEW_KEY}
        )
        assert response.status_code == 409
        assert response.json() == {"detail": "CP1 is not connected"}

        async with charge_point(server, "CP1", auth_key=KEY, cls=RefusingChargePoint) as cp:
            await boot(cp)
            response = await admin.post(
                "/charge-points/CP1/rotate-auth-key", json={"auth_key": NEW_KEY}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "rejected"
            assert body["action"] == "ChangeConfiguration"
            assert body["requested_by"] == "admin"
            assert NEW_KEY not in response.text  # the key is masked in the record
        # Rejected: the old key still works, the new one does not.
        async with charge_point(server, "CP1", auth_key=KEY, cls=ObedientChargePoint) as cp:
            await boot(cp)
            short = await admin.post("/charge-points/CP1/rotate-auth-key", json={"auth_key": "k"})
            assert short.status_code == 422
            assert short.json() == {"detail": "auth key must be 16 to 40 characters"}
            response = await admin.post(
                "/charge-points/CP1/rotate-auth-key", json={"auth_key": NEW_KEY}
            )
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "accepted"
        async with charge_point(server, "CP1", auth_key=NEW_KEY) as cp:
            await boot(cp)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with charge_point(server, "CP1", auth_key=KEY):
                pass
        assert refused.value.response.status_code == 401
        configuration = (await admin.get("/charge-points/CP1/configuration")).json()
        assert configuration == []  # AuthorizationKey is a secret and never kept


async def test_configuration_reservations_profiles(server: RunningServer) -> None:
    await provision(server, "CP1")
    async with clients(server) as (_, viewer, _anonymous):
        async with charge_point(server, "CP1", cls=ObedientChargePoint) as cp:
            await boot(cp)
            commands = server.node.commands
            assert (await commands.perform_now("CP1", "GetConfiguration", {})).status == "accepted"
            operation = await commands.perform_now(
                "CP1",
                "ReserveNow",
                {
                    "connectorId": 1,
                    "expiryDate": "2030-01-01T00:00:00Z",
                    "idTag": "TAG1",
                    "reservationId": 7,
                },
            )
            assert operation.status == "accepted"
            profile = {
                "chargingProfileId": 3,
                "stackLevel": 1,
                "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {
                    "chargingRateUnit": "W",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7000.0}],
                },
            }
            set_profile = await commands.perform_now(
                "CP1", "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile}
            )
            assert set_profile.status == "accepted"

        configuration = (await viewer.get("/charge-points/CP1/configuration")).json()
        assert [{k: e[k] for k in ("key", "value", "readonly")} for e in configuration] == [
            {"key": "HeartbeatInterval", "value": "300", "readonly": False},
            {"key": "NumberOfConnectors", "value": "2", "readonly": True},
        ]
        assert all(e["updated_at"].endswith("Z") for e in configuration)

        reservations = (await viewer.get("/charge-points/CP1/reservations")).json()
        assert len(reservations) == 1
        reservation = reservations[0]
        assert {k: reservation[k] for k in reservation if not k.endswith("_at")} == {
            "id": 7,
            "connector_id": 1,
            "id_tag": "TAG1",
            "parent_id_tag": None,
            "expiry_date": "2030-01-01T00:00:00.000Z",
            "status": "Accepted",
            "operation_id": operation.id,
        }
        assert (
            await viewer.get("/charge-points/CP1/reservations", params={"status": "cancelled"})
        ).json() == []

        profiles = (await viewer.get("/charge-points/CP1/charging-profiles")).json()
        assert len(profiles) == 1
        assert {k: profiles[0][k] for k in profiles[0] if not k.endswith("_at")} == {
            "charging_profile_id": 3,
            "connector_id": 1,
            "stack_level": 1,
            "purpose": "TxDefaultProfile",
            "profile": profile,
            "status": "installed",
            "operation_id": set_profile.id,
        }


async def test_group_limited_user_sees_only_its_charge_points(server: RunningServer) -> None:
    for identity in ("CP1", "CP2", "CP3"):
        await provision(server, identity)
    token = await token_for(server, "limited", "admin", groups={"north": ["CP1", "CP3"]})
    async with client(server, token) as limited:
        body = (await limited.get("/charge-points")).json()
        assert [i["identity"] for i in body["items"]] == ["CP1", "CP3"]
        assert body["total"] == 2
        assert (await limited.get("/charge-points/CP1")).status_code == 200
        for method, path, payload in [
            ("GET", "/charge-points/CP2", None),
            ("GET", "/charge-points/CP2/connectors", None),
            ("GET", "/charge-points/CP2/configuration", None),
            ("GET", "/charge-points/CP2/reservations", None),
            ("GET", "/charge-points/CP2/charging-profiles", None),
            ("PATCH", "/charge-points/CP2", {"registration_status": "Rejected"}),
            ("DELETE", "/charge-points/CP2", None),
            ("POST", "/charge-points/CP2/rotate-auth-key", {"auth_key": NEW_KEY}),
        ]:
            response = await limited.request(method, path, json=payload)
            assert response.status_code == 404, (method, path)
            assert response.json() == {"detail": "no charge point 'CP2'"}
    assert await server.scalar("SELECT count(*) FROM charge_points") == 3
    assert (
        await server.scalar("SELECT registration_status FROM charge_points WHERE identity='CP2'")
        == "Accepted"
    )


async def test_openapi_documents_the_resources(server: RunningServer) -> None:
    async with client(server) as anonymous:
        spec = (await anonymous.get(server.http_url + "/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/api/v1/charge-points",
        "/api/v1/charge-points/{identity}",
        "/api/v1/charge-points/{identity}/rotate-auth-key",
        "/api/v1/sessions",
        "/api/v1/sessions/{session_id}",
        "/api/v1/charge-points/{identity}/meter-values",
        "/api/v1/charge-points/{identity}/meter-values.csv",
        "/api/v1/id-tags",
        "/api/v1/id-tags/import",
        "/api/v1/stats",
        "/api/v1/charge-points/{identity}/events",
    ):
        assert path in paths, path
    schema = paths["/api/v1/charge-points/{identity}"]["get"]["responses"]["200"]["content"]
    assert schema["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChargePointDetail"
    }
    assert "ChargePointDetail" in spec["components"]["schemas"]
