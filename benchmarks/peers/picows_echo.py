"""Peer: the ceiling of a Python WebSocket server. A bare picows server (a WebSocket layer
written in Cython, on uvloop, with orjson) that answers every OCPP CALL with a CALLRESULT and
does nothing else: no validation, no routing, no storage. DESIGN.md's budget names it ("bare
picows echo: >= 32k/s") as the next lever beyond a lean path; here it is measured in the same
run as everything else.

    python benchmarks/peers/picows_echo.py --port 9004
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import orjson
import uvloop
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

BOOT = {"currentTime": "", "interval": 300, "status": "Accepted"}


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        call = orjson.loads(frame.get_payload_as_bytes())
        if call[2] == "BootNotification":
            answer: dict[str, Any] = {**BOOT, "currentTime": datetime.now(UTC).isoformat()}
        else:
            answer = {}
        transport.send(WSMsgType.TEXT, orjson.dumps([3, call[1], answer]))


def accept(request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
    # The same subprotocol answer every other target gives (OCPP-J 1.6 §3.1.2).
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    headers = {"Sec-WebSocket-Protocol": "ocpp1.6"} if "ocpp1.6" in offered else {}
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(headers), Echo())


async def main(port: int) -> None:
    server = await ws_create_server(
        accept, "127.0.0.1", port, enable_auto_ping=True, auto_ping_idle_timeout=30
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9004)
    uvloop.run(main(parser.parse_args().port))
