"""RPC framing and errors: CONFORMANCE table R, rows R1-R11 (OCPP-J 1.6 §4, Table 7).

Frames the ``ocpp`` package would never produce go over raw ``websockets`` connections; the
CSMS -> CP calls of R11 are answered by the ``ocpp`` package's ChargePoint or by a raw socket.
Every test runs the real server on SQLite and on PostgreSQL, and with both ways frames take
between the socket and the connection: the trimmed protocol's direct text path (as shipped)
and plain ASGI messages (``ws_lean_protocol`` off, or any other ASGI server).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import websockets
from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from chargegrid import admin
from chargegrid.config import Settings
from chargegrid.gateway import connection as connection_module
from chargegrid.gateway.connection import (
    CallRejected,
    CallTimeout,
    ChargePointConnection,
    ConnectionClosed,
)
from chargegrid.ocpp.errors import OcppError
from chargegrid.store.database import writing
from support import RecordingChargePoint, RunningServer, charge_point, raw_socket, running_server

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
STATUS = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
ERROR_CODES_16 = {
    "NotImplemented",
    "NotSupported",
    "InternalError",
    "ProtocolError",
    "SecurityError",
    "FormationViolation",
    "PropertyConstraintViolation",
    "OccurenceConstraintViolation",
    "TypeConstraintViolation",
    "GenericError",
}


@pytest.fixture(params=["direct", "asgi"])
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    return settings.model_copy(update={"ws_lean_protocol": request.param == "direct"})


# --- helpers -------------------------------------------------------------------------------------


async def recv_json(ws: websockets.ClientConnection, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def exchange(ws: websockets.ClientConnection, frame: Any) -> Any:
    """Send one frame (a JSON value, or text as is) and return the decoded reply."""
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    return await recv_json(ws)


async def assert_silent(ws: websockets.ClientConnection, seconds: float = 0.5) -> None:
    """Nothing may arrive on ``ws`` for ``seconds``."""
    try:
        frame = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return
    pytest.fail(f"expected no frame, got {frame!r}")


async def heartbeat_works(ws: websockets.ClientConnection, message_id: str = "alive") -> None:
    """The connection is still open and serving: a Heartbeat gets its CALLRESULT."""
    reply = await exchange(ws, [2, message_id, "Heartbeat", {}])
    assert reply[:2] == [3, message_id], reply
    assert set(reply[2]) == {"currentTime"}


def assert_call_error(reply: Any, message_id: str, code: str) -> None:
    assert isinstance(reply, list), reply
    assert len(reply) == 5, reply
    assert reply[:3] == [4, message_id, code], reply
    assert isinstance(reply[3], str)
    assert isinstance(reply[4], dict)
    assert reply[2] in ERROR_CODES_16


async def live_connection(server: RunningServer, identity: str) -> ChargePointConnection:
    for _ in range(100):
        connection = server.node.registry.get(identity)
        if connection is not None:
            return connection
        await asyncio.sleep(0.02)
    raise AssertionError(f"{identity} never appeared in the registry")


# --- R1 ------------------------------------------------------------------------------------------


async def test_r1_invalid_json_with_readable_id_gets_formation_violation(
    server: RunningServer,
) -> None:
    """CONFORMANCE R1: broken JSON whose CALL id can be read -> FormationViolation with that id."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        reply = await exchange(ws, '[2, "r1-a", "Heartbeat", {')
        assert_call_error(reply, "r1-a", "FormationViolation")
        reply = await exchange(ws, '[2,"r1-b","StatusNotification",{"connectorId":1,}]')
        assert_call_error(reply, "r1-b", "FormationViolation")
        await heartbeat_works(ws)


