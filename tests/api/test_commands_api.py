"""Remote control through the REST API, end to end: every CSMS-initiated action against the
``ocpp`` package's ChargePoint over 127.0.0.1, on SQLite and PostgreSQL (issue 3, CONFORMANCE R11,
L2, L3, H8 and the CSMS-initiated section)."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import httpx
import pytest
import websockets
from apisupport import eventually
from cmdsupport import (
    ALL_ACTIONS,
    ANSWERS,
    REFUSABLE_ACTIONS,
    ScriptedChargePoint,
    api,
    boot,
    make_user,
    poll_operation,
    request_payload,
)
from ocpp.v16 import call

from chargegrid.commands.catalog import ACTION_BY_SLUG, slug
from chargegrid.config import Settings
from support import RunningServer, charge_point, running_server


def command_url(action: str, identity: str = "CP1") -> str:
    return f"/api/v1/charge-points/{identity}/commands/{slug(action)}"


async def operator(server: RunningServer) -> str:
    return await make_user(server, "ops", "operator")


async def send(
    client: httpx.AsyncClient, action: str, payload: dict[str, Any] | None = None, **kw: Any
) -> httpx.Response:
    body = request_payload(action) if payload is None else payload
    return await client.post(command_url(action), json=body, params={"wait": "true"}, **kw)


async def operation_count(server: RunningServer) -> int:
    return int(await server.scalar("SELECT count(*) FROM operations"))


def test_catalog_covers_core_and_security_actions() -> None:
    """Every CSMS-initiated 1.6 action, with the Security Whitepaper's, has a slug and a payload."""
    expected = {
        "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache",
        "ClearChargingProfile", "DataTransfer", "GetCompositeSchedule", "GetConfiguration",
        "GetDiagnostics", "GetLocalListVersion", "RemoteStartTransaction",
        "RemoteStopTransaction", "ReserveNow", "Reset", "SendLocalList", "SetChargingProfile",
        "TriggerMessage", "UnlockConnector", "UpdateFirmware",
        "ExtendedTriggerMessage", "GetLog", "SignedUpdateFirmware", "InstallCertificate",
        "GetInstalledCertificateIds", "DeleteCertificate", "CertificateSigned",
    }  # fmt: skip
    assert set(ACTION_BY_SLUG.values()) == expected
    assert ACTION_BY_SLUG["remote-start-transaction"] == "RemoteStartTransaction"
    assert set(ANSWERS) == expected


# --- Accepted, with effects -----------------------------------------------------------------------


async def check_effect(server: RunningServer, action: str) -> None:
    """What an Accepted answer to ``action`` must have changed in the database."""
    cp = await server.rows("SELECT * FROM charge_points WHERE identity = 'CP1'")
    if action == "GetConfiguration":
        rows = await server.rows("SELECT key, value, readonly FROM configuration ORDER BY key")
        assert [(r["key"], r["value"], bool(r["readonly"])) for r in rows] == [
            ("ChargePointModel", "M1", True),
            ("HeartbeatInterval", "300", False),
        ]
    elif action == "ChangeConfiguration":
        rows = await server.rows("SELECT key, value FROM configuration")
        assert [(r["key"], r["value"]) for r in rows] == [("HeartbeatInterval", "120")]
    elif action == "ReserveNow":
        rows = await server.rows("SELECT * FROM reservations")
        assert len(rows) == 1
        assert (rows[0]["id"], rows[0]["connector_id"], rows[0]["id_tag"]) == (7, 1, "TAG1")
        assert rows[0]["status"] == "Accepted"
    elif action == "CancelReservation":
        rows = await server.rows("SELECT id, status FROM reservations")
        assert [(r["id"], r["status"]) for r in rows] == [(7, "cancelled")]
    elif action == "SetChargingProfile":
        rows = await server.rows("SELECT * FROM charging_profiles")
        assert len(rows) == 1
        assert rows[0]["charging_profile_id"] == 11
        assert (rows[0]["status"], rows[0]["stack_level"]) == ("installed", 1)
        assert rows[0]["purpose"] == "TxDefaultProfile"
    elif action == "ClearChargingProfile":
        rows = await server.rows("SELECT charging_profile_id, status FROM charging_profiles")
        assert [(r["charging_profile_id"], r["status"]) for r in rows] == [(11, "cleared")]
    elif action == "SendLocalList":
        assert cp[0]["local_list_version"] == 5
    elif action == "GetLocalListVersion":
        assert cp[0]["local_list_version"] == 9
    elif action in ("UpdateFirmware", "SignedUpdateFirmware"):
        assert cp[0]["firmware_status"] == "Requested"
        assert cp[0]["firmware_status_at"] is not None
    elif action in ("GetDiagnostics", "GetLog"):
        assert cp[0]["diagnostics_status"] == "Requested"
        assert cp[0]["diagnostics_status_at"] is not None


