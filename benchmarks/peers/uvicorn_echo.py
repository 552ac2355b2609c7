"""Reference: chargegrid's socket layer with nothing on top. A bare ASGI app under uvicorn with
exactly the WebSocket settings ``chargegrid serve`` uses (uvloop, ``websockets-sansio``, 1 MiB
max message, 30 s pings, no compression) that answers every OCPP CALL with a CALLRESULT: no
validation, no routing, no storage. What this costs per connection and per message is uvicorn's
share of chargegrid's figures; the rest is chargegrid's own. ``--lean`` runs chargegrid's
trimmed protocol (``chargegrid.gateway.uvicorn_protocol``, what ``chargegrid serve`` ships)
instead of uvicorn's own.

    python benchmarks/peers/uvicorn_echo.py --port 9003 [--lean]
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import uvicorn

BOOT = {"currentTime": "", "interval": 300, "status": "Accepted"}


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept", "subprotocol": "ocpp1.6"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        frame = orjson.loads(message.get("text") or message.get("bytes") or b"[]")
        if frame[2] == "BootNotification":
            answer: dict[str, Any] = {**BOOT, "currentTime": datetime.now(UTC).isoformat()}
        else:
            answer = {}
        await send({"type": "websocket.send", "text": orjson.dumps([3, frame[1], answer]).decode()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9003)
    parser.add_argument("--lean", action="store_true", help="chargegrid's trimmed protocol")
    arguments = parser.parse_args()
    protocol: Any = "websockets-sansio"
    if arguments.lean:
        from chargegrid.gateway.uvicorn_protocol import LeanWebSocketProtocol

        protocol = LeanWebSocketProtocol
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=arguments.port,
        loop="uvloop",
        ws=protocol,
        ws_max_size=1024 * 1024,
        ws_ping_interval=30.0,
        ws_ping_timeout=30.0,
        ws_per_message_deflate=False,
        log_level="warning",
        lifespan="off",
    )