async def test_r1_invalid_json_without_id_is_logged_and_dropped(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """CONFORMANCE R1: broken JSON with no readable CALL id -> nothing sent, logged, still open."""
    caplog.set_level(logging.INFO, logger="chargegrid")
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        for text in ("hello", "[2, ", "{]", '[3, "x", {'):
            await ws.send(text)
        await assert_silent(ws)
        await heartbeat_works(ws)
    assert any("ignored frame" in record.getMessage() for record in caplog.records)


# --- R2 / R3 -------------------------------------------------------------------------------------


async def test_r2_unknown_action_gets_not_implemented(server: RunningServer) -> None:
    """CONFORMANCE R2: an action OCPP 1.6 does not know -> NotImplemented, details ``{}``."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        for message_id, action in [
            ("r2-a", "FooBar"),
            ("r2-b", "heartbeat"),  # action names are case-sensitive
            ("r2-c", "TransactionEvent"),  # OCPP 2.0.1, not 1.6
        ]:
            reply = await exchange(ws, [2, message_id, action, {}])
            assert_call_error(reply, message_id, "NotImplemented")
            assert reply[4] == {}
        await heartbeat_works(ws)


async def test_r3_csms_to_cp_action_gets_not_supported(server: RunningServer) -> None:
    """CONFORMANCE R3: a 1.6 action that only flows CSMS -> CP -> NotSupported."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        for message_id, action, payload in [
            ("r3-a", "RemoteStartTransaction", {"idTag": "TAG1"}),
            ("r3-b", "Reset", {"type": "Hard"}),
            ("r3-c", "GetConfiguration", {}),
            ("r3-d", "CertificateSigned", {"certificateChain": "x"}),
        ]:
            reply = await exchange(ws, [2, message_id, action, payload])
            assert_call_error(reply, message_id, "NotSupported")
        await heartbeat_works(ws)


# --- R4 ------------------------------------------------------------------------------------------


async def test_r4_payload_violations_map_to_table7_codes(server: RunningServer) -> None:
    """CONFORMANCE R4: wrong type / bad enum or range / missing / extra -> the Table 7 codes."""
    await server.add_charge_point("CP1")
    cases: dict[str, tuple[str, dict[str, Any], str]] = {
        "type-string-for-int": (
            "StatusNotification",
            {**STATUS, "connectorId": "1"},
            "TypeConstraintViolation",
        ),
        "type-int-for-string": (
            "Authorize",
            {"idTag": 12345},
            "TypeConstraintViolation",
        ),
        "bad-enum": (
            "StatusNotification",
            {**STATUS, "status": "Exploded"},
            "PropertyConstraintViolation",
        ),
        "too-long": (
            "BootNotification",
            {**BOOT, "chargePointVendor": "V" * 21},
            "PropertyConstraintViolation",
        ),
        "missing-required": (
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError"},
            "OccurenceConstraintViolation",
        ),
        "missing-all": ("BootNotification", {}, "OccurenceConstraintViolation"),
        "extra-property": (
            "StatusNotification",
            {**STATUS, "colour": "red"},
            "FormationViolation",
        ),
    }
    got: dict[str, str] = {}
    async with raw_socket(server, "CP1") as ws:
        for name, (action, payload, _) in cases.items():
            reply = await exchange(ws, [2, f"r4-{name}", action, payload])
            assert reply[0] == 4 and reply[1] == f"r4-{name}", reply
            assert isinstance(reply[4], dict)
            got[name] = reply[2]
        await heartbeat_works(ws)
    assert got == {name: code for name, (_, _, code) in cases.items()}
    # Nothing of the refused calls was stored.
    assert await server.scalar("SELECT count(*) FROM connectors") == 0
    assert await server.scalar("SELECT vendor FROM charge_points") is None


# --- R5 ------------------------------------------------------------------------------------------


async def test_r5_bad_message_ids_get_formation_violation(server: RunningServer) -> None:
    """CONFORMANCE R5: id empty, not a string, or > 36 characters -> FormationViolation."""
    await server.add_charge_point("CP1")
    long_id = "x" * 37
    async with raw_socket(server, "CP1") as ws:
        reply = await exchange(ws, [2, "", "Heartbeat", {}])
        assert_call_error(reply, "", "FormationViolation")
        reply = await exchange(ws, [2, long_id, "Heartbeat", {}])
        assert_call_error(reply, long_id, "FormationViolation")
        # A non-string id cannot be echoed as is; the CALLERROR id is still a string.
        for bad_id in (17, None, ["a"], {"a": 1}, True):
            reply = await exchange(ws, [2, bad_id, "Heartbeat", {}])
            assert reply[0] == 4, reply
            assert isinstance(reply[1], str), reply
            assert reply[2] == "FormationViolation", reply
        reply = await exchange(ws, [2, 17, "Heartbeat", {}])
        assert reply[1] == "17"  # documented: a numeric id is echoed as its JSON text
        # 36 characters is the maximum and is fine.
        await heartbeat_works(ws, "y" * 36)


