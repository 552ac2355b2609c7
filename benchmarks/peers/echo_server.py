"""Peer: the ceiling. A bare WebSocket server (websockets + uvloop + orjson) that answers every
OCPP CALL with a CALLRESULT and does nothing else: no validation, no routing, no storage.

    python benchmarks/peers/echo_server.py --port 9002
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import orjson
import uvloop
from websockets.asyncio.server import serve

BOOT = {"currentTime": "", "interval": 300, "status": "Accepted"}


async def handler(websocket: Any) -> None:
    async for message in websocket:
        frame = orjson.loads(message)
        if frame[2] == "BootNotification":
            answer: dict[str, Any] = {**BOOT, "currentTime": datetime.now(UTC).isoformat()}
        else:
            answer = {}
        await websocket.send(orjson.dumps([3, frame[1], answer]).decode())


async def main(port: int) -> None:
    async with serve(
        handler, "127.0.0.1", port, subprotocols=["ocpp1.6"], compression=None
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9002)
    uvloop.run(main(parser.parse_args().port))
