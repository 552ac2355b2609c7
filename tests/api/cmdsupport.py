"""Helpers for the API tests: users and tokens, an HTTP client, a scriptable charge point, and a
realistic payload for every CSMS-initiated action."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from ocpp.charge_point import camel_to_snake_case
from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.commands.catalog import ACTION_BY_SLUG, slug
from chargegrid.store import users as user_store
from support import RecordingChargePoint, RunningServer

# The client's own log lines (it logs every frame it receives) are the test's, not the server's.
CLIENT_LOGGER = logging.getLogger("testclient.ocpp")
CLIENT_LOGGER.propagate = False


FUTURE = "2031-06-01T12:00:00Z"


CERTIFICATE = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUK\n-----END CERTIFICATE-----"
HASH_DATA = {
    "hashAlgorithm": "SHA256",
    "issuerNameHash": "a" * 64,
    "issuerKeyHash": "b" * 64,
    "serialNumber": "01ab",
}
CHARGING_PROFILE = {
    "chargingProfileId": 11,
    "stackLevel": 1,
    "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Relative",
    "chargingSchedule": {
        "chargingRateUnit": "W",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0, "numberPhases": 3}],
    },
}


def request_payload(action: str) -> dict[str, Any]:
    """A valid, realistic request for ``action`` (times relative to now)."""
    payloads: dict[str, dict[str, Any]] = {
        "CancelReservation": {"reservationId": 7},
        "CertificateSigned": {"certificateChain": CERTIFICATE},
        "ChangeAvailability": {"connectorId": 1, "type": "Inoperative"},
        "ChangeConfiguration": {"key": "HeartbeatInterval", "value": "120"},
        "ClearCache": {},
        "ClearChargingProfile": {"id": 11},
        "DataTransfer": {"vendorId": "com.example", "messageId": "ping", "data": "hello"},
        "DeleteCertificate": {"certificateHashData": HASH_DATA},
        "ExtendedTriggerMessage": {"requestedMessage": "StatusNotification", "connectorId": 1},
        "GetCompositeSchedule": {"connectorId": 1, "duration": 3600, "chargingRateUnit": "W"},
        "GetConfiguration": {"key": ["HeartbeatInterval", "NoSuchKey"]},
        "GetDiagnostics": {"location": "ftp://diag.example.com/upload/", "retries": 2},
        "GetInstalledCertificateIds": {"certificateType": "CentralSystemRootCertificate"},
        "GetLocalListVersion": {},
        "GetLog": {
            "logType": "DiagnosticsLog",
            "requestId": 42,
            "log": {"remoteLocation": "https://logs.example.com/upload"},
        },
        "InstallCertificate": {
            "certificateType": "ManufacturerRootCertificate",
            "certificate": CERTIFICATE,
        },
        "RemoteStartTransaction": {"connectorId": 1, "idTag": "TAG1"},
        "RemoteStopTransaction": {"transactionId": 1},
        "ReserveNow": {
            "connectorId": 1,
            "expiryDate": FUTURE,
            "idTag": "TAG1",
            "reservationId": 7,
        },
        "Reset": {"type": "Soft"},
        "SendLocalList": {
            "listVersion": 5,
            "updateType": "Full",
            "localAuthorizationList": [{"idTag": "TAG1", "idTagInfo": {"status": "Accepted"}}],
        },
        "SetChargingProfile": {"connectorId": 1, "csChargingProfiles": CHARGING_PROFILE},
        "SignedUpdateFirmware": {
            "requestId": 43,
            "firmware": {
                "location": "https://fw.example.com/fw-2.0.bin",
                "retrieveDateTime": FUTURE,
                "signingCertificate": CERTIFICATE,
                "signature": "c2lnbmF0dXJl",
            },
        },
        "TriggerMessage": {"requestedMessage": "Heartbeat"},
        "UnlockConnector": {"connectorId": 1},
        "UpdateFirmware": {
            "location": "https://fw.example.com/fw-1.1.bin",
            "retrieveDate": FUTURE,
        },
    }
    return payloads[action]


# What a charge point answers: (positive answer, refusal or None when the action has no status).
ANSWERS: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "CancelReservation": ({"status": "Accepted"}, {"status": "Rejected"}),
    "CertificateSigned": ({"status": "Accepted"}, {"status": "Rejected"}),
    "ChangeAvailability": ({"status": "Accepted"}, {"status": "Rejected"}),
    "ChangeConfiguration": ({"status": "Accepted"}, {"status": "Rejected"}),
    "ClearCache": ({"status": "Accepted"}, {"status": "Rejected"}),
    "ClearChargingProfile": ({"status": "Accepted"}, {"status": "Unknown"}),
    "DataTransfer": ({"status": "Accepted", "data": "pong"}, {"status": "UnknownVendorId"}),
    "DeleteCertificate": ({"status": "Accepted"}, {"status": "NotFound"}),
    "ExtendedTriggerMessage": ({"status": "Accepted"}, {"status": "NotImplemented"}),
    "GetCompositeSchedule": (
        {
            "status": "Accepted",
            "connectorId": 1,
            "scheduleStart": "2030-01-01T00:00:00Z",
            "chargingSchedule": {
                "duration": 3600,
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}],
            },
        },
        {"status": "Rejected"},
    ),
    "GetConfiguration": (
        {
            "configurationKey": [
                {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
                {"key": "ChargePointModel", "readonly": True, "value": "M1"},
            ],
            "unknownKey": ["NoSuchKey"],
        },
        None,
    ),
    "GetDiagnostics": ({"fileName": "diagnostics-2030.zip"}, None),
    "GetInstalledCertificateIds": (
        {"status": "Accepted", "certificateHashData": [HASH_DATA]},
        {"status": "NotFound"},
    ),
    "GetLocalListVersion": ({"listVersion": 9}, None),
    "GetLog": ({"status": "Accepted", "filename": "log-42.txt"}, {"status": "Rejected"}),
    "InstallCertificate": ({"status": "Accepted"}, {"status": "Rejected"}),
    "RemoteStartTransaction": ({"status": "Accepted"}, {"status": "Rejected"}),
    "RemoteStopTransaction": ({"status": "Accepted"}, {"status": "Rejected"}),
    "ReserveNow": ({"status": "Accepted"}, {"status": "Occupied"}),
    "Reset": ({"status": "Accepted"}, {"status": "Rejected"}),
    "SendLocalList": ({"status": "Accepted"}, {"status": "VersionMismatch"}),
    "SetChargingProfile": ({"status": "Accepted"}, {"status": "Rejected"}),
    "SignedUpdateFirmware": ({"status": "Accepted"}, {"status": "InvalidCertificate"}),
    "TriggerMessage": ({"status": "Accepted"}, {"status": "Rejected"}),
    "UnlockConnector": ({"status": "Unlocked"}, {"status": "UnlockFailed"}),
    "UpdateFirmware": ({}, None),
}

ALL_ACTIONS = sorted(ACTION_BY_SLUG.values())
REFUSABLE_ACTIONS = [a for a in ALL_ACTIONS if ANSWERS[a][1] is not None]


class ScriptedChargePoint(RecordingChargePoint):
    """The ``ocpp`` package's ChargePoint answering every CSMS-initiated action as scripted.

    ``mode`` (per action, else ``default_mode``): ``accept`` | ``reject`` | ``error`` (a
    NotSupported CALLERROR) | ``sleep`` (answer after ``delay`` s) | ``hold`` (answer once
    ``release`` is set). Every CALL received is kept, decoded, in ``calls`` as (action, payload).
    """

    default_mode = "accept"
    delay = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = CLIENT_LOGGER
        self.mode: dict[str, str] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.received = asyncio.Event()
        self.release = asyncio.Event()

    async def route_message(self, raw_msg: str) -> None:
        frame = json.loads(raw_msg)
        if frame[0] == 2:
            self.calls.append((frame[2], frame[3]))
            self.received.set()
        await super().route_message(raw_msg)

    async def wait_for_calls(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                self.received.clear()
                await self.received.wait()

    async def answer(self, action: str) -> Any:
        mode = self.mode.get(action, self.default_mode)
        if mode == "error":
            raise NotSupportedError(description=f"{action} is not supported here")
        if mode == "sleep":
            await asyncio.sleep(self.delay)
        if mode == "hold":
            await self.release.wait()
        accepted, refused = ANSWERS[action]
        payload = self.answers.get(action) or (
            refused if mode == "reject" and refused is not None else accepted
        )
        return getattr(call_result, action)(**camel_to_snake_case(payload))


def _handler(action: str) -> Callable[..., Any]:
    async def handler(self: ScriptedChargePoint, **kwargs: Any) -> Any:
        return await self.answer(action)

    handler.__name__ = f"on_{slug(action).replace('-', '_')}"
    return on(Action(action))(handler)


for _action in ALL_ACTIONS:
    _h = _handler(_action)
    setattr(ScriptedChargePoint, _h.__name__, _h)


# --- users, tokens, HTTP ------------------------------------------------------------------------


async def make_user(
    server: RunningServer,
    username: str,
    role: str,
    *,
    password: str | None = None,
    groups: tuple[str, ...] = (),
    expires_at: datetime | None = None,
) -> str:
    """Add a user (limited to ``groups`` if any, created as needed) and return a fresh token."""
    now = datetime.now(UTC)

    # Through the node's writer: on SQLite a read-then-write transaction of its own would race it.
    async def unit(connection: AsyncConnection) -> str:
        user_id = await user_store.add_user(
            connection,
            username,
            role=user_store.Role(role),
            now=now,
            password=password,
            all_charge_points=not groups,
        )
        for name in groups:
            group = await user_store.group_id(connection, name)
            if group is None:
                group = await user_store.add_group(connection, name, now)
            await user_store.grant_group(connection, user_id, group)
        return await user_store.issue_token(
            connection, user_id, name="test", now=now, expires_at=expires_at
        )

    token: str = await server.node.writer.run(unit)
    return token


async def put_in_group(server: RunningServer, group: str, identity: str) -> None:
    async def unit(connection: AsyncConnection) -> None:
        key = await user_store.group_id(connection, group)
        if key is None:
            key = await user_store.add_group(connection, group, datetime.now(UTC))
        assert await user_store.add_to_group(connection, key, identity)

    await server.node.writer.run(unit)


@contextlib.asynccontextmanager
async def api(server: RunningServer, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=15.0) as client:
        yield client


async def admin_api(server: RunningServer) -> httpx.AsyncClient:
    """Not a context manager: for fixtures that close it themselves."""
    token = await make_user(server, "root", "admin", password="root-password")
    return httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=15.0
    )


async def boot(cp: Any, *, connectors: int = 1, status: str = "Available") -> None:
    """BootNotification and a StatusNotification per connector, as a charger does."""
    await cp.call(
        call.BootNotification(charge_point_vendor="V", charge_point_model="M"), suppress=False
    )
    for connector in range(1, connectors + 1):
        await cp.call(
            call.StatusNotification(connector_id=connector, error_code="NoError", status=status),
            suppress=False,
        )


async def poll_operation(
    client: httpx.AsyncClient, operation_id: int, timeout: float = 5.0
) -> dict[str, Any]:
    """GET the operation until it is final."""
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(f"/api/v1/operations/{operation_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in ("accepted", "rejected", "error", "timeout"):
                return body
            await asyncio.sleep(0.05)
