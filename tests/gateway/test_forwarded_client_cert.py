"""Security Profiles 2 and 3 behind a TLS-terminating proxy: the forwarded headers.

The real application runs under uvicorn on 127.0.0.1 exactly as ``chargegrid serve`` runs it
(``proxy_headers=False``); the test plays the proxy by sending the headers a proxy would set
(``X-Forwarded-Proto``, ``X-SSL-Client-Cert`` with nginx's URL-encoded PEM). Certificates come
from a CA made in the test (tests/certsupport.py). A peer outside ``trusted_proxies`` is a client
connecting from 127.0.0.2, a real second loopback address. SQLite only: admission reads one row
per handshake and does not depend on the database.

Security Whitepaper (OCPP 1.6, edition 3): §2.5 profile 3, A00.FR.403-408, A00.FR.511.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
import uvicorn
import websockets
from cryptography.hazmat.primitives import serialization
from websockets.exceptions import InvalidStatus

from certsupport import CertificateAuthority, Issued
from chargegrid.app import build_app
from chargegrid.config import Settings
from chargegrid.store import charge_points as cp_store
from chargegrid.store.database import writing
from support import RunningServer, serving

KEY = "0123456789abcdef0123"
CERT_HEADER = "X-SSL-Client-Cert"
HTTPS = {"X-Forwarded-Proto": "https"}
UNTRUSTED_SOURCE = ("127.0.0.2", 0)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'chargegrid.db'}",
        "sqlite_synchronous": "NORMAL",
        "liveness_flush_seconds": 0.1,
        "trusted_proxies": ["127.0.0.1"],
        **overrides,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def proxied_node(settings: Settings) -> AsyncIterator[RunningServer]:
    """The application under uvicorn as ``chargegrid serve`` configures it behind a proxy."""
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        proxy_headers=False,  # as cli.serve: the gateway judges forwarded headers itself
        lifespan="on",
        log_level="warning",
    )
    async with serving(config) as (_server, port):
        running = RunningServer(app, "127.0.0.1", port)
        async with writing(running.node.engine).begin() as connection:
            # Profile 3 is provisioned in the store directly (admin accepts profiles 0-2).
            for identity in ("CP3", "CP3B"):
                await cp_store.add(connection, identity, now=datetime.now(UTC), security_profile=3)
        await running.add_charge_point("CP2", security_profile=2, auth_key=KEY)
        yield running


def basic(identity: str, key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{identity}:{key}".encode()).decode()}


def forwarded(issued: Issued | None, **extra: str) -> dict[str, str]:
    """The headers a TLS-terminating nginx sets: proto, and the escaped client certificate."""
    headers = {**HTTPS, **extra}
    if issued is not None:
        headers[CERT_HEADER] = issued.escaped
    return headers


async def upgrade_status(server: RunningServer, identity: str, headers: Any, **kwargs: Any) -> int:
    """Try the WebSocket upgrade; 101 when accepted, else the refusing HTTP status."""
    try:
        async with websockets.connect(
            server.ws_url + identity,
            subprotocols=[websockets.Subprotocol("ocpp1.6")],
            additional_headers=headers,
            compression=None,
            open_timeout=5,
            **kwargs,
        ) as ws:
            assert ws.response is not None
            return ws.response.status_code
    except InvalidStatus as exc:
        return exc.response.status_code


async def boot(server: RunningServer, identity: str, headers: Any) -> str:
    """Connect, send a BootNotification, return its status."""
    async with websockets.connect(
        server.ws_url + identity,
        subprotocols=[websockets.Subprotocol("ocpp1.6")],
        additional_headers=headers,
        compression=None,
        open_timeout=5,
    ) as ws:
        request = {"chargePointVendor": "chargegrid-test", "chargePointModel": "profile3"}
        await ws.send(json.dumps([2, "boot-1", "BootNotification", request]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply[:2] == [3, "boot-1"], reply
        return str(reply[2]["status"])


# --- profile 3 through a trusted proxy -------------------------------------------------------


async def test_profile3_good_certificate_from_trusted_proxy_is_accepted(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    async with proxied_node(make_settings(tmp_path)) as server:
        assert await boot(server, "CP3", forwarded(ca.issue("CP3"))) == "Accepted"


async def test_profile3_certificate_as_base64_der_haproxy_style(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    der = ca.issue("CP3").certificate.public_bytes(serialization.Encoding.DER)
    header = '"' + base64.b64encode(der).decode() + '"'  # %{+Q}[ssl_c_der,base64]
    async with proxied_node(make_settings(tmp_path)) as server:
        assert await upgrade_status(server, "CP3", {**HTTPS, CERT_HEADER: header}) == 101


async def test_profile3_needs_no_basic_auth_and_ignores_it(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    async with proxied_node(make_settings(tmp_path)) as server:
        headers = forwarded(ca.issue("CP3"), **basic("CP3", "not-the-key-at-all"))
        assert await upgrade_status(server, "CP3", headers) == 101


async def test_profile3_without_certificate_is_refused_403(tmp_path: Path) -> None:
    async with proxied_node(make_settings(tmp_path)) as server:
        assert await upgrade_status(server, "CP3", forwarded(None)) == 403
        assert await upgrade_status(server, "CP3", {**HTTPS, CERT_HEADER: ""}) == 403
        # Basic credentials are no substitute for the certificate (A00.FR.401).
        assert await upgrade_status(server, "CP3", forwarded(None, **basic("CP3", KEY))) == 403


async def test_profile3_certificate_of_another_identity_is_refused_403(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    async with proxied_node(make_settings(tmp_path)) as server:
        # A valid certificate, but CP3B's: it must not open CP3 (A00.FR.405).
        assert await upgrade_status(server, "CP3", forwarded(ca.issue("CP3B"))) == 403
        assert await upgrade_status(server, "CP3B", forwarded(ca.issue("CP3B"))) == 101
        # Case matters: the CN is compared with the identity as it is.
        assert await upgrade_status(server, "CP3", forwarded(ca.issue("cp3"))) == 403


async def test_profile3_expired_or_not_yet_valid_certificate_is_refused_403(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    now = datetime.now(UTC)
    expired = ca.issue(
        "CP3", not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)
    )
    future = ca.issue("CP3", not_before=now + timedelta(days=1), not_after=now + timedelta(days=2))
    async with proxied_node(make_settings(tmp_path)) as server:
        assert await upgrade_status(server, "CP3", forwarded(expired)) == 403
        assert await upgrade_status(server, "CP3", forwarded(future)) == 403


@pytest.mark.parametrize(
    "garbage",
    [
        "not a certificate",
        "-----BEGIN%20CERTIFICATE-----%0AMIIB",  # truncated
        "-----BEGIN CERTIFICATE-----\tAAAA\t-----END CERTIFICATE-----",  # base64, not DER
        base64.b64encode(b"\x30\x03\x02\x01\x01").decode(),  # DER, not a certificate
        "%ZZ%00",
        "A" * 6000,  # base64 of something that is not DER
    ],
)
async def test_profile3_garbage_certificate_header_is_refused_403(
    tmp_path: Path, garbage: str
) -> None:
    async with proxied_node(make_settings(tmp_path)) as server:
        assert await upgrade_status(server, "CP3", {**HTTPS, CERT_HEADER: garbage}) == 403


async def test_profile3_without_forwarded_tls_is_refused_403(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    issued = ca.issue("CP3")
    async with proxied_node(make_settings(tmp_path)) as server:
        assert await upgrade_status(server, "CP3", {CERT_HEADER: issued.escaped}) == 403
        plain = {"X-Forwarded-Proto": "http", CERT_HEADER: issued.escaped}
        assert await upgrade_status(server, "CP3", plain) == 403


async def test_repeated_forwarded_headers_are_not_believed(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    """A proxy sets its header once, replacing the client's; two copies are not the proxy's."""
    good = ca.issue("CP3")
    async with proxied_node(make_settings(tmp_path)) as server:
        twice = [*HTTPS.items(), (CERT_HEADER, good.escaped), (CERT_HEADER, good.escaped)]
        assert await upgrade_status(server, "CP3", twice) == 403
        proto_twice = [("X-Forwarded-Proto", "https"), *forwarded(good).items()]
        assert await upgrade_status(server, "CP3", proto_twice) == 403


# --- nobody else's headers are believed --------------------------------------------------------


async def test_spoofed_headers_from_untrusted_peer_grant_nothing(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    good = ca.issue("CP3")
    async with proxied_node(make_settings(tmp_path)) as server:
        # The same headers that open CP3 from the trusted proxy (127.0.0.1) ...
        assert await upgrade_status(server, "CP3", forwarded(good)) == 101
        # ... grant nothing to a peer that is not a trusted proxy (127.0.0.2).
        spoofed = forwarded(good)
        assert await upgrade_status(server, "CP3", spoofed, local_addr=UNTRUSTED_SOURCE) == 403
        # Nor does the forwarded TLS claim make a profile 2 charge point's plain ws acceptable.
        profile2 = {**HTTPS, **basic("CP2", KEY)}
        assert await upgrade_status(server, "CP2", profile2, local_addr=UNTRUSTED_SOURCE) == 403
        assert await upgrade_status(server, "CP2", profile2) == 101


async def test_no_trusted_proxies_by_default(tmp_path: Path, ca: CertificateAuthority) -> None:
    assert Settings().trusted_proxies == []
    async with proxied_node(make_settings(tmp_path, trusted_proxies=[])) as server:
        assert await upgrade_status(server, "CP3", forwarded(ca.issue("CP3"))) == 403
        assert await upgrade_status(server, "CP2", {**HTTPS, **basic("CP2", KEY)}) == 403


async def test_trusted_proxies_accept_networks(tmp_path: Path, ca: CertificateAuthority) -> None:
    settings = make_settings(tmp_path, trusted_proxies=["10.1.2.3", "127.0.0.0/30"])
    async with proxied_node(settings) as server:
        headers = forwarded(ca.issue("CP3"))
        assert await upgrade_status(server, "CP3", headers, local_addr=UNTRUSTED_SOURCE) == 101


# --- profile 2 through a trusted proxy -----------------------------------------------------------


async def test_profile2_behind_proxy_needs_forwarded_tls_and_basic_auth(tmp_path: Path) -> None:
    async with proxied_node(make_settings(tmp_path)) as server:
        assert await upgrade_status(server, "CP2", {**HTTPS, **basic("CP2", KEY)}) == 101
        assert await upgrade_status(server, "CP2", {"X-Forwarded-Proto": "wss"}) == 401
        assert await upgrade_status(server, "CP2", {**HTTPS, **basic("CP2", "x" * 20)}) == 401
        assert await upgrade_status(server, "CP2", basic("CP2", KEY)) == 403  # no TLS


# --- optional checks: issuing CA and organization -----------------------------------------------


async def test_client_cert_ca_file_refuses_certificates_of_other_cas(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    other = CertificateAuthority("chargegrid test CA")  # same name, another key
    settings = make_settings(tmp_path, client_cert_ca_file=ca.write(tmp_path))
    async with proxied_node(settings) as server:
        assert await upgrade_status(server, "CP3", forwarded(ca.issue("CP3"))) == 101
        assert await upgrade_status(server, "CP3", forwarded(other.issue("CP3"))) == 403


async def test_client_cert_organization_is_checked_when_configured(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    settings = make_settings(tmp_path, client_cert_organization="chargegrid test CPO")
    async with proxied_node(settings) as server:
        assert await upgrade_status(server, "CP3", forwarded(ca.issue("CP3"))) == 101
        wrong = ca.issue("CP3", organization="Someone Else")
        assert await upgrade_status(server, "CP3", forwarded(wrong)) == 403
        no_organization = ca.issue("CP3", organization=None)
        assert await upgrade_status(server, "CP3", forwarded(no_organization)) == 403


async def test_custom_certificate_header_name(tmp_path: Path, ca: CertificateAuthority) -> None:
    settings = make_settings(tmp_path, client_cert_header="X-Client-Cert")
    async with proxied_node(settings) as server:
        issued = ca.issue("CP3")
        assert await upgrade_status(server, "CP3", forwarded(issued)) == 403
        headers = {**HTTPS, "X-Client-Cert": issued.escaped}
        assert await upgrade_status(server, "CP3", headers) == 101


async def test_refusal_log_names_no_certificate(
    tmp_path: Path, ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    issued = ca.issue("CP3B")
    async with proxied_node(make_settings(tmp_path)) as server:
        assert await upgrade_status(server, "CP3", forwarded(issued)) == 403
    assert "security event" in caplog.text
    body = issued.pem.splitlines()[1]
    assert body not in caplog.text
    assert body[:40] not in caplog.text


# --- settings ------------------------------------------------------------------------------------


def test_trusted_proxies_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARGEGRID_TRUSTED_PROXIES", "10.0.0.2, 10.0.1.0/24,::1")
    assert Settings().trusted_proxies == ["10.0.0.2", "10.0.1.0/24", "::1"]
    monkeypatch.setenv("CHARGEGRID_TRUSTED_PROXIES", '["192.0.2.7"]')
    assert Settings().trusted_proxies == ["192.0.2.7"]
    monkeypatch.setenv("CHARGEGRID_TRUSTED_PROXIES", "")
    assert Settings().trusted_proxies == []


@pytest.mark.parametrize(
    "values",
    [
        {"trusted_proxies": ["proxy.example"]},
        {"trusted_proxies": ["10.0.0.0/33"]},
        {"client_cert_header": "X-Cert: injected"},
        {"tls_client_ca_file": "ca.pem"},  # without tls_certfile
    ],
)
def test_invalid_security_settings_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings(**values)
