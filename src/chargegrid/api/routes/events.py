"""The per-charge-point event log: anomalies, notifications, data transfers, security events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from chargegrid.api.deps import Node, Viewer, visible_charge_point_id
from chargegrid.api.models import EventOut
from chargegrid.api.pagination import Limit, Offset, Page, count, iso
from chargegrid.live import sse
from chargegrid.live.access import visibility
from chargegrid.live.hub import CHARGE_POINT_TOPICS
from chargegrid.store.tables import events

router = APIRouter(prefix="/api/v1", tags=["events"])


@router.get(
    "/charge-points/{identity}/events",
    response_model=Page[EventOut],
    responses={
        200: {"content": {"text/event-stream": {}}},
        404: {"description": "no such charge point, or not visible to this user"},
    },
)
async def charge_point_events(
    identity: str,
    node: Node,
    principal: Viewer,
    request: Request,
    category: Annotated[
        str | None,
        Query(description="anomaly | notification | data_transfer | security | connection"),
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    topics: Annotated[
        str | None,
        Query(
            description="With `Accept: text/event-stream`: comma-separated live topics, default "
            f"all of {', '.join(CHARGE_POINT_TOPICS)}"
        ),
    ] = None,
    last_event_id: Annotated[str | None, Query(description="Resume a live stream")] = None,
) -> Page[EventOut] | StreamingResponse:
    """A charge point's event log, newest first; or, with ``Accept: text/event-stream``, its
    live events as Server-Sent Events (status, sessions, meter values, connection, alerts,
    operations), resumable with ``Last-Event-ID``."""
    cp_id = await visible_charge_point_id(node, principal, identity)
    if "text/event-stream" in request.headers.get("accept", ""):
        return await sse.stream(
            request,
            identity=identity,
            topics=sse.parse_topics(topics, CHARGE_POINT_TOPICS),
            can_see=await visibility(node, principal),
            after=sse.last_event_id(request, last_event_id),
        )
    e = events.c
    query = select(events).where(e.charge_point_id == cp_id)
    if category is not None:
        query = query.where(e.category == category)
    async with node.engine.connect() as connection:
        total = await count(connection, query)
        rows = (
            await connection.execute(
                query.order_by(e.timestamp.desc(), e.id.desc()).limit(limit).offset(offset)
            )
        ).mappings()
        items = [
            EventOut(
                id=r["id"],
                charge_point=identity,
                timestamp=iso(r["timestamp"]) or "",
                category=r["category"],
                type=r["type"],
                message=r["message"],
                payload=r["payload"] or {},
            )
            for r in rows
        ]
    return Page[EventOut](items=items, total=total)
