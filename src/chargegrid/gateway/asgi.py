"""The OCPP endpoint as an ASGI application: ``ws://HOST:PORT/ocpp/{chargePointId}``.

A thin adapter: it turns the ASGI handshake into a :class:`Handshake` for the admission filters,
answers refusals with a plain HTTP response before the upgrade (the ASGI "WebSocket Denial
Response" extension), and feeds frames to a :class:`ChargePointConnection`.

The handshake carries the TCP peer's address as the server saw it: the trust decision on
forwarded headers (admission, ``trusted_proxies``) needs the proxy's own address, so the server
must not rewrite ``scope["client"]`` from X-Forwarded-For (``chargegrid serve`` runs uvicorn with
``proxy_headers=False``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import unquote

from sqlalchemy.exc import DBAPIError

from chargegrid.gateway.admission import SUBPROTOCOL, Admission, Admitted, Handshake, Refused
from chargegrid.gateway.connection import ChargePointConnection, Dispatch, Nowait
from chargegrid.gateway.observer import NO_OBSERVER, ConnectionObserver
from chargegrid.gateway.registry import ConnectionRegistry
from chargegrid.gateway.uvicorn_protocol import DIRECT_TEXT, TextSink
from chargegrid.ocpp.session import OcppSession

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _single_header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of header ``name`` if it occurs exactly once: a proxy sets its headers once
    (replacing any the client sent), so a repeated one was not (only) the proxy's."""
    values = [value for key, value in headers if key == name]
    return values[0].decode("latin-1") if len(values) == 1 else None


def _cannot_send_now(text: str) -> bool:
    return False