# --- R6 ------------------------------------------------------------------------------------------


async def test_r6_duplicate_in_flight_id_gets_protocol_error(settings: Settings) -> None:
    """CONFORMANCE R6: a second CALL with an id still being handled -> ProtocolError.

    A slow group commit (300 ms) keeps the first BootNotification in flight.
    """
    custom = settings.model_copy(update={"commit_interval_ms": 300.0})
    async with running_server(custom) as srv:
        await srv.add_charge_point("CP1")
        async with raw_socket(srv, "CP1") as ws:
            await ws.send(json.dumps([2, "dup", "BootNotification", BOOT]))
            await ws.send(json.dumps([2, "dup", "Heartbeat", {}]))
            first = await recv_json(ws)
            second = await recv_json(ws)
            replies = sorted([first, second], key=lambda frame: frame[0])
            assert replies[0][:2] == [3, "dup"], replies
            assert replies[0][2]["status"] == "Accepted"
            assert_call_error(replies[1], "dup", "ProtocolError")
            await assert_silent(ws, 0.4)
            # Once answered, the id may be used again.
            await heartbeat_works(ws, "dup")
        assert await srv.scalar("SELECT vendor FROM charge_points") == "V"


@pytest.mark.parametrize("linger", [5.0, 0.05], ids=["worker-waits", "worker-ends"])
async def test_one_call_at_a_time_when_meter_values_are_answered_without_a_worker(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, linger: float
) -> None:
    """OCPP-J 1.6 §4.1.1: CALLs are handled one at a time, in order. MeterValues are
    answered from the group commit's callback, without the connection's worker task; a CALL
    sent meanwhile (a Heartbeat, answered at once otherwise) waits until the MeterValues is
    answered, also when the idle worker's linger ends in between ("worker-ends")."""
    monkeypatch.setattr(connection_module, "WORKER_LINGER", linger)
    meter = {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": "2026-11-24T01:00:00Z",
                "sampledValue": [{"value": "10", "measurand": "Energy.Active.Import.Register"}],
            }
        ],
    }
    async with running_server(settings) as srv:
        await srv.add_charge_point("CP1")
        async with raw_socket(srv, "CP1") as ws:
            reply = await exchange(ws, [2, "boot", "BootNotification", BOOT])  # the worker's
            assert reply[2]["status"] == "Accepted"
            connection = await live_connection(srv, "CP1")
            # The MeterValues' commit waits until the test lets it go, not for a commit
            # interval (300 ms was a race: a slow machine could commit it before the Heartbeat
            # was seen waiting behind it).
            writer = srv.node.writer
            commit, release = writer._commit, asyncio.Event()

            async def held(batch: Any) -> None:
                await release.wait()
                await commit(batch)

            monkeypatch.setattr(writer, "_commit", held)
            try:
                await ws.send(json.dumps([2, "mv", "MeterValues", meter]))
                for _ in range(100):  # taken without the worker, waiting for its commit
                    if connection._in_flight is not None:
                        break
                    await asyncio.sleep(0.005)
                assert connection._in_flight is not None
                await ws.send(json.dumps([2, "hb", "Heartbeat", {}]))
                await asyncio.sleep(0.1)  # longer than the short linger
                for _ in range(500):  # the Heartbeat has arrived: it waits, the commit held
                    if connection._calls:
                        break
                    await asyncio.sleep(0.01)
                assert connection._calls is not None and len(connection._calls) == 1
            finally:
                release.set()
            replies = [await recv_json(ws), await recv_json(ws)]
            assert [reply[:2] for reply in replies] == [[3, "mv"], [3, "hb"]]
            assert replies[0][2] == {}
            await heartbeat_works(ws)
        assert await srv.scalar("SELECT count(*) FROM meter_values") == 1


# --- R7 ------------------------------------------------------------------------------------------


