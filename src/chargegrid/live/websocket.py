"""``/api/v1/live``: one WebSocket, many subscriptions.

Client messages (JSON):
``{"type": "subscribe", "charge_point": "CP1", "topics": ["status", "meter_values"]}``,
``{"type": "subscribe", "fleet": true, "topics": ["status", "stats"]}``, the same with
``"unsubscribe"``, and ``{"type": "ping"}``. Topics default to all.
Server messages: ``{"type": "event", "id", "topic", "charge_point", "fleet", "data"}``,
``{"type": "subscribed" | "unsubscribed", ...}``, ``{"type": "error", "error": ...}``,
``{"type": "pong"}``. A client that falls too far behind is told so and closed (1008).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.responses import PlainTextResponse

from chargegrid.api.deps import principal_for_token, token_from
from chargegrid.live.access import charge_point_exists, visibility
from chargegrid.live.hub import (
    CHARGE_POINT_TOPICS,
    FLEET_TOPICS,
    LiveHub,
    LiveSubscriber,
    channel_for,
    wanted,
)
from chargegrid.live.outbox import TooSlow

log = logging.getLogger(__name__)
router = APIRouter()


@router.websocket("/api/v1/live")
async def live(websocket: WebSocket) -> None:
    node = websocket.app.state.node
    token = token_from(websocket.headers, websocket.cookies, websocket.query_params)
    principal = await principal_for_token(node, token) if token else None
    if principal is None:
        await _refuse(websocket, 401, "authentication required")
        return
    await websocket.accept()
    hub: LiveHub = node.live
    settings = node.settings
    can_see = await visibility(node, principal)
    subscriber = hub.open(
        can_see=can_see,
        limit=settings.live_max_pending,
        meter_interval=settings.live_meter_values_interval,
    )
    sender = asyncio.create_task(_send_events(websocket, subscriber))
    try:
        while True:
            raw = await websocket.receive_text()
            reply = await _handle(node, hub, subscriber, can_see, raw)
            await websocket.send_text(orjson.dumps(reply).decode())
    except WebSocketDisconnect:
        pass
    except Exception as error:  # a client's connection failing must not leak its subscriptions
        log.info("live subscriber ended: %s", error)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        await hub.close(subscriber)


async def _refuse(websocket: WebSocket, status: int, reason: str) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(reason, status_code=status))
    else:
        await websocket.close(code=1008, reason=reason)


async def _send_events(websocket: WebSocket, subscriber: LiveSubscriber) -> None:
    try:
        while True:
            envelope = await subscriber.outbox.get()
            await websocket.send_text(orjson.dumps({"type": "event", **envelope}).decode())
    except TooSlow:
        with contextlib.suppress(Exception):
            await websocket.send_text('{"type":"error","error":"too slow: events were piling up"}')
            await websocket.close(code=1008, reason="subscriber too slow")


async def _handle(
    node: Any, hub: LiveHub, subscriber: LiveSubscriber, can_see: Any, raw: str
) -> dict[str, Any]:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"type": "error", "error": "messages must be JSON objects"}
    if not isinstance(message, dict):
        return {"type": "error", "error": "messages must be JSON objects"}
    kind = message.get("type")
    if kind == "ping":
        return {"type": "pong"}
    if kind not in ("subscribe", "unsubscribe"):
        return {"type": "error", "error": "type must be subscribe, unsubscribe or ping"}
    fleet = message.get("fleet") is True
    identity = message.get("charge_point")
    if fleet == (identity is not None) or (identity is not None and not isinstance(identity, str)):
        return {"type": "error", "error": 'name either "charge_point": ID or "fleet": true'}
    try:
        topics = wanted(message.get("topics"), FLEET_TOPICS if fleet else CHARGE_POINT_TOPICS)
    except ValueError as error:
        return {"type": "error", "error": str(error)}
    target: dict[str, Any] = {"fleet": True} if fleet else {"charge_point": identity}
    if identity is not None and not (
        can_see(identity) and await charge_point_exists(node, identity)
    ):
        # Not visible and not existing answer alike, so nothing is revealed.
        return {"type": "error", "error": f"no charge point {identity!r}", **target}
    names = [channel_for(None if fleet else identity, topic) for topic in topics]
    if kind == "subscribe":
        await hub.add(subscriber, names)
        return {"type": "subscribed", "topics": topics, **target}
    await hub.remove(subscriber, names)
    return {"type": "unsubscribed", "topics": topics, **target}
