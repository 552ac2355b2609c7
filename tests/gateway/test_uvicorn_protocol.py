"""The trimmed uvicorn WebSocket protocol (gateway/uvicorn_protocol.py): its receive queue and
write flag behave as the asyncio.Queue and asyncio.Event they replace, and a server running it
serves WebSockets exactly as the stock protocol does, without keeping the upgrade request and
response."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
import websockets

from chargegrid.gateway.uvicorn_protocol import (
    DIRECT_TEXT,
    LeanWebSocketProtocol,
    _Flag,
    _ReceiveQueue,
)
from support import serving

# -- the receive queue ---------------------------------------------------------------------


async def test_queue_is_fifo_and_holds_nothing_when_empty() -> None:
    queue = _ReceiveQueue()
    assert queue.empty() and queue.qsize() == 0
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert not queue.empty() and queue.qsize() == 2
    assert await queue.get() == 1
    assert await queue.get() == 2
    assert queue.empty()
    assert queue._items is None and queue._getters is None


async def test_get_waits_for_a_put() -> None:
    queue = _ReceiveQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait("x")
    assert await asyncio.wait_for(getter, 1) == "x"
    assert queue._getters is None


async def test_waiting_getters_are_served_in_order() -> None:
    queue = _ReceiveQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await asyncio.wait_for(first, 1) == "a"
    assert await asyncio.wait_for(second, 1) == "b"


async def test_a_cancelled_getter_loses_no_item() -> None:
    queue = _ReceiveQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("a")  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it runs: the item goes to the second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == "a"
    assert queue.empty() and queue._getters is None


async def test_a_cancelled_idle_getter_is_forgotten() -> None:
    queue = _ReceiveQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert queue._getters is None
    queue.put_nowait(1)
    assert await queue.get() == 1


# -- the write flag --------------------------------------------------------------------------


async def test_flag_waits_until_set_and_wakes_every_waiter() -> None:
    flag = _Flag(False)
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
    assert flag.is_set() and flag._waiters is None
    assert await flag.wait() is True  # set: no waiting
    flag.clear()
    assert not flag.is_set()


async def test_a_cancelled_flag_waiter_is_forgotten() -> None:
    flag = _Flag(False)
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert flag._waiters is None
    flag.set()
    assert flag.is_set()


# -- a server running the protocol -----------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    if scope["path"] == "/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept", "subprotocol": "ocpp1.6"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text") or ""
        if text == "headers":  # the scope's copy of the request headers is the app's to keep
            text = ",".join(sorted(name.decode() for name, _value in scope["headers"]))
        await send({"type": "websocket.send", "text": text})


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[tuple[uvicorn.Server, int]]:
    config = uvicorn.Config(
        _echo,
        host="127.0.0.1",
        port=0,
        ws=LeanWebSocketProtocol,
        ws_ping_interval=0.2,
        ws_ping_timeout=5,
        lifespan="off",
        log_level="warning",
    )
    async with serving(config) as running:
        yield running


async def test_a_server_with_the_lean_protocol_serves_websockets() -> None:
    async with _server() as (server, port):
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/echo", subprotocols=["ocpp1.6"]
        ) as client:
            assert client.subprotocol == "ocpp1.6"
            for n in range(20):
                await client.send(f"frame {n}")
                assert await asyncio.wait_for(client.recv(), 2) == f"frame {n}"
            await client.send("headers")
            names = (await asyncio.wait_for(client.recv(), 2)).split(",")
            assert {"host", "sec-websocket-key", "sec-websocket-protocol", "upgrade"} <= set(names)
            await asyncio.sleep(0.5)  # keepalive pings answered meanwhile
            (protocol,) = server.server_state.connections
            assert isinstance(protocol, LeanWebSocketProtocol)
            # Only read while the upgrade was answered: not kept for the connection's life.
            assert protocol.request is None and protocol.response is None
            assert isinstance(protocol.queue, _ReceiveQueue)
            assert protocol.queue._items is None
            assert isinstance(protocol.writable, _Flag) and protocol.writable._waiters is None
            assert protocol.last_ping_rtt > 0
        # the close reached the app and the server let the connection go
        for _ in range(100):
            if not server.server_state.connections:
                break
            await asyncio.sleep(0.02)
        assert not server.server_state.connections


async def test_a_refused_upgrade_is_still_refused() -> None:
    async with _server() as (_, port):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://127.0.0.1:{port}/refuse"):
                pass
        assert refused.value.response.status_code == 403


# -- the direct text path (DIRECT_TEXT) ------------------------------------------------------


async def _direct(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Echoes text through the direct path: attaches after a pause (what arrives meanwhile is
    queued), writes with send_text, or ASGI send where that declines; binary messages still
    come through ``receive``."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    direct = scope["extensions"][DIRECT_TEXT]
    send_text = direct["send_text"]
    await asyncio.sleep(0.2)
    pending: set[asyncio.Task[None]] = set()

    def on_text(text: str) -> None:
        if text == "fail":
            raise RuntimeError("the application failed")
        if not send_text(text):
            task = asyncio.create_task(send({"type": "websocket.send", "text": text}))
            pending.add(task)
            task.add_done_callback(pending.discard)

    direct["attach"](on_text)
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        assert message.get("text") is None  # text never comes this way once attached
        await send({"type": "websocket.send", "text": f"binary {len(message['bytes'])}"})


@contextlib.asynccontextmanager
async def _direct_server(**options: Any) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    config = uvicorn.Config(
        _direct,
        host="127.0.0.1",
        port=0,
        ws=LeanWebSocketProtocol,
        lifespan="off",
        log_level="warning",
        **options,
    )
    async with serving(config) as running:
        yield running


@contextlib.asynccontextmanager
async def _direct_client(
    compression: Any = None, **options: Any
) -> AsyncIterator[tuple[uvicorn.Server, websockets.ClientConnection]]:
    """A client of a fresh :func:`_direct` server, connected (the app not yet attached)."""
    async with (
        _direct_server(**options) as (server, port),
        websockets.connect(
            f"ws://127.0.0.1:{port}/", compression=compression, max_size=None
        ) as client,
    ):
        yield server, client


async def test_text_reaches_an_attached_app_in_order_queued_messages_first() -> None:
    async with _direct_client() as (server, client):
        # Sent before the app attaches: these wait in the receive queue, then go first.
        for n in range(5):
            await client.send(f"early {n}")
        await asyncio.sleep(0.4)
        for n in range(5):
            await client.send(f"late {n}")
        await client.send(b"\x00\x01\x02")
        expected = [f"early {n}" for n in range(5)] + [f"late {n}" for n in range(5)]
        got = [await asyncio.wait_for(client.recv(), 2) for _ in range(11)]
        assert got == [*expected, "binary 3"]
        (protocol,) = server.server_state.connections
        assert protocol.on_text is not None
        assert protocol.queue.empty()
        assert protocol.transport.is_reading()


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_direct_frames_carry_every_length(compression: Any) -> None:
    # RFC 6455 §5.2: 7-bit lengths up to 125, 16-bit up to 65,535, 64-bit beyond; with
    # permessage-deflate negotiated, websockets frames (and compresses) them instead.
    texts = ["", "x" * 125, "y" * 126, "é" * 100, "z" * 65535, "w" * 65536, "ü" * 70000]
    deflate = compression is not None
    async with _direct_client(compression, ws_per_message_deflate=deflate) as (_, client):
        await asyncio.sleep(0.3)  # attached
        for text in texts:
            await client.send(text)
            assert await asyncio.wait_for(client.recv(), 2) == text


async def test_send_text_declines_while_writing_is_paused_and_reading_stops() -> None:
    async with _direct_client() as (server, client):
        await asyncio.sleep(0.3)
        (protocol,) = server.server_state.connections
        assert protocol.send_text_now("now") is True
        assert await asyncio.wait_for(client.recv(), 2) == "now"
        protocol.pause_writing()  # what the transport does when its buffer is full
        assert protocol.send_text_now("later") is False
        assert not protocol.transport.is_reading()  # the peer does not read: neither do we
        protocol.resume_writing()
        assert protocol.transport.is_reading()
        assert protocol.send_text_now("again") is True
        assert await asyncio.wait_for(client.recv(), 2) == "again"


async def test_send_text_declines_once_the_close_is_sent() -> None:
    async with _direct_client() as (server, client):
        await asyncio.sleep(0.3)
        (protocol,) = server.server_state.connections
        await protocol.send({"type": "websocket.close", "code": 1000})
        assert protocol.send_text_now("too late") is False
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(client.recv(), 2)


async def _closed_with(port: int, frame: bytes) -> int:
    """Send ``frame`` (a raw, masked client frame) on an upgraded connection; the close code."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
        await asyncio.sleep(0.3)
        client.transport.write(frame)
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(client.recv(), 2)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code