# What has to exist before an action can have its effect.
PREREQUISITE = {"CancelReservation": "ReserveNow", "ClearChargingProfile": "SetChargingProfile"}


@pytest.mark.parametrize("action", ALL_ACTIONS)
async def test_action_accepted_end_to_end(server: RunningServer, action: str) -> None:
    """Each action: sent as validated, answered Accepted, response stored, effect visible."""
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        if action in PREREQUISITE:
            first = await send(client, PREREQUISITE[action])
            assert first.json()["status"] == "accepted", first.text
        response = await send(client, action)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "accepted", body
        assert body["action"] == action
        assert body["charge_point"] == "CP1"
        assert body["request"] == request_payload(action)
        assert body["response"] == ANSWERS[action][0]
        assert body["error_code"] is None
        assert body["requested_by"] == "ops"
        assert body["sent_at"] and body["completed_at"]
        # The charge point got exactly this CALL.
        assert cp.calls[-1][0] == action
        assert cp.calls[-1][1] == body["request"]
        # Recorded: GET shows the same.
        again = await client.get(f"/api/v1/operations/{body['id']}")
        assert again.status_code == 200
        assert again.json() == body
    await check_effect(server, action)


async def test_rejected_answers_are_recorded_and_change_nothing(server: RunningServer) -> None:
    """Every action with a status, answered with a refusal: status "rejected", no effect."""
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        cp.default_mode = "reject"
        for action in REFUSABLE_ACTIONS:
            response = await send(client, action)
            assert response.status_code == 200, (action, response.text)
            body = response.json()
            assert (action, body["status"]) == (action, "rejected")
            assert body["response"] == ANSWERS[action][1]
    assert await server.rows("SELECT * FROM configuration") == []
    assert await server.rows("SELECT * FROM charging_profiles") == []
    assert (
        await server.scalar("SELECT local_list_version FROM charge_points WHERE identity = 'CP1'")
        is None
    )
    assert await server.scalar("SELECT firmware_status FROM charge_points") is None
    assert await server.scalar("SELECT diagnostics_status FROM charge_points") is None
    # A refused reservation is tracked with the charge point's answer, never as Accepted.
    assert [r["status"] for r in await server.rows("SELECT status FROM reservations")] == [
        "Occupied"
    ]
    statuses = await server.rows("SELECT action, status FROM operations")
    assert {r["action"] for r in statuses} == set(REFUSABLE_ACTIONS)
    assert {r["status"] for r in statuses} == {"rejected"}


async def test_call_error_is_recorded_with_its_code(server: RunningServer) -> None:
    """A CALLERROR from the charge point: status "error", error code and description recorded."""
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        cp.default_mode = "error"
        for action in ALL_ACTIONS:
            response = await send(client, action)
            assert response.status_code == 200, (action, response.text)
            body = response.json()
            assert (action, body["status"], body["error_code"]) == (action, "error", "NotSupported")
            assert body["error_description"] == f"{action} is not supported here"
            assert body["response"] is None
    rows = await server.rows("SELECT status, error_code FROM operations")
    assert len(rows) == len(ALL_ACTIONS)
    assert {(r["status"], r["error_code"]) for r in rows} == {("error", "NotSupported")}
    assert await server.rows("SELECT * FROM configuration") == []


