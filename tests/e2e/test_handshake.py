"""Connection and handshake: CONFORMANCE table H, rows H1-H7 (OCPP-J 1.6 §3, Security WP §2).

H8 (AuthorizationKey rotation through ChangeConfiguration) needs the REST API and is not covered
here. Every test runs the real server (uvicorn on 127.0.0.1) on SQLite and on PostgreSQL; clients
are ``websockets`` connections and the ``ocpp`` package's ChargePoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from ocpp.v16 import call
from websockets.exceptions import InvalidStatus

from chargegrid.app import build_app
from chargegrid.config import Settings, UnknownChargePointPolicy
from chargegrid.gateway.connection import ConnectionClosed
from support import RunningServer, charge_point, raw_socket, running_server, serving

KEY = "0123456789abcdef0123"


# --- helpers -------------------------------------------------------------------------------------


def basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def handshake_status(url: str, **kwargs: Any) -> int:
    """Try a WebSocket upgrade; return 101 if it succeeded, else the refusing HTTP status."""
    kwargs.setdefault("subprotocols", [websockets.Subprotocol("ocpp1.6")])
    try:
        async with websockets.connect(url, compression=None, open_timeout=5, **kwargs) as ws:
            assert ws.response is not None
            return ws.response.status_code
    except InvalidStatus as exc:
        return exc.response.status_code


async def recv_json(ws: websockets.ClientConnection, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def heartbeat_works(ws: websockets.ClientConnection, message_id: str = "hb-1") -> None:
    """Send a Heartbeat CALL on a raw socket and insist on its CALLRESULT."""
    await ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
    reply = await recv_json(ws)
    assert reply[:2] == [3, message_id], reply
    assert "currentTime" in reply[2]


async def eventually(predicate: Any, seconds: float = 10.0) -> bool:
    """Poll an async predicate until it holds or ``seconds`` have passed (generous: the
    presence writes polled for go through the writer, which a slow machine can hold up for
    longer than 2 s)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        if await predicate():
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)


async def connected_flag(server: RunningServer, identity: str) -> bool:
    value = await server.scalar(
        "SELECT connected FROM charge_points WHERE identity = :identity", identity=identity
    )
    return bool(value)


@contextlib.asynccontextmanager
async def running_tls_server(
    settings: Settings, certfile: Path, keyfile: Path
) -> AsyncIterator[RunningServer]:
    """Like ``support.running_server``, but uvicorn terminates TLS (wss://)."""
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        lifespan="on",
        log_level="warning",
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
    )
    async with serving(config) as (_server, port):
        yield RunningServer(app, "127.0.0.1", port)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(keyfile),
            "-out",
            str(certfile),
        ],
        check=True,
        capture_output=True,
    )
    return certfile, keyfile


# --- H1 ------------------------------------------------------------------------------------------


async def test_h1_percent_encoded_identity_is_decoded(server: RunningServer) -> None:
    """CONFORMANCE H1: ``/ocpp/RDAM%20123`` serves the charge point registered as ``RDAM 123``."""
    await server.add_charge_point("RDAM 123")
    async with raw_socket(server, "RDAM%20123") as ws:
        await heartbeat_works(ws)
        assert "RDAM 123" in server.node.registry
        assert "RDAM%20123" not in server.node.registry
        assert await eventually(lambda: connected_flag(server, "RDAM 123"))
    # The ocpp package's client percent-encodes the identity itself.
    async with charge_point(server, "RDAM 123") as cp:
        boot = await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        assert boot.status == "Accepted"
    assert (
        await server.scalar("SELECT vendor FROM charge_points WHERE identity = 'RDAM 123'") == "V"
    )


async def test_h1_percent_encoded_utf8_and_slash(server: RunningServer) -> None:
    """CONFORMANCE H1: percent-encoded UTF-8 is decoded; an encoded '/' names no charge point."""
    await server.add_charge_point("Zürich-1")
    async with raw_socket(server, "Z%C3%BCrich-1") as ws:
        await heartbeat_works(ws)
        assert "Zürich-1" in server.node.registry
    assert await handshake_status(server.ws_url + "Z%C3%BCrich-1%2Fx") == 404


# --- H2 / H3 -------------------------------------------------------------------------------------