def _masked_text(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def test_invalid_utf8_text_closes_with_1007() -> None:
    # RFC 6455 §8.1: a text message must be UTF-8; the endpoint fails the connection (1007).
    async with _direct_server() as (_, port):
        assert await _closed_with(port, _masked_text(b"\xff\xfe")) == 1007


async def test_an_app_failing_on_a_message_closes_with_1011() -> None:
    async with _direct_server() as (server, port):
        assert await _closed_with(port, _masked_text(b"fail")) == 1011
        for _ in range(100):
            if not server.server_state.connections:
                break
            await asyncio.sleep(0.02)
        assert not server.server_state.connections


def _frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x05\x06\x07\x08"
) -> bytes:
    """A client frame (masked, RFC 6455 §5.2), 7- or 16-bit length."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    header = (
        bytes([first, 0x80 | size])
        if size < 126
        else bytes([first, 0xFE]) + size.to_bytes(2, "big")
    )
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


async def test_whole_text_frames_skip_websockets_parser_everything_else_goes_through_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _direct_client() as (server, client):
        await asyncio.sleep(0.3)  # attached
        (protocol,) = server.server_state.connections
        parsed: list[bytes] = []
        receive_data = protocol.conn.receive_data

        def counting(data: bytes) -> None:
            parsed.append(bytes(data))
            receive_data(data)

        monkeypatch.setattr(protocol.conn, "receive_data", counting)

        async def answer() -> str:
            return str(await asyncio.wait_for(client.recv(), 2))

        # Whole text frames, one or several per read: read without websockets.
        client.transport.write(_frame(0x1, b"one"))
        assert await answer() == "one"
        client.transport.write(_frame(0x1, b"two") + _frame(0x1, ("é" * 200).encode()))
        assert [await answer(), await answer()] == ["two", "é" * 200]
        assert parsed == []
        # A fragmented message (§5.4) and a ping between its fragments: websockets' parser.
        client.transport.write(_frame(0x1, b"fra", fin=False))
        client.transport.write(_frame(0x9, b"ping"))
        client.transport.write(_frame(0x0, b"gment", fin=True))
        assert await answer() == "fragment"
        assert parsed  # (in one read or several: TCP may join the writes)
        before = len(parsed)
        # A frame split across reads, right after its mask: websockets again, until it stands
        # between frames. The payload looks like a whole empty text frame (FIN + text, masked,
        # 0 bytes, mask 0): only the parser that read the header knows it is payload.
        fake = b"\x81\x80\x00\x00\x00\x00"
        split = _frame(0x2, fake, mask=b"\x00\x00\x00\x00")
        client.transport.write(split[: len(split) - len(fake)])
        await asyncio.sleep(0.1)
        client.transport.write(fake)
        assert await answer() == "binary 6"
        assert len(parsed) == before + 2
        client.transport.write(_frame(0x1, b"fast again"))
        assert await answer() == "fast again"
        assert len(parsed) == before + 2


async def test_a_text_message_over_the_limit_still_closes_with_1009() -> None:
    async with _direct_server(ws_max_size=100) as (_, port):
        assert await _closed_with(port, _frame(0x1, b"x" * 101)) == 1009


async def test_an_unmasked_client_frame_still_closes_with_1002() -> None:
    # RFC 6455 §5.1: a server must close the connection on an unmasked frame.
    async with _direct_server() as (_, port):
        assert await _closed_with(port, b"\x81\x05hello") == 1002
