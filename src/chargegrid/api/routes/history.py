"""History and live statistics (issue 4).

``GET /charge-points/{identity}/history`` answers a range query from raw values, hourly or daily
rollups, picked by the span asked for (and by what retention still keeps), so a 30-day chart
reads ~720 hourly rows per series instead of hundreds of thousands of raw ones. The live-stats
routes show the in-memory figures of the node holding the charge point: on one node its own; with
several, this node's for the charge points it holds and the others' from Redis
(``cluster.live_stats``), or 503 if Redis cannot be asked.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query, Response

from chargegrid.api.deps import Node, Viewer, visible_charge_point_id
from chargegrid.api.pagination import SessionId, TimeParam, check_range, iso, parse_time
from chargegrid.api.routes.sessions import visible_session
from chargegrid.cluster.link import ClusterUnavailable
from chargegrid.store import rollups as rollup_store
from chargegrid.store.queries import MEASURANDS, measurand_name
from chargegrid.store.tables import meter_values
from chargegrid.store.value_keys import charge_point_values

router = APIRouter(prefix="/api/v1", tags=["history"])

RAW_LIMIT = 50_000
Resolution = Literal["auto", "raw", "hour", "day"]


def pick_resolution(
    settings: Any, now: datetime, since: datetime, until: datetime, asked: str
) -> str:
    """Raw for short spans, hourly up to a month, daily beyond; never a level already purged."""
    if asked != "auto":
        return asked
    span = until - since
    # A little slack: "the last 30 days" with 30-day retention should still be hourly, its
    # oldest hour possibly already purged.
    raw_kept = now - timedelta(days=settings.retention_raw_days, hours=1)
    hourly_kept = now - timedelta(days=settings.retention_hourly_days + 1)
    if span <= timedelta(hours=settings.history_raw_max_hours) and since >= raw_kept:
        return "raw"
    if span <= timedelta(days=settings.history_hourly_max_days) and since >= hourly_kept:
        return rollup_store.HOUR
    return rollup_store.DAY


def _point(r: Any) -> dict[str, Any]:
    return {
        "timestamp": iso(r["bucket"]),
        "count": r["count"],
        "min": r["min"],
        "max": r["max"],
        "avg": r["sum"] / r["count"] if r["count"] else None,
        "first": r["first_value"],
        "last": r["last_value"],
        "energy": r["energy"],
    }


@router.get("/charge-points/{identity}/history", response_model=None)
async def charge_point_history(
    identity: str,
    node: Node,
    principal: Viewer,
    measurand: Annotated[
        str, Query(description="A scope name (" + ", ".join(sorted(MEASURANDS)) + ") or measurand")
    ] = "power",
    since: TimeParam = None,
    until: TimeParam = None,
    connector_id: Annotated[int | None, Query(ge=0)] = None,
    phase: Annotated[str | None, Query(description="`none` for values without a phase")] = None,
    resolution: Annotated[Resolution, Query(description="auto picks by the span")] = "auto",
) -> Response:
    """A measurand's values over ``[since, until)`` (default: the last 24 hours), as series per
    connector, phase and location. Rollup points carry count/min/max/avg/first/last and, for
    registers, the energy of the bucket; raw points carry the value."""
    now = node.clock.now()
    until_at = parse_time("until", until) or now
    since_at = parse_time("since", since) or until_at - timedelta(days=1)
    check_range(since_at, until_at)
    name = measurand_name(measurand)
    cp_id = await visible_charge_point_id(node, principal, identity)
    used = pick_resolution(node.settings, now, since_at, until_at, resolution)
    series: dict[tuple[int, str, str], dict[str, Any]] = {}
    truncated = False
    if used != "raw":
        await node.rollups.settle(node.writer)  # read what was just committed, too
    async with node.engine.connect() as connection:
        if used == "raw":
            mv = meter_values.c
            where = [mv.measurand == name, mv.value.is_not(None)]
            if connector_id is not None:
                where.append(mv.connector_id == connector_id)
            if phase is not None:
                where.append(mv.phase.is_(None) if phase.lower() == "none" else mv.phase == phase)
            query = charge_point_values(
                connection.dialect.name,
                cp_id,
                [mv.connector_id, mv.phase, mv.location, mv.timestamp, mv.value, mv.unit, mv.id],
                time=lambda ts: [ts >= since_at, ts < until_at],
                where=where,
                limit=RAW_LIMIT + 1,
            )
            rows = list(await connection.execute(query))
            truncated = len(rows) > RAW_LIMIT
            for r in rows[:RAW_LIMIT]:
                key = (r[0], r[1] or "", r[2])
                entry = series.setdefault(
                    key,
                    {"connector_id": r[0], "phase": r[1], "location": r[2], "unit": r[5],
                     "points": []},
                )  # fmt: skip
                entry["points"].append({"timestamp": iso(r[3]), "value": r[4]})
        else:
            rows = await rollup_store.read(
                connection,
                charge_point_id=cp_id,
                measurand=name,
                resolution=used,
                since=_floor(since_at, used),
                until=until_at,
                connector_id=connector_id,
                phase=None if phase is None else ("" if phase.lower() == "none" else phase),
            )
            for r in rows:
                key = (r["connector_id"], r["phase"], r["location"])
                entry = series.setdefault(
                    key,
                    {"connector_id": r["connector_id"], "phase": r["phase"] or None,
                     "location": r["location"], "unit": r["unit"], "points": []},
                )  # fmt: skip
                entry["points"].append(_point(r))
    body = {
        "charge_point": identity,
        "measurand": name,
        "resolution": used,
        "since": iso(since_at),
        "until": iso(until_at),
        "truncated": truncated,
        "series": list(series.values()),
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _floor(at: datetime, resolution: str) -> datetime:
    """The bucket containing ``at``: a chart from 10:30 includes the 10:00 hour."""
    hour = at.replace(minute=0, second=0, microsecond=0)
    return hour if resolution == rollup_store.HOUR else hour.replace(hour=0)


UNREACHABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "several nodes: another node holds the charge point and Redis, where "
          "its figures are kept, cannot be asked"}
}  # fmt: skip


def _unreachable(identity: str, error: ClusterUnavailable) -> HTTPException:
    return HTTPException(
        503, f"live statistics of {identity} are kept by the node holding it, and {error}"
    )


@router.get("/charge-points/{identity}/live-stats", response_model=None, responses=UNREACHABLE)
async def charge_point_live_stats(identity: str, node: Node, principal: Viewer) -> Response:
    """Live statistics per connector (latest value per measurand and phase, min/max/avg/count
    since seen and over the rolling window, current power, the session), from the node holding
    the charge point. With several nodes the body also has ``node`` and ``updated_at``."""
    cp_id = await visible_charge_point_id(node, principal, identity)
    mirror = node.live_stats_mirror
    if mirror is None:
        body = {"charge_point": identity, **node.live_stats.for_charge_point(cp_id)}
    else:
        try:
            body = await mirror.charge_point(identity, cp_id)
        except ClusterUnavailable as error:
            raise _unreachable(identity, error) from error
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/sessions/{session_id}/live-stats", response_model=None, responses=UNREACHABLE)
async def session_live_stats(session_id: SessionId, node: Node, principal: Viewer) -> Response:
    """A session's live statistics: energy so far (reset-aware), power, duration, per-measurand
    statistics. 404 if no node (one node: this node) has seen a value of it."""
    row = await visible_session(node, principal, session_id)
    mirror = node.live_stats_mirror
    if mirror is None:
        stats = node.live_stats.for_session(session_id)
        where = "on this node"
    else:
        try:
            stats = await mirror.session(session_id, str(row["identity"]))
        except ClusterUnavailable as error:
            raise _unreachable(str(row["identity"]), error) from error
        where = "on any node"
    if stats is None:
        raise HTTPException(404, f"no live statistics for session {session_id} {where}")
    return Response(orjson.dumps(stats), media_type="application/json")
