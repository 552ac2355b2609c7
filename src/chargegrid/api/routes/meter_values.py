"""Meter values per charge point or session: JSON (flat or grouped for charting) and CSV export.

The JSON answers are bounded (``limit``); the CSV export streams from a server-side cursor in
batches, so an export of any size never sits in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import StreamingResponse
from ocpp.v16.enums import Measurand, Phase
from sqlalchemy import ColumnElement, CompoundSelect, Select

from chargegrid.api.deps import Node, Viewer, visible_charge_point_id
from chargegrid.api.models import GroupedValue, MeterValueOut
from chargegrid.api.pagination import SessionId, TimeParam, check_range, iso, parse_time
from chargegrid.api.routes.sessions import visible_session
from chargegrid.store.queries import MEASURANDS, measurand_name
from chargegrid.store.tables import meter_values
from chargegrid.store.value_keys import (
    TimeFilter,
    between,
    charge_point_values,
    transaction_values,
)

router = APIRouter(prefix="/api/v1", tags=["meter values"])

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
CSV_BATCH = 1_000
KNOWN_MEASURANDS: frozenset[str] = frozenset(m.value for m in Measurand)
KNOWN_PHASES: tuple[str, ...] = tuple(p.value for p in Phase)
CSV_COLUMNS = (
    "timestamp",
    "charge_point",
    "connector_id",
    "session_id",
    "measurand",
    "phase",
    "location",
    "context",
    "unit",
    "value",
    "raw_value",
    "format",
)

MeasurandParam = Annotated[
    list[str] | None,
    Query(
        description="Repeatable. A scope name ("
        + ", ".join(sorted(MEASURANDS))
        + ") or an OCPP 1.6 measurand such as `Power.Active.Import`."
    ),
]
PhaseParam = Annotated[str | None, Query(description="One of " + ", ".join(KNOWN_PHASES))]
LimitParam = Annotated[
    int,
    Query(description=f"At most this many values (1-{MAX_LIMIT}); `X-Truncated: true` if more."),
]
GroupedParam = Annotated[
    bool,
    Query(
        description="Group by measurand for charting: `{measurand: [{timestamp, value, unit, "
        "phase}, ...]}` (the reference's MeterValuesController#index)."
    ),
]

JSON_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Oldest first; a flat list, or grouped by measurand with `grouped=true`.",
        "model": list[MeterValueOut] | dict[str, list[GroupedValue]],
    },
    404: {"description": "no such charge point or session, or not visible to this user"},
    422: {"description": "bad time, measurand, phase or limit"},
}
CSV_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "CSV with a header row: " + ",".join(CSV_COLUMNS),
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    404: JSON_RESPONSES[404],
    422: JSON_RESPONSES[422],
}


@dataclass(frozen=True, slots=True)
class Selection:
    """Which values (whose, which measurands and phase, the time range ``[since, until)``),
    oldest first, and whose name goes on them."""

    query: Select[Any] | CompoundSelect[Any]
    identity: str
    filename: str


def _filters(
    measurand: list[str] | None,
    phase: str | None,
    since: datetime | None,
    until: datetime | None,
) -> tuple[list[ColumnElement[bool]], TimeFilter]:
    """Clauses on the values' columns, and the time range as a filter of a timestamp column
    (store/value_keys.py applies it per index)."""
    mv = meter_values.c
    clauses: list[ColumnElement[bool]] = []
    if measurand:
        names = []
        for given in measurand:
            name = measurand_name(given)
            if name not in KNOWN_MEASURANDS:
                raise HTTPException(
                    422,
                    f"unknown measurand {given!r}: use a scope name ("
                    f"{', '.join(sorted(MEASURANDS))}) or an OCPP 1.6 measurand such as "
                    "Power.Active.Import",
                )
            names.append(name)
        clauses.append(mv.measurand.in_(names))
    if phase is not None:
        if phase not in KNOWN_PHASES:
            raise HTTPException(422, f"unknown phase {phase!r}: one of {', '.join(KNOWN_PHASES)}")
        clauses.append(mv.phase == phase)
    check_range(since, until)
    return clauses, between(since, until)


async def _charge_point_selection(
    node: Any,
    principal: Any,
    identity: str,
    measurand: list[str] | None,
    phase: str | None,
    since: str | None,
    until: str | None,
) -> Selection:
    since_at, until_at = parse_time("since", since), parse_time("until", until)
    if since_at is None:
        # The reference's default window: the last hour (up to ``until`` when given).
        since_at = (until_at or node.clock.now()) - timedelta(hours=1)
    clauses, time = _filters(measurand, phase, since_at, until_at)
    cp_id = await visible_charge_point_id(node, principal, identity)
    return Selection(
        charge_point_values(node.engine.dialect.name, cp_id, time=time, where=clauses),
        identity,
        f"{identity}-meter-values.csv",
    )


async def _session_selection(
    node: Any,
    principal: Any,
    session_id: int,
    measurand: list[str] | None,
    phase: str | None,
    since: str | None,
    until: str | None,
) -> Selection:
    clauses, time = _filters(
        measurand, phase, parse_time("since", since), parse_time("until", until)
    )
    row = await visible_session(node, principal, session_id)
    mv = meter_values.c
    query = transaction_values(
        node.engine.dialect.name,
        session_id,
        time=time,
        where=[mv.charge_point_id == row["charge_point_id"], *clauses],
    )
    return Selection(query, row["identity"], f"session-{session_id}-meter-values.csv")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise HTTPException(
            422,
            f"limit must be between 1 and {MAX_LIMIT}; for more, narrow since/until or "
            "use the .csv export",
        )


async def _json(node: Any, selection: Selection, grouped: bool, limit: int) -> Response:
    async with node.engine.connect() as connection:
        rows = list((await connection.execute(selection.query.limit(limit + 1))).mappings())
    truncated = len(rows) > limit
    rows = rows[:limit]
    body: Any
    if grouped:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(r["measurand"], []).append(
                {
                    "timestamp": iso(r["timestamp"]),
                    "value": r["value"],
                    "unit": r["unit"],
                    "phase": r["phase"],
                }
            )
        body = groups
    else:
        body = [
            {
                "timestamp": iso(r["timestamp"]),
                "charge_point": selection.identity,
                "connector_id": r["connector_id"],
                "session_id": r["transaction_id"],
                "measurand": r["measurand"],
                "phase": r["phase"],
                "location": r["location"],
                "context": r["context"],
                "unit": r["unit"],
                "value": r["value"],
                "raw_value": r["raw_value"],
                "format": r["format"],
            }
            for r in rows
        ]
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"X-Truncated": "true" if truncated else "false"},
    )


def _csv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A leading =, +, -, @ would make a spreadsheet run the cell as a formula (CSV injection);
    # numbers keep their sign.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv(node: Any, selection: Selection) -> StreamingResponse:
    query = selection.query

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        yield buffer.getvalue()
        async with node.engine.connect() as connection:
            result = await connection.stream(query.execution_options(yield_per=CSV_BATCH))
            async for batch in result.mappings().partitions(CSV_BATCH):
                buffer.seek(0)
                buffer.truncate()
                for r in batch:
                    writer.writerow(
                        (
                            iso(r["timestamp"]),
                            selection.identity,
                            r["connector_id"],
                            r["transaction_id"],
                            r["measurand"],
                            r["phase"],
                            r["location"],
                            r["context"],
                            r["unit"],
                            r["value"],
                            _csv_cell(r["raw_value"]),
                            r["format"],
                        )
                    )
                yield buffer.getvalue()

    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{selection.filename}"'},
    )


@router.get(
    "/charge-points/{identity}/meter-values",
    response_model=None,
    responses=JSON_RESPONSES,
)
async def charge_point_meter_values(
    identity: str,
    node: Node,
    principal: Viewer,
    since: TimeParam = None,
    until: TimeParam = None,
    measurand: MeasurandParam = None,
    phase: PhaseParam = None,
    grouped: GroupedParam = False,
    limit: LimitParam = DEFAULT_LIMIT,
) -> Response:
    """A charge point's sampled values, oldest first; ``since`` defaults to an hour ago."""
    _check_limit(limit)
    selection = await _charge_point_selection(
        node, principal, identity, measurand, phase, since, until
    )
    return await _json(node, selection, grouped, limit)