async def test_timeout_gives_504_and_stays_recorded(settings: Settings) -> None:
    """No answer within call_timeout: HTTP 504, the operation recorded as "timeout"."""
    fast = settings.model_copy(update={"call_timeout": 0.5})
    async with running_server(fast) as server:
        await server.add_charge_point("CP1")
        token = await operator(server)
        async with (
            charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
            api(server, token) as client,
        ):
            cp.default_mode = "sleep"
            cp.delay = 3.0
            for action in ALL_ACTIONS:
                response = await send(client, action)
                assert response.status_code == 504, (action, response.text)
                body = response.json()
                assert (body["status"], body["error_code"]) == ("timeout", "Timeout")
                again = await client.get(f"/api/v1/operations/{body['id']}")
                assert again.status_code == 200
                assert again.json()["status"] == "timeout"
                assert again.json()["response"] is None
            history = await client.get("/api/v1/charge-points/CP1/operations?limit=500")
            assert [op["status"] for op in history.json()] == ["timeout"] * len(ALL_ACTIONS)


async def test_not_connected_is_409(server: RunningServer) -> None:
    """A known charge point that is not connected: 409 with a clear message, nothing sent."""
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with api(server, token) as client:
        for action in ALL_ACTIONS:
            response = await send(client, action)
            assert response.status_code == 409, (action, response.text)
            assert response.json()["detail"] == "CP1 is not connected"
        unknown = await client.post(
            "/api/v1/charge-points/NOPE/commands/reset", json={"type": "Soft"}
        )
        assert unknown.status_code == 404
    assert await operation_count(server) == 0


# --- without wait, Prefer: wait ------------------------------------------------------------------


async def test_without_wait_202_then_poll(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        cp.mode["GetConfiguration"] = "hold"
        response = await client.post(command_url("GetConfiguration"), json={})
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] in ("pending", "sent")
        assert body["response"] is None
        await cp.wait_for_calls(1)
        in_flight = await client.get(f"/api/v1/operations/{body['id']}")
        assert in_flight.json()["status"] == "sent"
        cp.release.set()
        final = await poll_operation(client, body["id"])
        assert final["status"] == "accepted"
        assert final["response"] == ANSWERS["GetConfiguration"][0]


async def test_prefer_wait_header_waits(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint),
        api(server, token) as client,
    ):
        response = await client.post(
            command_url("Reset"), json={"type": "Hard"}, headers={"Prefer": "wait"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"
        assert response.json()["response"] == {"status": "Accepted"}
        # Without either, it does not wait.
        later = await client.post(command_url("Reset"), json={"type": "Hard"})
        assert later.status_code == 202


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "payload", "mentions"),
    [
        ("Reset", {"type": "Medium"}, "type"),
        ("Reset", {}, "type"),
        ("RemoteStartTransaction", {"connectorId": 1}, "idTag"),
        ("RemoteStartTransaction", {"idTag": "T", "colour": "red"}, "colour"),
        ("ChangeConfiguration", {"key": "K", "value": 5}, "value"),
        ("UnlockConnector", {"connectorId": "one"}, "connectorId"),
        ("ReserveNow", {**request_payload("ReserveNow"), "idTag": "X" * 21}, "idTag"),
    ],
)
async def test_invalid_payload_is_422_and_not_recorded(
    server: RunningServer, action: str, payload: dict[str, Any], mentions: str
) -> None:
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        response = await send(client, action, payload)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, str)
        assert detail.startswith(f"invalid {action} payload: ")
        assert mentions in detail, detail
    assert cp.calls == []
    assert await operation_count(server) == 0


