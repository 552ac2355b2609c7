"""Server-Sent Events: a charge point's stream and the fleet stream.

Each event is ``id: N``, ``event: <topic>``, ``data: <JSON envelope>``. A client that reconnects
with ``Last-Event-ID`` (browsers' EventSource do so by themselves) gets what it missed, if the
node still has it (see :class:`chargegrid.live.hub.LiveHub`); otherwise a ``reset`` event tells
it to reload its state. A comment line every ``live_keepalive_seconds`` keeps proxies from
closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from chargegrid.api.deps import Principal, principal_for_token, token_from
from chargegrid.live.access import visibility
from chargegrid.live.hub import FLEET_TOPICS, LiveHub, channel_for, wanted
from chargegrid.live.outbox import Envelope, TooSlow

router = APIRouter(tags=["live"])


def _frame(envelope: Envelope) -> bytes:
    return (
        f"id: {envelope['id']}\nevent: {envelope['topic']}\n".encode()
        + b"data: "
        + orjson.dumps(envelope)
        + b"\n\n"
    )


async def authenticate(request: Request) -> Principal:
    node = request.app.state.node
    token = token_from(request.headers, request.cookies, request.query_params)
    principal = await principal_for_token(node, token) if token else None
    if principal is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    return principal


def parse_topics(raw: str | None, allowed: tuple[str, ...]) -> list[str]:
    try:
        return wanted(raw.split(",") if raw else None, allowed)
    except ValueError as error:
        raise HTTPException(422, str(error)) from None


def last_event_id(request: Request, query_value: str | None) -> int | None:
    raw = request.headers.get("last-event-id") or query_value
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(422, "Last-Event-ID must be an event id (an integer)") from None


async def stream(
    request: Request,
    *,
    identity: str | None,
    topics: list[str],
    can_see: Callable[[str], bool],
    after: int | None,
) -> StreamingResponse:
    """An SSE response for ``topics`` of ``identity`` (None: the fleet)."""
    node = request.app.state.node
    hub: LiveHub = node.live
    settings = node.settings
    subscriber = hub.open(
        can_see=can_see,
        limit=settings.live_max_pending,
        meter_interval=settings.live_meter_values_interval,
    )
    names = [channel_for(identity, topic) for topic in topics]
    await hub.add(subscriber, names)
    backlog = hub.replay(names, after) if after is not None else []

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 3000\n\n"
            if backlog is None:
                yield b'event: reset\ndata: {"reason": "events may have been missed"}\n\n'
            else:
                for envelope in backlog:
                    if envelope["charge_point"] is None or can_see(envelope["charge_point"]):
                        yield _frame(envelope)
            sent = backlog[-1]["id"] if backlog else (after or 0)
            while True:
                try:
                    envelope = await asyncio.wait_for(
                        subscriber.outbox.get(), settings.live_keepalive_seconds
                    )
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if envelope["id"] <= sent:  # already replayed
                    continue
                yield _frame(envelope)
        except TooSlow:
            yield b'event: error\ndata: {"error": "too slow: events were piling up"}\n\n'
        finally:
            with contextlib.suppress(Exception):
                await hub.close(subscriber)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/api/v1/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def fleet_events(
    request: Request,
    topics: str | None = Query(
        None, description=f"Comma-separated, default all of: {', '.join(FLEET_TOPICS)}"
    ),
    last_event_id_query: str | None = Query(None, alias="last_event_id"),
) -> StreamingResponse:
    """The fleet's live events as Server-Sent Events (authenticate with a bearer token, the
    dashboard cookie, or ``?token=``)."""
    principal = await authenticate(request)
    node: Any = request.app.state.node
    return await stream(
        request,
        identity=None,
        topics=parse_topics(topics, FLEET_TOPICS),
        can_see=await visibility(node, principal),
        after=last_event_id(request, last_event_id_query),
    )