@router.get(
    "/charge-points/{identity}/meter-values.csv",
    response_class=StreamingResponse,
    responses=CSV_RESPONSES,
)
async def charge_point_meter_values_csv(
    identity: str,
    node: Node,
    principal: Viewer,
    since: TimeParam = None,
    until: TimeParam = None,
    measurand: MeasurandParam = None,
    phase: PhaseParam = None,
) -> StreamingResponse:
    """The same values as CSV, streamed, one row per sampled value; ``since`` defaults to an
    hour ago."""
    selection = await _charge_point_selection(
        node, principal, identity, measurand, phase, since, until
    )
    return _csv(node, selection)


@router.get(
    "/sessions/{session_id}/meter-values",
    response_model=None,
    responses=JSON_RESPONSES,
)
async def session_meter_values(
    session_id: SessionId,
    node: Node,
    principal: Viewer,
    since: TimeParam = None,
    until: TimeParam = None,
    measurand: MeasurandParam = None,
    phase: PhaseParam = None,
    grouped: GroupedParam = False,
    limit: LimitParam = DEFAULT_LIMIT,
) -> Response:
    """A session's sampled values, oldest first (the whole session unless bounded)."""
    _check_limit(limit)
    selection = await _session_selection(
        node, principal, session_id, measurand, phase, since, until
    )
    return await _json(node, selection, grouped, limit)


@router.get(
    "/sessions/{session_id}/meter-values.csv",
    response_class=StreamingResponse,
    responses=CSV_RESPONSES,
)
async def session_meter_values_csv(
    session_id: SessionId,
    node: Node,
    principal: Viewer,
    since: TimeParam = None,
    until: TimeParam = None,
    measurand: MeasurandParam = None,
    phase: PhaseParam = None,
) -> StreamingResponse:
    """A session's values as CSV, streamed, one row per sampled value."""
    selection = await _session_selection(
        node, principal, session_id, measurand, phase, since, until
    )
    return _csv(node, selection)