async def test_unknown_action_is_404_listing_valid_ones(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with api(server, token) as client:
        for name in ("boot-notification", "heartbeat", "Reset", "frobnicate"):
            response = await client.post(f"/api/v1/charge-points/CP1/commands/{name}", json={})
            assert response.status_code == 404, name
            detail = response.json()["detail"]
            assert repr(name) in detail
            for valid in ACTION_BY_SLUG:
                assert valid in detail
    assert await operation_count(server) == 0


# --- friendly endpoints --------------------------------------------------------------------------


async def test_start_only_on_available_or_preparing_connector(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        await boot(cp, connectors=1)
        await cp.call(
            call.StatusNotification(connector_id=2, error_code="NoError", status="Charging")
        )
        await cp.call(
            call.StatusNotification(connector_id=3, error_code="NoError", status="Preparing")
        )
        url = "/api/v1/charge-points/CP1/start?wait=true"
        ok = await client.post(url, json={"connector_id": 1, "id_tag": "TAG1"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["status"] == "accepted"
        assert cp.calls[-1] == ("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"})
        preparing = await client.post(url, json={"connector_id": 3, "id_tag": "TAG1"})
        assert preparing.status_code == 200
        sent = len(cp.calls)
        busy = await client.post(url, json={"connector_id": 2, "id_tag": "TAG1"})
        assert busy.status_code == 409
        assert "Charging" in busy.json()["detail"]
        unknown = await client.post(url, json={"connector_id": 9, "id_tag": "TAG1"})
        assert unknown.status_code == 409
        bad = await client.post(url, json={"connector_id": 0, "id_tag": "TAG1"})
        assert bad.status_code == 422
        assert len(cp.calls) == sent


async def test_stop_only_with_active_session_and_right_transaction_id(
    server: RunningServer,
) -> None:
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        await boot(cp, connectors=2)
        url = "/api/v1/charge-points/CP1/stop?wait=true"
        none = await client.post(url)
        assert none.status_code == 409
        assert cp.calls == []
        # An earlier session, stopped, and the one running now.
        first = await cp.call(
            call.StartTransaction(
                connector_id=2, id_tag="TAG1", meter_start=0, timestamp="2030-01-01T08:00:00Z"
            )
        )
        await cp.call(
            call.StopTransaction(
                meter_stop=100,
                timestamp="2030-01-01T09:00:00Z",
                transaction_id=first.transaction_id,
            )
        )
        running = await cp.call(
            call.StartTransaction(
                connector_id=1, id_tag="TAG1", meter_start=0, timestamp="2030-01-01T10:00:00Z"
            )
        )
        assert running.transaction_id != first.transaction_id
        stopped = await client.post(url, json={"session_id": first.transaction_id})
        assert stopped.status_code == 409
        response = await client.post(url)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"
        assert cp.calls == [("RemoteStopTransaction", {"transactionId": running.transaction_id})]
        explicit = await client.post(url, json={"session_id": running.transaction_id})
        assert explicit.status_code == 200
        assert cp.calls[-1] == ("RemoteStopTransaction", {"transactionId": running.transaction_id})


async def test_reset_unlock_availability(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        base = "/api/v1/charge-points/CP1"
        soft = await client.post(f"{base}/reset?wait=true")
        assert soft.status_code == 200, soft.text
        hard = await client.post(f"{base}/reset?wait=true", json={"type": "Hard"})
        assert hard.json()["status"] == "accepted"
        assert (await client.post(f"{base}/reset", json={"type": "Warm"})).status_code == 422
        unlock = await client.post(f"{base}/unlock?wait=true", json={"connector_id": 2})
        assert unlock.json()["status"] == "accepted"
        assert unlock.json()["response"] == {"status": "Unlocked"}
        whole = await client.post(f"{base}/availability?wait=true", json={"type": "Inoperative"})
        assert whole.json()["status"] == "accepted"
        one = await client.post(
            f"{base}/availability?wait=true", json={"connector_id": 1, "type": "Operative"}
        )
        assert one.status_code == 200
        assert cp.calls == [
            ("Reset", {"type": "Soft"}),
            ("Reset", {"type": "Hard"}),
            ("UnlockConnector", {"connectorId": 2}),
            ("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}),
            ("ChangeAvailability", {"connectorId": 1, "type": "Operative"}),
        ]
        cp.mode["UnlockConnector"] = "reject"
        failed = await client.post(f"{base}/unlock?wait=true", json={"connector_id": 2})
        assert failed.json()["status"] == "rejected"


# --- CONFORMANCE L2, L3 --------------------------------------------------------------------------


async def test_l2_pending_gets_configuration_but_no_remote_start_stop(
    server: RunningServer,
) -> None:
    await server.add_charge_point("CP1", registration_status="Pending")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        for action in ("RemoteStartTransaction", "RemoteStopTransaction"):
            refused = await send(client, action)
            assert refused.status_code == 409, refused.text
            assert "Pending" in refused.json()["detail"]
        assert cp.calls == []
        got = await send(client, "GetConfiguration")
        assert got.json()["status"] == "accepted"
        changed = await send(client, "ChangeConfiguration")
        assert changed.json()["status"] == "accepted"
        assert [c[0] for c in cp.calls] == ["GetConfiguration", "ChangeConfiguration"]


async def test_l3_rejected_gets_nothing(server: RunningServer) -> None:
    await server.add_charge_point("CP1", registration_status="Rejected")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        for action in ALL_ACTIONS:
            refused = await send(client, action)
            assert refused.status_code == 409, (action, refused.text)
            assert "Rejected" in refused.json()["detail"]
        await asyncio.sleep(0.2)
        assert cp.calls == []
    assert await operation_count(server) == 0


# --- CONFORMANCE H8 ------------------------------------------------------------------------------

OLD_KEY = "0123456789abcdef0123"
NEW_KEY = "fedcba9876543210fedcba98"


async def handshake_status(server: RunningServer, identity: str, key: str) -> int:
    token = base64.b64encode(f"{identity}:{key}".encode()).decode()
    try:
        async with websockets.connect(
            server.ws_url + identity,
            subprotocols=[websockets.Subprotocol("ocpp1.6")],
            additional_headers={"Authorization": f"Basic {token}"},
            compression=None,
        ):
            return 101
    except websockets.InvalidStatus as error:
        return error.response.status_code


@pytest.mark.parametrize("answer", ["accept", "reject"])
async def test_h8_authorization_key_rotation(
    server: RunningServer, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await server.add_charge_point("CP1", security_profile=1, auth_key=OLD_KEY)
    token = await operator(server)
    async with (
        charge_point(server, "CP1", auth_key=OLD_KEY, cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        cp.default_mode = answer
        response = await send(
            client, "ChangeConfiguration", {"key": "AuthorizationKey", "value": NEW_KEY}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == ("accepted" if answer == "accept" else "rejected")
        assert cp.calls == [("ChangeConfiguration", {"key": "AuthorizationKey", "value": NEW_KEY})]
        assert NEW_KEY not in response.text
        assert body["request"]["value"] == "********"
        history = await client.get("/api/v1/charge-points/CP1/operations")
        assert NEW_KEY not in history.text
    stored = await server.rows("SELECT * FROM operations")
    assert NEW_KEY not in repr(stored)
    assert NEW_KEY not in repr(await server.rows("SELECT * FROM configuration"))
    assert NEW_KEY not in repr(await server.rows("SELECT * FROM charge_points"))
    if answer == "accept":
        assert await handshake_status(server, "CP1", OLD_KEY) == 401
        assert await handshake_status(server, "CP1", NEW_KEY) == 101
    else:
        assert await handshake_status(server, "CP1", OLD_KEY) == 101
        assert await handshake_status(server, "CP1", NEW_KEY) == 401
    leaked = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        # The test's own client logs what it receives; everything else is the server's.
        if NEW_KEY in r.getMessage() and not r.name.startswith(("testclient", "websockets.client"))
    ]
    assert leaked == []
    assert caplog.records  # DEBUG capture did see the server's logging at all


# --- CONFORMANCE R11: one in flight per charge point ----------------------------------------------


async def test_one_call_in_flight_per_charge_point(server: RunningServer) -> None:
    await server.add_charge_point("CP1")
    token = await operator(server)
    async with (
        charge_point(server, "CP1", cls=ScriptedChargePoint) as cp,
        api(server, token) as client,
    ):
        cp.mode["GetConfiguration"] = "hold"
        first = asyncio.create_task(send(client, "GetConfiguration"))
        await cp.wait_for_calls(1)
        second = asyncio.create_task(send(client, "ClearCache"))
        await asyncio.sleep(0.5)
        # The second request is recorded (a slow machine may take longer than the pause to
        # get it this far), and, the first still held, nothing more went to the charge point.
        ops = await eventually(
            lambda: server.rows("SELECT action, status FROM operations ORDER BY id"),
            lambda rows: len(rows) >= 2,
            within=10,
        )
        assert [c[0] for c in cp.calls] == ["GetConfiguration"]
        assert not second.done()
        assert [(r["action"], r["status"]) for r in ops] == [
            ("GetConfiguration", "sent"),
            ("ClearCache", "pending"),  # waiting its turn, not on the wire
        ]
        cp.release.set()
        assert (await first).json()["status"] == "accepted"
        assert (await second).json()["status"] == "accepted"
        assert [c[0] for c in cp.calls] == ["GetConfiguration", "ClearCache"]
        # The charge point's turn is kept while operations wait or run, and not after: a
        # fleet that comes and goes leaves no lock per identity behind.
        assert "CP1" not in server.node.commands._turns