async def test_h2_ocpp16_subprotocol_is_selected(server: RunningServer) -> None:
    """CONFORMANCE H2: 101 with ``Sec-WebSocket-Protocol: ocpp1.6`` when it is offered."""
    await server.add_charge_point("CP1")
    for offered in (["ocpp1.6"], ["ocpp2.0.1", "ocpp1.6"], ["ocpp1.5", "ocpp1.6", "ocpp2.0"]):
        async with websockets.connect(
            server.ws_url + "CP1",
            subprotocols=[websockets.Subprotocol(name) for name in offered],
            compression=None,
        ) as ws:
            assert ws.response is not None
            assert ws.response.status_code == 101, offered
            assert ws.response.headers["Sec-WebSocket-Protocol"] == "ocpp1.6", offered
            assert ws.subprotocol == "ocpp1.6"
            await heartbeat_works(ws)


async def test_h3_no_supported_subprotocol_is_refused_400(server: RunningServer) -> None:
    """CONFORMANCE H3 (TC_088): no ``ocpp1.6`` offered -> HTTP 400 before the upgrade."""
    await server.add_charge_point("CP1")
    statuses: dict[str, int] = {}
    for offered in (["ocpp2.0.1"], ["ocpp1.5", "ocpp2.0"], None):
        subprotocols = None if offered is None else [websockets.Subprotocol(p) for p in offered]
        status = await handshake_status(server.ws_url + "CP1", subprotocols=subprotocols)
        statuses[repr(offered)] = status
    assert statuses == {
        "['ocpp2.0.1']": 400,
        "['ocpp1.5', 'ocpp2.0']": 400,
        "None": 400,
    }
    assert "CP1" not in server.node.registry
    assert await server.scalar("SELECT connected FROM charge_points") in (False, 0)


# --- H4 ------------------------------------------------------------------------------------------


async def test_h4_unknown_identity_is_refused_404(server: RunningServer) -> None:
    """CONFORMANCE H4: an unknown identity gets HTTP 404 before the upgrade; nothing is stored."""
    await server.add_charge_point("CP1")
    assert await handshake_status(server.ws_url + "NOPE") == 404
    assert await handshake_status(server.ws_url + "cp1") == 404  # identities are case-sensitive
    assert await server.scalar("SELECT count(*) FROM charge_points") == 1
    assert len(server.node.registry) == 0


