"""The WebSocket handshake as a chain of small filters (CONFORMANCE H1-H6).

Each filter either passes or refuses with the HTTP status the spec asks for, before the upgrade:
no OCPP subprotocol -> 400 (OCPP-J 1.6 §3.1.2, TC_088); unknown identity -> 404 unless
auto-registration is on; missing or wrong credentials -> 401 (Security Whitepaper A00.FR.204,
TC_085); a connection that does not match the charge point's security profile -> 403
(A00.FR.002), which includes a profile 3 charge point without a valid client certificate of its
own (A00.FR.405, A00.FR.407).

Behind a TLS-terminating proxy the node sees plain HTTP; whether the charge point used TLS, and
which client certificate it presented, arrive as request headers. They are believed only when
the TCP peer is one of ``trusted_proxies`` (default: nobody), so a charge point connecting to a
node directly cannot claim TLS or a certificate by sending the headers itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.clock import Clock
from chargegrid.config import Settings, UnknownChargePointPolicy
from chargegrid.credentials import verify_secret
from chargegrid.gateway.client_cert import (
    CertificateError,
    TrustedProxies,
    check_certificate,
    load_ca_bundle,
    parse_forwarded_certificate,
)
from chargegrid.store import charge_points as cp_store
from chargegrid.store.database import writing

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp1.6"
MAX_IDENTITY_LENGTH = 255
# X-Forwarded-Proto values that mean the charge point's connection to the proxy was TLS.
TLS_SCHEMES = frozenset({"https", "wss"})


@dataclass(frozen=True, slots=True)
class Admitted:
    charge_point_id: int
    identity: str
    registration_status: str
    security_profile: int
    trace_level: str | None = None  # as stored (observability/trace.py), read with the rest


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    reason: str
    www_authenticate: bool = False


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the transport saw of the upgrade request."""

    identity: str  # already percent-decoded (CONFORMANCE H1)
    subprotocols: Sequence[str]
    authorization: str | None  # the Authorization header, if any
    tls: bool  # this node's own listener terminated TLS
    peer: str | None = None  # the TCP peer's address: a proxy's, if there is one
    # Set by a proxy in front, and believed only from trusted_proxies; None when absent or sent
    # more than once (a header repeated is not one a proxy set).
    forwarded_proto: str | None = None
    forwarded_client_cert: str | None = None