class _AsgiTransport:
    __slots__ = ("_send", "send_nowait")

    def __init__(self, send: Send) -> None:
        self._send = send
        # Replaced by the server's direct writer where it offers one (DIRECT_TEXT).
        self.send_nowait: Callable[[str], bool] = _cannot_send_now

    async def send(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


class Presence:
    """What happens when a charge point connects or disconnects (set by the composition root)."""

    async def connected(self, connection: ChargePointConnection) -> None:
        return None

    async def disconnected(self, connection: ChargePointConnection, reason: str) -> None:
        return None

    def activity(self, connection: ChargePointConnection) -> None:
        return None


class OcppGateway:
    """ASGI app for WebSocket scopes under ``prefix``."""

    def __init__(
        self,
        *,
        admission: Admission,
        registry: ConnectionRegistry[ChargePointConnection],
        dispatch: Dispatch,
        context_factory: Callable[[Admitted], Any],
        supported: Collection[str],
        presence: Presence,
        handshake_timeout: float = 10.0,
        reject_before_accepted: bool = True,
        prefix: str = "/ocpp/",
        observer: ConnectionObserver = NO_OBSERVER,
        nowait: Nowait | None = None,
    ) -> None:
        self.admission = admission
        self.registry = registry
        self._dispatch = dispatch
        self._nowait = nowait  # the hot path's answers without a coroutine, where allowed
        self._context_factory = context_factory
        self._supported = frozenset(supported)
        self._presence = presence
        self._handshake_timeout = handshake_timeout
        self._reject_before_accepted = reject_before_accepted
        self.prefix = prefix
        self._observer = observer  # observability: metrics and message trace

    def identity_from_path(self, raw_path: str) -> str | None:
        """The charge point identity: the percent-decoded last path segment (CONFORMANCE H1)."""
        if not raw_path.startswith(self.prefix):
            return None
        return unquote(raw_path[len(self.prefix) :])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError("OcppGateway serves WebSocket scopes only")
        raw = scope.get("raw_path")
        raw_path = raw.decode("latin-1").split("?", 1)[0] if raw else scope["path"]
        identity = self.identity_from_path(raw_path) or ""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        raw_headers = scope.get("headers") or []
        headers = dict(raw_headers)
        authorization = headers.get(b"authorization")
        client = scope.get("client")
        handshake = Handshake(
            identity=identity,
            subprotocols=scope.get("subprotocols") or [],
            authorization=authorization.decode("latin-1") if authorization else None,
            tls=scope.get("scheme") == "wss",
            peer=str(client[0]) if client else None,
            forwarded_proto=_single_header(raw_headers, b"x-forwarded-proto"),
            forwarded_client_cert=_single_header(
                raw_headers, self.admission.client_cert_header.encode("latin-1")
            ),
        )
        try:
            decision = await asyncio.wait_for(
                self.admission.admit(handshake), self._handshake_timeout
            )
        except TimeoutError:
            decision = Refused(503, "handshake timed out")
        except (DBAPIError, OSError) as error:
            # The database is unreachable (asyncpg raises OSError itself when it cannot connect):
            # a temporary condition the charge point should retry (RFC 9110 §15.6.4), not an
            # internal error.
            log.warning("handshake of %r: database unavailable: %s", identity, error)
            decision = Refused(503, "database unavailable")
        except Exception:
            log.exception("handshake of %r failed", identity)
            decision = Refused(500, "internal error")
        if isinstance(decision, Refused):
            log.info("refused %r: %d %s", identity, decision.status, decision.reason)
            self._observer.handshake(decision.status)
            await self._refuse(scope, send, decision)
            return
        await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL})
        self._observer.handshake(101)
        # This frame stays suspended for the connection's life: keep nothing of the handshake
        # (memory per idle connection, docs/benchmarks.md).
        direct = (scope.get("extensions") or {}).get(DIRECT_TEXT)
        del headers, handshake, message, scope
        await self._serve(decision, receive, send, direct)

    async def _serve(
        self,
        admitted: Admitted,
        receive: Receive,
        send: Send,
        direct: dict[str, Any] | None,
    ) -> None:
        context = self._context_factory(admitted)
        session = OcppSession(
            supported=self._supported,
            accepted=admitted.registration_status == "Accepted",
            reject_before_accepted=self._reject_before_accepted,
        )
        presence = self._presence
        transport = _AsgiTransport(send)
        connection = ChargePointConnection(
            admitted.identity,
            context,
            session,
            transport,
            self._dispatch,
            lambda: presence.activity(connection),
            self._observer,
            self._nowait,
        )
        replaced = self.registry.register(connection)
        if replaced is not None:
            # CONFORMANCE H7: the new socket wins.
            log.info("%s reconnected; closing its previous socket", admitted.identity)
            await replaced.close(1000, "replaced by a new connection")
        await presence.connected(connection)
        await self._observer.connected(connection, admitted)
        reason = "closed by charge point"
        try:
            if direct is not None:
                # The server hands text messages straight to the connection and writes its
                # answers at once (gateway/uvicorn_protocol.py); the loop below then sees only
                # the disconnect (and binary messages).
                transport.send_nowait = direct["send_text"]
                attach: Callable[[TextSink], None] = direct["attach"]
                attach(connection.receive_nowait)
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    await connection.receive(
                        text if text is not None else message.get("bytes", b"")
                    )
                elif kind == "websocket.disconnect":
                    reason = f"closed ({message.get('code', 1000)})"
                    break
        except Exception as error:  # the transport failed; still clean up below
            reason = f"transport error: {type(error).__name__}"
            log.info("%s: %s", admitted.identity, reason)
        finally:
            connection.connection_lost()
            self._observer.disconnected(connection)
            # Guarantee 3: a replaced socket must not unregister its successor.
            if self.registry.unregister(connection):
                await presence.disconnected(connection, reason)

    async def _refuse(self, scope: Scope, send: Send, refusal: Refused) -> None:
        if "websocket.http.response" in scope.get("extensions", {}):
            body = refusal.reason.encode()
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            if refusal.www_authenticate:
                headers.append((b"www-authenticate", b'Basic realm="chargegrid", charset="UTF-8"'))
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": refusal.status,
                    "headers": headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # servers without the extension answer a close before accept with 403
            await send({"type": "websocket.close", "code": 1008, "reason": refusal.reason})