async def test_r7_unknown_message_types_and_stray_answers_are_ignored(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """CONFORMANCE R7: message type other than 2/3/4, or an answer to no call: ignored, logged."""
    caplog.set_level(logging.INFO, logger="chargegrid")
    await server.add_charge_point("CP1")
    frames: list[Any] = [
        [5, "r7-a", "Heartbeat", {}],
        [0, "r7-b", "Heartbeat", {}],
        [1, "r7-c", {}],
        [6],
        ["2", "r7-d", "Heartbeat", {}],
        [2.0, "r7-e", "Heartbeat", {}],
        [3, "r7-unknown", {"currentTime": "2024-01-01T00:00:00Z"}],
        [4, "r7-unknown", "GenericError", "", {}],
    ]
    async with raw_socket(server, "CP1") as ws:
        for frame in frames:
            await ws.send(json.dumps(frame))
        await assert_silent(ws, 0.6)
        await heartbeat_works(ws)
    ignored = [r for r in caplog.records if "ignored frame" in r.getMessage()]
    assert len(ignored) >= len(frames)


# --- R8 ------------------------------------------------------------------------------------------


async def test_r8_handler_exception_gets_internal_error(server: RunningServer) -> None:
    """CONFORMANCE R8: a handler raises -> InternalError, generic description, details ``{}``.

    The failing handler is a DataTransfer vendor handler, the server's documented extension point.
    """
    secret = "SELECT password FROM users -- /srv/chargegrid/secret.py line 42"

    async def broken(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError(secret)

    server.node.services.data_transfer["Broken"] = broken
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        reply = await exchange(ws, [2, "r8", "DataTransfer", {"vendorId": "Broken"}])
        assert_call_error(reply, "r8", "InternalError")
        assert reply[4] == {}
        assert "SELECT" not in reply[3]
        assert "RuntimeError" not in reply[3]
        assert "secret" not in reply[3]
        assert "Traceback" not in reply[3]
        await heartbeat_works(ws)
        # Other vendors are unaffected.
        reply = await exchange(ws, [2, "r8-ok", "DataTransfer", {"vendorId": "Other"}])
        assert reply == [3, "r8-ok", {"status": "UnknownVendorId"}]


# --- R9 ------------------------------------------------------------------------------------------


async def test_r9_null_payload_is_accepted_and_empty_object_sent(server: RunningServer) -> None:
    """CONFORMANCE R9: ``null`` for an empty payload is accepted; we always send ``{}``."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        reply = await exchange(ws, [2, "r9-a", "Heartbeat", None])
        assert reply[:2] == [3, "r9-a"]
        assert set(reply[2]) == {"currentTime"}
        # An empty response payload is sent as {} (never null).
        await ws.send(json.dumps([2, "r9-b", "StatusNotification", STATUS]))
        text = await asyncio.wait_for(ws.recv(), 5)
        assert json.loads(text) == [3, "r9-b", {}]
        # Our own CALL with an empty payload carries {}, and a null CALLRESULT counts as {}.
        connection = await live_connection(server, "CP1")
        outgoing = asyncio.create_task(connection.call("GetConfiguration", {}, timeout=5))
        frame = await recv_json(ws)
        assert frame[0] == 2 and frame[2] == "GetConfiguration"
        assert frame[3] == {}
        await ws.send(json.dumps([3, frame[1], None]))
        assert await outgoing == {}
        await heartbeat_works(ws)


# --- R10 -----------------------------------------------------------------------------------------


async def test_r10_pending_charge_point_gets_security_error_until_accepted(
    server: RunningServer,
) -> None:
    """CONFORMANCE R10 (errata §3.8): a Pending CP's calls but Boot get SecurityError."""
    await server.add_charge_point("CP1", registration_status="Pending")
    async with raw_socket(server, "CP1") as ws:
        assert_call_error(await exchange(ws, [2, "h1", "Heartbeat", {}]), "h1", "SecurityError")
        assert_call_error(
            await exchange(ws, [2, "s1", "StatusNotification", STATUS]), "s1", "SecurityError"
        )
        reply = await exchange(ws, [2, "b1", "BootNotification", BOOT])
        assert reply[:2] == [3, "b1"]
        assert reply[2]["status"] == "Pending"
        assert reply[2]["interval"] == server.node.settings.boot_retry_interval
        assert_call_error(await exchange(ws, [2, "h2", "Heartbeat", {}]), "h2", "SecurityError")
        assert await server.scalar("SELECT count(*) FROM connectors") == 0

        # The operator accepts it; the CP boots again and is served.
        async with writing(server.node.engine).begin() as connection:
            await admin.update_charge_point(
                connection, "CP1", now=datetime.now(UTC), registration_status="Accepted"
            )
        reply = await exchange(ws, [2, "b2", "BootNotification", BOOT])
        assert reply[:2] == [3, "b2"]
        assert reply[2]["status"] == "Accepted"
        assert reply[2]["interval"] == server.node.settings.heartbeat_interval
        await heartbeat_works(ws, "h3")
        assert await exchange(ws, [2, "s2", "StatusNotification", STATUS]) == [3, "s2", {}]
    assert await server.scalar("SELECT count(*) FROM connectors") == 1


async def test_r10_rejected_charge_point_gets_security_error(server: RunningServer) -> None:
    """CONFORMANCE R10 (+ L3): a Rejected CP stays refused after its boot."""
    await server.add_charge_point("CP1", registration_status="Rejected")
    async with raw_socket(server, "CP1") as ws:
        reply = await exchange(ws, [2, "b1", "BootNotification", BOOT])
        assert reply[:2] == [3, "b1"]
        assert reply[2]["status"] == "Rejected"
        assert_call_error(await exchange(ws, [2, "h1", "Heartbeat", {}]), "h1", "SecurityError")
        assert_call_error(
            await exchange(ws, [2, "a1", "Authorize", {"idTag": "TAG1"}]), "a1", "SecurityError"
        )


async def test_r10_security_error_can_be_switched_off(settings: Settings) -> None:
    """CONFORMANCE R10 "(configurable)": reject_calls_before_accepted=False serves a Pending CP."""
    custom = settings.model_copy(update={"reject_calls_before_accepted": False})
    async with running_server(custom) as srv:
        await srv.add_charge_point("CP1", registration_status="Pending")
        async with raw_socket(srv, "CP1") as ws:
            await heartbeat_works(ws, "h1")
            reply = await exchange(ws, [2, "b1", "BootNotification", BOOT])
            assert reply[2]["status"] == "Pending"
            await heartbeat_works(ws, "h2")


async def test_r10_accepted_charge_point_may_call_without_rebooting(
    server: RunningServer,
) -> None:
    """CONFORMANCE R10: an Accepted CP that reconnects need not boot again before calling."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        await heartbeat_works(ws, "first-connection")  # registered Accepted, never booted
        reply = await exchange(ws, [2, "b1", "BootNotification", BOOT])
        assert reply[2]["status"] == "Accepted"
    async with raw_socket(server, "CP1") as ws:
        await heartbeat_works(ws, "after-reconnect")
        assert await exchange(ws, [2, "s1", "StatusNotification", STATUS]) == [3, "s1", {}]


# --- R11 -----------------------------------------------------------------------------------------


class ConfiguredChargePoint(RecordingChargePoint):
    """Answers GetConfiguration and ChangeConfiguration like a well-behaved charger."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[str] = []

    @on(Action.get_configuration)
    async def on_get_configuration(
        self, key: list[str] | None = None
    ) -> call_result.GetConfiguration:
        self.received.append("GetConfiguration")
        return call_result.GetConfiguration(
            configuration_key=[{"key": "HeartbeatInterval", "readonly": False, "value": "300"}],
            unknown_key=key or None,
        )

    @on(Action.change_configuration)
    async def on_change_configuration(
        self, key: str, value: str
    ) -> call_result.ChangeConfiguration:
        self.received.append(f"ChangeConfiguration {key}={value}")
        return call_result.ChangeConfiguration(status="Rejected")


class SlowChargePoint(RecordingChargePoint):
    """Answers GetConfiguration only after ``delay`` seconds."""

    delay = 1.0

    @on(Action.get_configuration)
    async def on_get_configuration(self, **kwargs: Any) -> call_result.GetConfiguration:
        await asyncio.sleep(self.delay)
        return call_result.GetConfiguration(unknown_key=["late"])

    @on(Action.clear_cache)
    async def on_clear_cache(self) -> call_result.ClearCache:
        return call_result.ClearCache(status="Accepted")


class FailingChargePoint(RecordingChargePoint):
    """Answers with CALLERRORs: NotSupported on purpose, InternalError by accident."""

    @on(Action.get_configuration)
    async def on_get_configuration(self, **kwargs: Any) -> call_result.GetConfiguration:
        raise NotSupportedError(description="no configuration here")

    @on(Action.clear_cache)
    async def on_clear_cache(self) -> call_result.ClearCache:
        raise ValueError("firmware bug")

    @on(Action.reset)
    async def on_reset(self, type: str) -> call_result.Reset:
        return call_result.Reset(status="Accepted")


async def test_r11_call_returns_charge_point_result(server: RunningServer) -> None:
    """CONFORMANCE R11: a CSMS -> CP call returns the CALLRESULT payload."""
    await server.add_charge_point("CP1")
    async with charge_point(server, "CP1", cls=ConfiguredChargePoint) as cp:
        connection = await live_connection(server, "CP1")
        result = await connection.call("GetConfiguration", {}, timeout=5)
        assert result == {
            "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
        }
        result = await connection.call("GetConfiguration", {"key": ["Nope"]}, timeout=5)
        assert result["unknownKey"] == ["Nope"]
        result = await connection.call(
            "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}, timeout=5
        )
        assert result == {"status": "Rejected"}
        assert cp.received == [
            "GetConfiguration",
            "GetConfiguration",
            "ChangeConfiguration HeartbeatInterval=60",
        ]


async def test_r11_call_times_out(server: RunningServer) -> None:
    """CONFORMANCE R11: no answer within the timeout -> CallTimeout; a late answer is ignored."""
    await server.add_charge_point("CP1")
    async with charge_point(server, "CP1", cls=SlowChargePoint):
        connection = await live_connection(server, "CP1")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CallTimeout):
            await connection.call("GetConfiguration", {}, timeout=0.3)
        elapsed = loop.time() - started
        assert 0.25 <= elapsed < 0.9
        # The next call is not confused by the late GetConfiguration answer.
        result = await connection.call("ClearCache", {}, timeout=5)
        assert result == {"status": "Accepted"}
        assert not connection.closed


async def test_r11_callerror_raises_call_rejected(server: RunningServer) -> None:
    """CONFORMANCE R11: a CALLERROR from the CP -> CallRejected with the CP's code."""
    await server.add_charge_point("CP1")
    async with charge_point(server, "CP1", cls=FailingChargePoint):
        connection = await live_connection(server, "CP1")
        with pytest.raises(CallRejected) as rejected:
            await connection.call("GetConfiguration", {}, timeout=5)
        assert rejected.value.code == "NotSupported"
        assert rejected.value.description == "no configuration here"
        with pytest.raises(CallRejected) as rejected:
            await connection.call("ClearCache", {}, timeout=5)
        assert rejected.value.code == "InternalError"
        # The connection is still usable.
        assert await connection.call("Reset", {"type": "Soft"}, timeout=5) == {"status": "Accepted"}


async def test_r11_invalid_callresult_raises_call_rejected(server: RunningServer) -> None:
    """CONFORMANCE R11: a CALLRESULT that fails its schema fails the call (no timeout wait)."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        connection = await live_connection(server, "CP1")
        outgoing = asyncio.create_task(
            connection.call("ChangeConfiguration", {"key": "K", "value": "V"}, timeout=5)
        )
        frame = await recv_json(ws)
        assert frame[2] == "ChangeConfiguration"
        await ws.send(json.dumps([3, frame[1], {"status": "Maybe"}]))
        with pytest.raises(CallRejected) as rejected:
            await asyncio.wait_for(outgoing, 2)
        assert rejected.value.code == "PropertyConstraintViolation"
        await heartbeat_works(ws)


async def test_r11_invalid_payload_is_refused_before_sending(server: RunningServer) -> None:
    """CONFORMANCE R11 / CSMS-initiated: the payload is validated before anything is sent."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        connection = await live_connection(server, "CP1")
        with pytest.raises(OcppError) as refused:
            await connection.call("ChangeConfiguration", {"key": "K"}, timeout=5)
        assert refused.value.code == "OccurenceConstraintViolation"
        with pytest.raises(OcppError) as refused:
            await connection.call("Reset", {"type": "Sideways"}, timeout=5)
        assert refused.value.code == "PropertyConstraintViolation"
        with pytest.raises(OcppError) as refused:
            await connection.call("Heartbeat", {}, timeout=5)  # CP -> CSMS only
        assert refused.value.code == "NotSupported"
        await assert_silent(ws, 0.4)
        # Nothing was left pending: a valid call goes out and completes.
        outgoing = asyncio.create_task(connection.call("ClearCache", {}, timeout=5))
        frame = await recv_json(ws)
        assert frame[0] == 2 and frame[2:] == ["ClearCache", {}]
        await ws.send(json.dumps([3, frame[1], {"status": "Rejected"}]))
        assert await outgoing == {"status": "Rejected"}


async def test_r11_one_call_in_flight_per_charge_point(server: RunningServer) -> None:
    """CONFORMANCE R11 (J§4.1.1): concurrent calls are serialised; the CP sees one at a time."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        connection = await live_connection(server, "CP1")
        first = asyncio.create_task(connection.call("GetConfiguration", {}, timeout=5))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(connection.call("ClearCache", {}, timeout=5))
        frame1 = await recv_json(ws)
        assert frame1[2] == "GetConfiguration"
        # The second call must not be sent while the first is unanswered.
        await assert_silent(ws, 0.5)
        assert not second.done()
        await ws.send(json.dumps([3, frame1[1], {"unknownKey": ["a"]}]))
        frame2 = await recv_json(ws)
        assert frame2[2] == "ClearCache"
        assert frame2[1] != frame1[1]
        await ws.send(json.dumps([3, frame2[1], {"status": "Accepted"}]))
        assert await first == {"unknownKey": ["a"]}
        assert await second == {"status": "Accepted"}


async def test_r11_call_on_closed_connection_raises(server: RunningServer) -> None:
    """CONFORMANCE R11: a call on a closed connection, or cut by disconnect -> ConnectionClosed."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        connection = await live_connection(server, "CP1")
        outgoing = asyncio.create_task(connection.call("GetConfiguration", {}, timeout=10))
        frame = await recv_json(ws)
        assert frame[2] == "GetConfiguration"
    # The CP went away with the call unanswered: it fails at once, not after 10 s.
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(outgoing, 3)
    with pytest.raises(ConnectionClosed):
        await connection.call("ClearCache", {}, timeout=1)


async def test_one_worker_task_per_busy_connection_none_once_idle(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection's CALLs are handled by one task while they keep coming (a task per CALL
    cost ~8 % of the event loop's CPU); it ends once the connection has been quiet for
    WORKER_LINGER, and the next CALL starts another; closing ends a waiting one at once."""
    # Quiet gaps of 0.6 s against a linger of 1.0 s: each gap is well short of the linger (a slow
    # machine's round trips fit in the 0.4 s left), while two together outlast it.
    monkeypatch.setattr(connection_module, "WORKER_LINGER", 1.0)
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as ws:
        await heartbeat_works(ws)
        connection = server.node.registry.get("CP1")
        assert connection is not None
        worker = connection._worker
        assert worker is not None and not worker.done()
        for _ in range(3):
            await heartbeat_works(ws)
            assert connection._worker is worker  # the same task, waiting in between
        # The linger counts from the last CALL, not the first wait's timer: quiet for 0.6 s,
        # one more CALL, 0.6 s again, and the worker is still there.
        await asyncio.sleep(0.6)
        await heartbeat_works(ws)
        await asyncio.sleep(0.6)
        assert not worker.done() and connection._worker is worker
        await asyncio.sleep(1.0)
        assert worker.done() and connection._worker is None and connection._calls is None
        await heartbeat_works(ws)  # a new one
        waiting = connection._worker
        assert waiting is not None and waiting is not worker
    await asyncio.wait_for(waiting, 2)  # the socket closed: it ended without the linger
