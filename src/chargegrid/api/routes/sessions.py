"""Charging sessions (OCPP transactions): the reference's sessions index and detail."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import RowMapping, select
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.api.deps import Node, Principal, Viewer
from chargegrid.api.models import SessionDetail, SessionOut, SessionSummary, meter_value_out
from chargegrid.api.pagination import (
    Limit,
    Offset,
    Page,
    SessionId,
    TimeParam,
    check_range,
    count,
    iso,
    parse_time,
    visible,
)
from chargegrid.store.tables import charge_points, meter_values, transactions
from chargegrid.store.value_keys import transaction_values

router = APIRouter(prefix="/api/v1", tags=["sessions"])

ENERGY_REGISTER = "Energy.Active.Import.Register"
SESSION_DETAIL_VALUES = 10_000

SESSION_COLUMNS = (*transactions.c, charge_points.c.identity)


class SessionStatus(StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    ALL = "all"


async def energy_so_far(
    connection: AsyncConnection, open_sessions: Iterable[tuple[int, int]]
) -> dict[int, float]:
    """kWh so far of open sessions ``(id, meter_start)``, from each one's latest Outlet energy
    register reading (the reading the stop computation uses); sessions without one are absent."""
    starts = dict(open_sessions)
    if not starts:
        return {}
    mv = meter_values.c
    # Each session's newest reading, the largest if several share its timestamp: one read
    # from the end of the session's values per session (store/value_keys.py).
    newest = transaction_values(
        connection.dialect.name,
        transactions.c.id,
        [mv.timestamp, mv.value],
        where=[
            mv.measurand == ENERGY_REGISTER,
            mv.location == "Outlet",
            mv.value.is_not(None),
        ],
        newest_first=True,
        then_by="value",
        limit=1,
        correlate=transactions,
    ).subquery()
    rows = await connection.execute(
        select(transactions.c.id, select(newest.c.value).scalar_subquery()).where(
            transactions.c.id.in_(sorted(starts))
        )
    )
    result: dict[int, float] = {}
    for transaction_id, value in rows:
        start = starts[int(transaction_id)]
        if value is not None and value >= start:
            result[int(transaction_id)] = (float(value) - start) / 1000.0
    return result


def session_summary(row: RowMapping, energy: dict[int, float]) -> SessionSummary:
    return SessionSummary(
        id=row["id"],
        connector_id=row["connector_id"],
        id_tag=row["id_tag"],
        started_at=iso(row["started_at"]) or "",
        energy_kwh=energy.get(row["id"]),
    )


def session_out(row: RowMapping, now: datetime, energy: dict[int, float]) -> dict[str, Any]:
    active = row["stopped_at"] is None
    end = row["stopped_at"] or now
    if active:
        energy_kwh = energy.get(row["id"])
    else:
        energy_kwh = None if row["energy_wh"] is None else row["energy_wh"] / 1000.0
    return {
        "id": row["id"],
        "charge_point": row["identity"],
        "connector_id": row["connector_id"],
        "id_tag": row["id_tag"],
        "started_at": iso(row["started_at"]),
        "stopped_at": iso(row["stopped_at"]),
        "meter_start": row["meter_start"],
        "meter_stop": row["meter_stop"],
        "energy_kwh": energy_kwh,
        "duration_seconds": max(0.0, (end - row["started_at"]).total_seconds()),
        "stop_reason": row["stop_reason"],
        "stop_id_tag": row["stop_id_tag"],
        "reservation_id": row["reservation_id"],
        "status": "active" if active else "completed",
    }


async def sessions_out(
    connection: AsyncConnection, rows: list[RowMapping], now: datetime
) -> list[SessionOut]:
    energy = await energy_so_far(
        connection, ((r["id"], r["meter_start"]) for r in rows if r["stopped_at"] is None)
    )
    return [SessionOut(**session_out(r, now, energy)) for r in rows]


async def visible_session(node: Any, principal: Principal, session_id: int) -> RowMapping:
    """The session row (with the charge point's identity), or 404 if absent or not visible."""
    async with node.engine.connect() as connection:
        row: RowMapping | None = (
            (
                await connection.execute(
                    select(*SESSION_COLUMNS)
                    .join(charge_points, charge_points.c.id == transactions.c.charge_point_id)
                    .where(transactions.c.id == session_id)
                )
            )
            .mappings()
            .first()
        )
    if row is None or not principal.can_see(int(row["charge_point_id"])):
        raise HTTPException(404, f"no session {session_id}")
    return row


@router.get("/sessions", response_model=Page[SessionOut])
async def list_sessions(
    node: Node,
    principal: Viewer,
    status: Annotated[SessionStatus, Query(description="active | completed | all")] = (
        SessionStatus.ALL
    ),
    charge_point: Annotated[str | None, Query(description="A charge point identity.")] = None,
    id_tag: Annotated[str | None, Query(description="The id tag that started it.")] = None,
    since: TimeParam = None,
    until: TimeParam = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[SessionOut]:
    """Sessions, the most recently started first. ``since``/``until`` bound the start time
    (``since`` inclusive, ``until`` exclusive)."""
    since_at, until_at = parse_time("since", since), parse_time("until", until)
    check_range(since_at, until_at)
    t = transactions.c
    query = (
        select(*SESSION_COLUMNS)
        .join(charge_points, charge_points.c.id == t.charge_point_id)
        .where(visible(principal, t.charge_point_id))
    )
    if status is SessionStatus.ACTIVE:
        query = query.where(t.stopped_at.is_(None))
    elif status is SessionStatus.COMPLETED:
        query = query.where(t.stopped_at.is_not(None))
    if charge_point is not None:
        query = query.where(charge_points.c.identity == charge_point)
    if id_tag is not None:
        query = query.where(t.id_tag == id_tag)
    if since_at is not None:
        query = query.where(t.started_at >= since_at)
    if until_at is not None:
        query = query.where(t.started_at < until_at)
    async with node.engine.connect() as connection:
        total = await count(connection, query)
        rows = list(
            (
                await connection.execute(
                    query.order_by(t.started_at.desc(), t.id.desc()).limit(limit).offset(offset)
                )
            ).mappings()
        )
        items = await sessions_out(connection, rows, node.clock.now())
    return Page[SessionOut](items=items, total=total)


@router.get(
    "/sessions/{session_id}",
    response_model=SessionDetail,
    responses={404: {"description": "no such session, or not visible to this user"}},
)
async def get_session(session_id: SessionId, node: Node, principal: Viewer) -> SessionDetail:
    """A session with its meter values, oldest first (the reference's sessions#show)."""
    row = await visible_session(node, principal, session_id)
    mv = meter_values.c
    async with node.engine.connect() as connection:
        energy = await energy_so_far(
            connection, [(row["id"], row["meter_start"])] if row["stopped_at"] is None else []
        )
        values = list(
            (
                await connection.execute(
                    transaction_values(
                        connection.dialect.name,
                        session_id,
                        where=[mv.charge_point_id == row["charge_point_id"]],
                        limit=SESSION_DETAIL_VALUES + 1,
                    )
                )
            ).mappings()
        )
    identity = row["identity"]
    return SessionDetail(
        **session_out(row, node.clock.now(), energy),
        meter_values=[meter_value_out(v, identity) for v in values[:SESSION_DETAIL_VALUES]],
        meter_values_truncated=len(values) > SESSION_DETAIL_VALUES,
    )