async def test_h4_auto_registration_accept(settings: Settings) -> None:
    """CONFORMANCE H4: with auto-registration ``accept`` an unknown CP is registered, Accepted."""
    custom = settings.model_copy(update={"unknown_charge_points": UnknownChargePointPolicy.ACCEPT})
    async with running_server(custom) as srv, raw_socket(srv, "NEW1") as ws:
        await heartbeat_works(ws)  # Accepted: calls work without a boot
        await ws.send(
            json.dumps(
                [2, "b1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
            )
        )
        reply = await recv_json(ws)
        assert reply[:2] == [3, "b1"]
        assert reply[2]["status"] == "Accepted"
        rows = await srv.rows(
            "SELECT registration_status, security_profile FROM charge_points "
            "WHERE identity = 'NEW1'"
        )
        assert [dict(r) for r in rows] == [
            {"registration_status": "Accepted", "security_profile": 0}
        ]


async def test_h4_auto_registration_pending(settings: Settings) -> None:
    """CONFORMANCE H4 (+ L2, R10): with ``pending`` an unknown CP is registered as Pending."""
    custom = settings.model_copy(update={"unknown_charge_points": UnknownChargePointPolicy.PENDING})
    async with running_server(custom) as srv, raw_socket(srv, "NEW2") as ws:
        await ws.send(json.dumps([2, "h1", "Heartbeat", {}]))
        reply = await recv_json(ws)
        assert reply[:3] == [4, "h1", "SecurityError"]
        await ws.send(
            json.dumps(
                [2, "b1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
            )
        )
        reply = await recv_json(ws)
        assert reply[:2] == [3, "b1"]
        assert reply[2]["status"] == "Pending"
        assert (
            await srv.scalar(
                "SELECT registration_status FROM charge_points WHERE identity = 'NEW2'"
            )
            == "Pending"
        )


# --- H5 ------------------------------------------------------------------------------------------


async def test_h5_profile1_without_authorization_is_refused_401(server: RunningServer) -> None:
    """CONFORMANCE H5 (TC_085): profile 1 and no Authorization header -> 401 before the upgrade."""
    await server.add_charge_point("CP2", security_profile=1, auth_key=KEY)
    try:
        async with websockets.connect(
            server.ws_url + "CP2",
            subprotocols=[websockets.Subprotocol("ocpp1.6")],
            compression=None,
        ):
            pytest.fail("the upgrade was accepted without credentials")
    except InvalidStatus as exc:
        assert exc.response.status_code == 401
        assert exc.response.headers["WWW-Authenticate"].lower().startswith("basic")
    assert "CP2" not in server.node.registry


async def test_h5_profile1_wrong_key_is_refused_401(server: RunningServer) -> None:
    """CONFORMANCE H5: a wrong AuthorizationKey -> 401, also after the right one was used once."""
    await server.add_charge_point("CP2", security_profile=1, auth_key=KEY)
    url = server.ws_url + "CP2"
    wrong = "0123456789abcdef0124"
    assert await handshake_status(url, additional_headers=basic("CP2", wrong)) == 401
    assert await handshake_status(url, additional_headers=basic("CP2", "")) == 401
    assert await handshake_status(url, additional_headers=basic("CP2", KEY.upper())) == 401
    # Not Basic, or not base64: refused as well.
    assert await handshake_status(url, additional_headers={"Authorization": f"Bearer {KEY}"}) == 401
    assert await handshake_status(url, additional_headers={"Authorization": "Basic ***"}) == 401
    # A successful login must not open the door for a wrong key afterwards.
    assert await handshake_status(url, additional_headers=basic("CP2", KEY)) == 101
    assert await handshake_status(url, additional_headers=basic("CP2", wrong)) == 401


async def test_h5_profile1_username_must_equal_identity(server: RunningServer) -> None:
    """CONFORMANCE H5 (A00.FR.204): the Basic username must be the CP identity."""
    await server.add_charge_point("CP2", security_profile=1, auth_key=KEY)
    await server.add_charge_point("CP3", security_profile=1, auth_key=KEY)
    url = server.ws_url + "CP2"
    # CP3's valid credentials (same key!) do not open CP2.
    assert await handshake_status(url, additional_headers=basic("CP3", KEY)) == 401
    assert await handshake_status(url, additional_headers=basic("cp2", KEY)) == 401
    assert await handshake_status(url, additional_headers=basic("", KEY)) == 401
    assert "CP2" not in server.node.registry


async def test_h5_profile1_right_key_is_accepted(server: RunningServer) -> None:
    """CONFORMANCE H5: the right credentials -> 101; a 40-char hex key is taken as sent."""
    hex_key = "00112233445566778899aabbccddeeff00112233"
    await server.add_charge_point("CP2", security_profile=1, auth_key=KEY)
    await server.add_charge_point("CP4", security_profile=1, auth_key=hex_key)
    assert (
        await handshake_status(server.ws_url + "CP2", additional_headers=basic("CP2", KEY)) == 101
    )
    async with charge_point(server, "CP4", auth_key=hex_key) as cp:
        boot = await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        assert boot.status == "Accepted"
        assert "CP4" in server.node.registry


async def test_h5_auth_key_is_stored_as_salted_hash(server: RunningServer) -> None:
    """CONFORMANCE H5: the AuthorizationKey is never stored; equal keys hash differently."""
    await server.add_charge_point("CP2", security_profile=1, auth_key=KEY)
    await server.add_charge_point("CP3", security_profile=1, auth_key=KEY)
    rows = await server.rows("SELECT identity, auth_key_hash FROM charge_points ORDER BY identity")
    hashes = {row["identity"]: row["auth_key_hash"] for row in rows}
    assert set(hashes) == {"CP2", "CP3"}
    for stored in hashes.values():
        assert stored
        assert KEY not in stored
        assert KEY.encode().hex() not in stored
        assert base64.b64encode(KEY.encode()).decode() not in stored
    assert hashes["CP2"] != hashes["CP3"]
    # Both still log in with the one key.
    for identity in ("CP2", "CP3"):
        status = await handshake_status(
            server.ws_url + identity, additional_headers=basic(identity, KEY)
        )
        assert status == 101


# --- H6 ------------------------------------------------------------------------------------------


async def test_h6_profile2_over_plain_ws_is_refused_403(server: RunningServer) -> None:
    """CONFORMANCE H6 (A00.FR.002): a profile-2 CP over ws:// is refused, even with its key."""
    await server.add_charge_point("CP5", security_profile=2, auth_key=KEY)
    url = server.ws_url + "CP5"
    assert await handshake_status(url, additional_headers=basic("CP5", KEY)) == 403
    assert await handshake_status(url) in (401, 403)
    assert "CP5" not in server.node.registry


async def test_h6_profile2_over_tls(settings: Settings, tmp_path: Path) -> None:
    """CONFORMANCE H6/H5: over wss:// a profile-2 CP gets in with its key, not without it."""
    certfile, keyfile = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(certfile))
    custom = settings.model_copy(update={"tls_certfile": certfile, "tls_keyfile": keyfile})
    async with running_tls_server(custom, certfile, keyfile) as srv:
        await srv.add_charge_point("CP5", security_profile=2, auth_key=KEY)
        await srv.add_charge_point("CP6", security_profile=0)
        url = f"wss://127.0.0.1:{srv.port}/ocpp/"
        assert await handshake_status(url + "CP5", ssl=context) == 401
        wrong = basic("CP5", "0123456789abcdef0124")
        assert await handshake_status(url + "CP5", ssl=context, additional_headers=wrong) == 401
        async with websockets.connect(
            url + "CP5",
            ssl=context,
            subprotocols=[websockets.Subprotocol("ocpp1.6")],
            additional_headers=basic("CP5", KEY),
            compression=None,
        ) as ws:
            assert ws.subprotocol == "ocpp1.6"
            await heartbeat_works(ws)
            assert "CP5" in srv.node.registry


# --- H7 ------------------------------------------------------------------------------------------


async def test_h7_new_socket_wins_and_old_cleanup_keeps_it(server: RunningServer) -> None:
    """CONFORMANCE H7: the second socket replaces the first; the first's cleanup leaves it be."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as first:
        await heartbeat_works(first, "first-1")
        old = server.node.registry.get("CP1")
        assert old is not None
        # A CSMS -> CP call in flight on the old socket fails when it is replaced.
        stranded = asyncio.create_task(old.call("GetConfiguration", {}, timeout=10))
        assert (await recv_json(first))[2] == "GetConfiguration"
        async with raw_socket(server, "CP1") as second:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(stranded, 3)
            # The server closes the first socket.
            await asyncio.wait_for(first.wait_closed(), 5)
            with pytest.raises(websockets.ConnectionClosed):
                await first.recv()
            assert first.close_code is not None
            # Give the old socket's cleanup (unregister, presence) time to run.
            await asyncio.sleep(0.5)
            live = server.node.registry.get("CP1")
            assert live is not None
            assert live is not old
            assert not live.closed
            assert await connected_flag(server, "CP1")
            await heartbeat_works(second, "second-1")
            # A CSMS -> CP call goes out on the new socket.
            outgoing = asyncio.create_task(live.call("GetConfiguration", {}, timeout=5))
            frame = await recv_json(second)
            assert frame[0] == 2
            assert frame[2] == "GetConfiguration"
            await second.send(json.dumps([3, frame[1], {"unknownKey": []}]))
            assert await outgoing == {"unknownKey": []}
            await asyncio.sleep(0.3)  # liveness/presence flushes must not flip it either
            assert await connected_flag(server, "CP1")
            assert "CP1" in server.node.registry


async def test_h7_live_socket_disconnect_marks_disconnected(server: RunningServer) -> None:
    """CONFORMANCE H7 (reverse): when the live socket goes, ``connected`` becomes false."""
    await server.add_charge_point("CP1")
    async with raw_socket(server, "CP1") as first:
        await heartbeat_works(first, "first-1")
        async with raw_socket(server, "CP1") as second:
            await heartbeat_works(second, "second-1")
            assert await eventually(lambda: connected_flag(server, "CP1"))

    async def gone() -> bool:
        return "CP1" not in server.node.registry and not await connected_flag(server, "CP1")

    assert await eventually(gone)
    disconnected_at = await server.scalar(
        "SELECT disconnected_at FROM charge_points WHERE identity = 'CP1'"
    )
    assert disconnected_at is not None
    # Reconnecting afterwards works and is stored as connected again.
    async with raw_socket(server, "CP1") as third:
        await heartbeat_works(third, "third-1")
        assert await eventually(lambda: connected_flag(server, "CP1"))
