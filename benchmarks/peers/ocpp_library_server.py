"""Peer: a central system written on the ``ocpp`` library the way its documentation shows.

The central-system example of https://ocpp.readthedocs.io (``ChargePoint`` subclass with ``@on``
handlers, ``websockets.serve(on_connect, …, subprotocols=["ocpp1.6"])``), extended only by the
handlers the benchmark's frames need (MeterValues, StatusNotification, Heartbeat). No persistence.
Two deliberate departures, both in the peer's favour: logging at WARNING instead of the example's
INFO (which logs every frame), and the websockets ≥ 14 handler signature (one argument).

    python benchmarks/peers/ocpp_library_server.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as cp
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, RegistrationStatus

logging.basicConfig(level=logging.WARNING)


class ChargePoint(cp):  # type: ignore[misc]
    @on(Action.boot_notification)
    def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any
    ) -> Any:
        return call_result.BootNotification(
            current_time=datetime.now(UTC).isoformat(),
            interval=300,
            status=RegistrationStatus.accepted,
        )

    @on(Action.heartbeat)
    def on_heartbeat(self, **kwargs: Any) -> Any:
        return call_result.Heartbeat(current_time=datetime.now(UTC).isoformat())

    @on(Action.status_notification)
    def on_status_notification(self, **kwargs: Any) -> Any:
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, **kwargs: Any) -> Any:
        return call_result.MeterValues()


async def on_connect(websocket: Any) -> None:
    """For every new charge point that connects, create a ChargePoint instance and start
    listening for messages."""
    charge_point_id = websocket.request.path.strip("/").split("/")[-1]
    charge_point = ChargePoint(charge_point_id, websocket)
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        await charge_point.start()


async def main(port: int) -> None:
    server = await websockets.serve(on_connect, "127.0.0.1", port, subprotocols=["ocpp1.6"])
    await server.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    asyncio.run(main(parser.parse_args().port))