class Admission:
    """Decides whether a WebSocket upgrade for a charge point is accepted."""

    def __init__(self, engine: AsyncEngine, settings: Settings, clock: Clock) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._proxies = TrustedProxies(settings.trusted_proxies)
        self.client_cert_header = settings.client_cert_header.lower()
        self._issuers: list[x509.Certificate] = (
            load_ca_bundle(settings.client_cert_ca_file) if settings.client_cert_ca_file else []
        )
        # Direct TLS with tls_client_ca_file: the TLS layer refused every client without a
        # certificate from those CAs before the request reached us.
        self._direct_client_certs = bool(settings.tls_certfile and settings.tls_client_ca_file)
        # identity -> (stored hash, sha256 of a key that verified against it): a reconnecting
        # charge point is checked with one SHA-256 instead of a full PBKDF2 run.
        self._verified: dict[str, tuple[str, bytes]] = {}
        self._reads = _AuthReads(engine)

    def forget(self, identity: str) -> None:
        """Drop cached credentials, e.g. after the key was rotated."""
        self._verified.pop(identity, None)

    async def admit(self, handshake: Handshake) -> Admitted | Refused:
        identity = handshake.identity
        if not identity or len(identity) > MAX_IDENTITY_LENGTH or "/" in identity:
            return Refused(404, "no such charge point")
        if SUBPROTOCOL not in handshake.subprotocols:
            return Refused(400, f"the {SUBPROTOCOL} subprotocol is required")

        record = await self._reads.get(identity)
        if record is None:
            record = await self._register_unknown(identity)
            if record is None:
                return Refused(404, "unknown charge point")
        charge_point_id, profile, registration_status, key_hash, trace_level = record

        via_proxy = self._proxies.trusts(handshake.peer)
        tls = handshake.tls or (
            via_proxy
            and handshake.forwarded_proto is not None
            and handshake.forwarded_proto.strip().lower() in TLS_SCHEMES
        )
        if profile >= 2 and not tls:
            return Refused(403, f"security profile {profile} requires TLS")
        if profile >= 3:
            # Whitepaper §2.5, Table 8: a profile 3 charge point authenticates with its client
            # certificate, not with HTTP Basic.
            refusal = self._check_client_certificate(identity, handshake, via_proxy)
        elif profile >= 1:
            refusal = await self._check_basic_auth(identity, handshake.authorization, key_hash)
        else:
            refusal = None
        if refusal is not None:
            return refusal
        return Admitted(charge_point_id, identity, registration_status, profile, trace_level)

    def _check_client_certificate(
        self, identity: str, handshake: Handshake, via_proxy: bool
    ) -> Refused | None:
        """Security Profile 3 (Whitepaper §2.5.1). 403 for every failure: there is no HTTP
        credential the charge point could retry with, so 401 and its challenge do not apply."""
        header = handshake.forwarded_client_cert
        if via_proxy and header:
            try:
                certificate = parse_forwarded_certificate(header)
            except CertificateError as error:
                return self._certificate_refused(identity, str(error))
            problem = check_certificate(
                certificate,
                identity=identity,
                now=self._clock.now(),
                organization=self._settings.client_cert_organization,
                issuers=self._issuers,
            )
            if problem is not None:
                return self._certificate_refused(identity, problem)
            return None
        if handshake.tls and not via_proxy and self._direct_client_certs:
            # The node's own TLS listener required a certificate from tls_client_ca_file
            # (CERT_REQUIRED): the chain is verified (A00.FR.403), but uvicorn does not pass the
            # certificate on, so its CN cannot be compared with the identity (A00.FR.405).
            # docs/deployment.md says so and recommends the proxy for profile 3.
            return None
        if header and not via_proxy:
            reason = f"client certificate header from untrusted peer {handshake.peer} ignored"
        else:
            reason = "no client certificate"
        return self._certificate_refused(identity, reason)

    @staticmethod
    def _certificate_refused(identity: str, reason: str) -> Refused:
        # Whitepaper A00.FR.408: log the refusal as a security event (never the certificate).
        log.warning("security event: charge point %r refused: %s", identity, reason)
        return Refused(403, "security profile 3 requires a valid client certificate")

    async def _register_unknown(self, identity: str) -> cp_store.AuthRecord | None:
        policy = self._settings.unknown_charge_points
        if policy == UnknownChargePointPolicy.REJECT:
            return None
        status = "Accepted" if policy == UnknownChargePointPolicy.ACCEPT else "Pending"
        try:
            async with writing(self._engine).begin() as connection:
                charge_point_id = await cp_store.add(
                    connection, identity, now=self._clock.now(), registration_status=status
                )
        except cp_store.ChargePointExists:
            async with self._engine.connect() as connection:
                return await cp_store.get_auth(connection, identity)
        log.info("auto-registered charge point %s as %s", identity, status)
        return cp_store.AuthRecord(charge_point_id, 0, status, None, None)

    async def _check_basic_auth(
        self, identity: str, header: str | None, key_hash: str | None
    ) -> Refused | None:
        unauthorized = Refused(401, "invalid credentials", www_authenticate=True)
        if header is None or key_hash is None:
            return unauthorized
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return unauthorized
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return unauthorized
        username, separator, password = decoded.partition(":")
        # Security Whitepaper A00.FR.204: the username is the charge point identity.
        if not separator or username != identity:
            return unauthorized
        fingerprint = hashlib.sha256(password.encode()).digest()
        cached = self._verified.get(identity)
        if (
            cached is not None
            and cached[0] == key_hash
            and hmac.compare_digest(cached[1], fingerprint)
        ):
            return None
        if not await asyncio.to_thread(verify_secret, password, key_hash):
            log.warning("charge point %s: wrong AuthorizationKey", identity)
            return unauthorized
        self._verified[identity] = (key_hash, fingerprint)
        return None


class _AuthReads:
    """The charge point rows of concurrent handshakes, read together.

    Each read on its own costs a pooled connection's ``BEGIN``, ``SELECT`` and ``ROLLBACK``,
    trips to the database driver that made up ~40 % of the event loop's Python while 5,000
    charge points connected at once (docs/benchmarks.md, connection storm). Handshakes that
    arrive while a read is under way wait for the next one, which takes them all in one query
    per chunk (store/charge_points.get_auth_many); a handshake on its own is read at once, as
    before."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._waiting: dict[str, list[asyncio.Future[cp_store.AuthRecord | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, identity: str) -> cp_store.AuthRecord | None:
        future: asyncio.Future[cp_store.AuthRecord | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.setdefault(identity, []).append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._read_all(), name="admission-reads")
        return await future

    async def _read_all(self) -> None:
        try:
            while self._waiting:
                waiting, self._waiting = self._waiting, {}
                try:
                    async with self._engine.connect() as connection:
                        found = await cp_store.get_auth_many(connection, waiting)
                except Exception as error:  # each handshake fails as its own read would have
                    for futures in waiting.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(error)
                                future.exception()  # retrieved: its handshake may be gone
                    continue
                for identity, futures in waiting.items():
                    record = found.get(identity)
                    for future in futures:
                        if not future.done():  # (a handshake that timed out cancelled it)
                            future.set_result(record)
        finally:
            self._task = None
