"""Operations: Prometheus metrics, and the per-charge-point OCPP message trace.

``GET /metrics`` is unauthenticated like ``/healthz`` (scrapers rarely carry tokens; expose it to
the monitoring network only). The trace holds raw OCPP frames (id tags, meter values), so
reading it and changing its level need the operator role.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from chargegrid.api.deps import Node, Operator, visible_charge_point_id
from chargegrid.clock import isoformat_z
from chargegrid.config import TraceLevel
from chargegrid.observability.metrics import CONTENT_TYPE_LATEST
from chargegrid.store.tables import charge_points

router = APIRouter()


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(node: Node) -> Response:
    """Prometheus metrics of this node, in the text exposition format."""
    # async on purpose: the counters are updated on the event loop, so they are read there too.
    return Response(node.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class TraceFrame(BaseModel):
    id: int
    timestamp: str = Field(description="When the frame was received or sent (UTC).")
    direction: str = Field(description='"in": from the charge point; "out": to it.')
    frame: str = Field(description="The frame's text; secret configuration values masked.")


class Trace(BaseModel):
    charge_point: str
    level: TraceLevel = Field(description="The level in force for this charge point.")
    frames: list[TraceFrame]


class TraceLevelChange(BaseModel):
    level: TraceLevel | None = Field(
        description='"off", "errors" (CALLERRORs and the CALLs they answer) or "all"; '
        "null: follow the node's trace_default."
    )


class TraceLevelState(BaseModel):
    charge_point: str
    level: TraceLevel | None = Field(description="As stored; null: the node default.")
    effective: TraceLevel = Field(description="The level in force.")
    applied_live: bool = Field(description="Whether a live connection on this node switched.")


async def _stored_level(node: Any, charge_point_id: int) -> str | None:
    async with node.engine.connect() as connection:
        level: str | None = await connection.scalar(
            select(charge_points.c.trace_level).where(charge_points.c.id == charge_point_id)
        )
    return level


@router.get("/api/v1/charge-points/{identity}/trace", tags=["operations"])
async def get_trace(
    identity: str,
    node: Node,
    principal: Operator,
    since: Annotated[
        datetime | None,
        Query(
            description="Frames at or after this time (ISO 8601, UTC when no offset is given); "
            "omitted: the latest."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Trace:
    """The charge point's traced OCPP frames, oldest first."""
    charge_point_id = await visible_charge_point_id(node, principal, identity)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # DESIGN.md guarantee 4: times are UTC
    await node.trace.flush()  # frames buffered a moment ago are part of the answer
    rows = await node.trace.frames(charge_point_id, since=since, limit=limit)
    return Trace(
        charge_point=identity,
        level=node.trace.effective(await _stored_level(node, charge_point_id)),
        frames=[
            TraceFrame(
                id=row["id"],
                timestamp=isoformat_z(row["timestamp"]),
                direction=row["direction"],
                frame=row["frame"],
            )
            for row in rows
        ],
    )


@router.put("/api/v1/charge-points/{identity}/trace-level", tags=["operations"])
async def put_trace_level(
    identity: str, change: TraceLevelChange, node: Node, principal: Operator
) -> TraceLevelState:
    """Set the charge point's trace level: stored, and applied at once to its live connection."""
    charge_point_id = await visible_charge_point_id(node, principal, identity)
    await node.trace.store_level(charge_point_id, change.level)
    effective = node.trace.effective(change.level.value if change.level is not None else None)
    live = node.registry.get(identity)
    if live is not None:
        node.trace.apply(live, charge_point_id, effective)
    return TraceLevelState(
        charge_point=identity,
        level=change.level,
        effective=effective,
        applied_live=live is not None,
    )
