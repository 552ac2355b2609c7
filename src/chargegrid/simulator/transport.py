"""A lean OCPP-J client socket: the ``websockets`` sans-I/O protocol under an asyncio Protocol.

Why not ``websockets.connect``: its asyncio client runs a reader task and a keepalive task per
connection and hands every message through a queue. A fleet of thousands of simulated charge
points, and a load generator that must never be the bottleneck, want one task per charge point and
nothing else: here frames are parsed in ``data_received`` and dispatched by callback, answers to
our CALLs resolve a future, and CSMS-initiated CALLs are answered synchronously by a handler.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import quote

import orjson
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from chargegrid.ocpp.frames import encode_call, encode_error, encode_result

__all__ = [
    "CallErrorReceived",
    "ConnectionLost",
    "HandshakeRejected",
    "OcppSocket",
    "RequestHandler",
    "connect",
]

SUBPROTOCOL = Subprotocol("ocpp1.6")


class ConnectionLost(Exception):
    """The socket closed while a CALL was outstanding (its answer may or may not have been sent)."""


class HandshakeRejected(Exception):
    """The server refused the WebSocket upgrade (HTTP status in ``status``; 0: no answer)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"handshake rejected: {status} {reason}")
        self.status = status


class CallErrorReceived(Exception):
    """The server answered a CALL with a CALLERROR."""

    def __init__(self, action: str, code: str, description: str) -> None:
        super().__init__(f"{action}: {code} {description}")
        self.action = action
        self.code = code
        self.description = description


# A CSMS-initiated CALL: (action, payload) -> the CALLRESULT payload. Raising
# ``CallErrorReceived`` answers with a CALLERROR of that code instead.
RequestHandler = Callable[[str, dict[str, Any]], dict[str, Any]]


class OcppSocket(asyncio.Protocol):
    """One charge point's connection. Use :func:`connect` to open it."""

    def __init__(self, protocol: ClientProtocol, handler: RequestHandler | None) -> None:
        self.protocol = protocol
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        # message id -> (action, future of the CALLRESULT payload)
        self._pending: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._fragments: list[bytes] = []
        self.on_unexpected: Callable[[str], None] | None = None  # told about stray frames

    # asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's TCP transport has every method of asyncio.Transport
        # but is no subclass of it (an assert here failed every connection under uvloop).
        self.transport = cast(asyncio.Transport, transport)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self._handshake_done(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()
        if self.protocol.close_expected() and self.transport is not None:
            # The closing handshake is over on our side; the server closes TCP first normally,
            # but never leave the socket half-open if it does not.
            asyncio.get_running_loop().call_later(2.0, self.transport.close)

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeRejected(0, str(exc or "connection closed")))
        for _action, future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost())
        self._pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    # OCPP ---------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.protocol.state is State.OPEN and not self.closed.done()

    def next_id(self) -> str:
        return str(next(self._ids))

    def send_text(self, text: str | bytes) -> None:
        """Send one text frame now (no waiting: the transport buffers)."""
        data = text.encode() if isinstance(text, str) else text
        self.protocol.send_text(data)
        self._flush()

    def call_future(
        self, action: str, payload: dict[str, Any], message_id: str | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Send a CALL; the future gets the CALLRESULT payload or the CALLERROR as exception."""
        if not self.is_open:
            raise ConnectionLost()
        mid = message_id or self.next_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[mid] = (action, future)
        self.send_text(encode_call(mid, action, payload))
        return future

    async def call(
        self, action: str, payload: dict[str, Any], timeout: float = 30.0
    ) -> dict[str, Any]:
        """Send a CALL and wait for its answer (``TimeoutError``, ``CallErrorReceived``,
        ``ConnectionLost``)."""
        mid = self.next_id()
        future = self.call_future(action, payload, mid)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._pending.pop(mid, None)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (or drop TCP if it never opened)."""
        if self.transport is None or self.closed.done():
            return
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
            asyncio.get_running_loop().call_later(2.0, self.transport.close)
        else:
            self.transport.close()

    def abort(self) -> None:
        """Drop TCP without a closing handshake (a charger losing its network)."""
        if self.transport is not None:
            self.transport.abort()

    # internals ------------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self.transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def _handshake_done(self, response: Response) -> None:
        if self.opened.done():
            return
        if self.protocol.handshake_exc is not None or self.protocol.state is not State.OPEN:
            reason = response.reason_phrase
            self.opened.set_exception(HandshakeRejected(response.status_code, reason))
            if self.transport is not None:
                self.transport.close()
            return
        self.opened.set_result(None)

    def _frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [bytes(frame.data)]
                return
            self._message(frame.data)
        elif frame.opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                self._message(data)

    def _message(self, data: bytes | bytearray | memoryview) -> None:
        try:
            message = orjson.loads(data)
            kind = message[0]
            mid = message[1]
        except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
            self._unexpected(f"unreadable frame {bytes(data)[:80]!r}")
            return
        if kind == 3 or kind == 4:
            entry = self._pending.pop(mid, None)
            if entry is None:
                self._unexpected(f"answer to unknown message id {mid!r}")
                return
            action, future = entry
            if future.done():
                return
            if kind == 3:
                future.set_result(message[2])
            else:
                future.set_exception(CallErrorReceived(action, str(message[2]), str(message[3])))
        elif kind == 2:
            self._answer(mid, message[2], message[3])
        else:
            self._unexpected(f"unknown message type {kind!r}")

    def _answer(self, mid: str, action: str, payload: dict[str, Any]) -> None:
        if self.handler is None:
            self.send_text(encode_error(mid, "NotImplemented", f"{action} not supported"))
            return
        try:
            result = self.handler(action, payload)
        except CallErrorReceived as error:
            self.send_text(encode_error(mid, error.code, error.description))
            return
        if self.is_open:
            self.send_text(encode_result(mid, result))

    def _unexpected(self, what: str) -> None:
        if self.on_unexpected is not None:
            self.on_unexpected(what)


async def connect(
    url: str,
    identity: str,
    *,
    handler: RequestHandler | None = None,
    auth_key: str | None = None,
    local_addr: str | None = None,
    timeout: float = 10.0,
) -> OcppSocket:
    """Open ``url/identity`` (identity percent-encoded) with subprotocol ``ocpp1.6``.

    ``auth_key`` sends HTTP Basic credentials (Security Profile 1); ``local_addr`` picks the source
    address, which lets a load generator open more connections than one address has ports.
    """
    full = url.rstrip("/") + "/" + quote(identity, safe="")
    uri = parse_uri(full)
    protocol = ClientProtocol(uri, subprotocols=[SUBPROTOCOL], max_size=16 * 1024 * 1024)
    request = protocol.connect()
    if auth_key is not None:
        token = base64.b64encode(f"{identity}:{auth_key}".encode()).decode()
        headers = Headers(request.headers)
        headers["Authorization"] = f"Basic {token}"
        request.headers = headers
    protocol.send_request(request)
    loop = asyncio.get_running_loop()
    ocpp_socket = OcppSocket(protocol, handler)
    async with asyncio.timeout(timeout):
        try:
            await loop.create_connection(
                lambda: ocpp_socket,
                uri.host,
                uri.port,
                local_addr=(local_addr, 0) if local_addr else None,
            )
            await ocpp_socket.opened
        except BaseException:
            if ocpp_socket.transport is not None:
                with contextlib.suppress(Exception):
                    ocpp_socket.transport.abort()
            raise
    return ocpp_socket
