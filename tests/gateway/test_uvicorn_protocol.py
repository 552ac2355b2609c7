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

from chargegrid.gateway.uvicorn_protocol import LeanWebSocketProtocol, _Flag, _ReceiveQueue
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
