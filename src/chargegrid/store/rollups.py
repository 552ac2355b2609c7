"""Rollup rows: the merging upsert, the reads behind charts, and what a rebuild needs.

The arithmetic lives in :mod:`chargegrid.metering.rollups`; this module only speaks SQL. Every
statement works on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    and_,
    case,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.tables import charge_points, meter_rollups, meter_values, rollup_watermark

HOUR = "hour"
DAY = "day"
RESOLUTIONS = (HOUR, DAY)

# (charge point id, connector id, measurand, phase or "", location)
SeriesKey = tuple[int, int, str, str, str]
Reading = tuple[datetime, float]

PRIMARY_KEY = (
    "charge_point_id",
    "measurand",
    "resolution",
    "bucket",
    "connector_id",
    "phase",
    "location",
)

# What the raw insert hands back (RETURNING) for the rows it actually inserted.
RETURNED = (
    meter_values.c.charge_point_id,
    meter_values.c.connector_id,
    meter_values.c.transaction_id,
    meter_values.c.timestamp,
    meter_values.c.measurand,
    meter_values.c.phase,
    meter_values.c.location,
    meter_values.c.unit,
    meter_values.c.value,
)


def upsert_statement(dialect: str) -> Insert:
    """``INSERT .. ON CONFLICT DO UPDATE`` merging partial aggregates into stored ones.

    Every merge is commutative and associative (sums, min/max, first/last by the total order
    (timestamp, value), energy credits that add), so the order in which batches, replays and
    out-of-order values arrive does not change the result. A partial row may carry only an
    energy correction (count 0, min/max/first/last NULL): the coalesces keep the stored values.
    """
    least: Any
    greatest: Any
    if dialect == "postgresql":
        statement: Any = postgresql.insert(meter_rollups)
        least, greatest = func.least, func.greatest
    elif dialect == "sqlite":
        statement = sqlite.insert(meter_rollups)
        # SQLite's min()/max() with two arguments are the scalar functions.
        least, greatest = func.min, func.max
    else:
        raise ValueError(f"unsupported database dialect {dialect!r}")
    t = meter_rollups.c
    ex = statement.excluded
    earlier = or_(
        t.first_at.is_(None),
        ex.first_at < t.first_at,
        and_(ex.first_at == t.first_at, ex.first_value < t.first_value),
    )
    later = or_(
        t.last_at.is_(None),
        ex.last_at > t.last_at,
        and_(ex.last_at == t.last_at, ex.last_value > t.last_value),
    )
    upsert: Insert = statement.on_conflict_do_update(
        index_elements=list(PRIMARY_KEY),
        set_={
            "unit": ex.unit,
            "count": t.count + ex.count,
            "sum": t.sum + ex.sum,
            "min": case(
                (t.min.is_(None), ex.min), else_=least(t.min, func.coalesce(ex.min, t.min))
            ),
            "max": case(
                (t.max.is_(None), ex.max), else_=greatest(t.max, func.coalesce(ex.max, t.max))
            ),
            "first_at": case((earlier, ex.first_at), else_=t.first_at),
            "first_value": case((earlier, ex.first_value), else_=t.first_value),
            "last_at": case((later, ex.last_at), else_=t.last_at),
            "last_value": case((later, ex.last_value), else_=t.last_value),
            # NULL + NULL stays NULL for measurands that are not registers.
            "energy": func.coalesce(t.energy, 0.0) + ex.energy,
        },
    )
    return upsert


def _series_filter(series: SeriesKey) -> list[ColumnElement[bool]]:
    charge_point_id, connector_id, measurand, phase, location = series
    mv = meter_values.c
    return [
        mv.charge_point_id == charge_point_id,
        mv.measurand == measurand,
        mv.connector_id == connector_id,
        mv.phase.is_(None) if phase == "" else mv.phase == phase,
        mv.location == location,
        mv.value.is_not(None),
    ]


async def register_window(
    connection: AsyncConnection, series: SeriesKey, first: datetime, last: datetime
) -> tuple[list[Reading], bool]:
    """The series' readings from the one before ``first`` to the one after ``last``.

    Ordered by (timestamp, value); the flag says whether a reading after ``last`` exists.
    Three index range scans on ``uq_meter_values_sample`` (it leads with charge point,
    timestamp; the rest of the series is matched inside the index entries).
    """
    mv = meter_values.c
    where = _series_filter(series)
    before = (
        select(mv.timestamp, mv.value)
        .where(*where, mv.timestamp < first)
        .order_by(mv.timestamp.desc(), mv.value.desc())
        .limit(1)
    )
    inside = select(mv.timestamp, mv.value).where(
        *where, mv.timestamp >= first, mv.timestamp <= last
    )
    after = (
        select(mv.timestamp, mv.value)
        .where(*where, mv.timestamp > last)
        .order_by(mv.timestamp, mv.value)
        .limit(1)
    )
    chain: list[Reading] = [(r[0], float(r[1])) for r in await connection.execute(before)]
    chain += sorted((r[0], float(r[1])) for r in await connection.execute(inside))
    successor = [(r[0], float(r[1])) for r in await connection.execute(after)]
    return chain + successor, bool(successor)


async def previous_reading(
    connection: AsyncConnection, series: SeriesKey, before: datetime, *, up_to: int | None = None
) -> Reading | None:
    """The series' last reading strictly before ``before`` (a rebuild's starting point), among
    values with an id up to ``up_to`` if given."""
    mv = meter_values.c
    where = _series_filter(series)
    if up_to is not None:
        where.append(mv.id <= up_to)
    row = (
        await connection.execute(
            select(mv.timestamp, mv.value)
            .where(*where, mv.timestamp < before)
            .order_by(mv.timestamp.desc(), mv.value.desc())
            .limit(1)
        )
    ).first()
    return (row[0], float(row[1])) if row is not None else None


async def raw_rows(
    connection: AsyncConnection,
    since: datetime,
    until: datetime,
    *,
    batch: int = 5000,
    up_to: int | None = None,
) -> AsyncIterator[Sequence[Any]]:
    """Raw values in ``[since, until)`` with a number (and an id up to ``up_to`` if given), in
    series order then (timestamp, value); streamed in batches from a server-side cursor.
    Columns as :data:`RETURNED`."""
    mv = meter_values.c
    where = [mv.timestamp >= since, mv.timestamp < until, mv.value.is_not(None)]
    if up_to is not None:
        where.append(mv.id <= up_to)
    query = (
        select(*RETURNED)
        .where(*where)
        .order_by(
            mv.charge_point_id,
            mv.connector_id,
            mv.measurand,
            func.coalesce(mv.phase, ""),
            mv.location,
            mv.timestamp,
            mv.value,
        )
    )
    result = await connection.stream(query.execution_options(yield_per=batch))
    async for rows in result.partitions(batch):
        for row in rows:
            yield row


async def delete_range(connection: AsyncConnection, since: datetime, until: datetime) -> int:
    """Delete hourly and daily rollups whose bucket starts in ``[since, until)``."""
    t = meter_rollups.c
    result = await connection.execute(
        delete(meter_rollups).where(t.bucket >= since, t.bucket < until)
    )
    return int(result.rowcount or 0)


async def lock_for_rebuild(connection: AsyncConnection) -> None:
    """Keep the writer's merges out while a range is deleted and recomputed.

    PostgreSQL: SHARE ROW EXCLUSIVE conflicts with the ROW EXCLUSIVE lock every upsert takes, so
    a batch that wants to merge waits for the rebuild, then merges into the recomputed rows; the
    rebuild cannot see that batch's raw rows (not committed), so nothing is counted twice.
    SQLite: the rebuild's ``BEGIN IMMEDIATE`` already holds the only write lock.
    """
    if connection.dialect.name == "postgresql":
        await connection.execute(text("LOCK TABLE meter_rollups IN SHARE ROW EXCLUSIVE MODE"))


async def read(
    connection: AsyncConnection,
    *,
    charge_point_id: int,
    measurand: str,
    resolution: str,
    since: datetime,
    until: datetime,
    connector_id: int | None = None,
    phase: str | None = None,
) -> list[Any]:
    """Rollup rows of one charge point and measurand with buckets in ``[since, until)``; one
    range scan of the primary key."""
    t = meter_rollups.c
    query = select(meter_rollups).where(
        t.charge_point_id == charge_point_id,
        t.measurand == measurand,
        t.resolution == resolution,
        t.bucket >= since,
        t.bucket < until,
    )
    if connector_id is not None:
        query = query.where(t.connector_id == connector_id)
    if phase is not None:
        query = query.where(t.phase == phase)
    query = query.order_by(t.connector_id, t.phase, t.location, t.bucket)
    return list((await connection.execute(query)).mappings())


async def read_all(connection: AsyncConnection) -> list[Any]:
    """Every rollup row (tests compare them to a recompute)."""
    return list((await connection.execute(select(meter_rollups))).mappings())


async def watermark(connection: AsyncConnection) -> int:
    """The id up to which every meter value is counted in the rollups (SQLite's deferred
    merging, metering/rollups.py)."""
    value = await connection.scalar(select(rollup_watermark.c.raw_id))
    return int(value or 0)


async def advance_watermark(connection: AsyncConnection) -> int:
    """Every meter value stored so far is counted: called in the transaction that merged the
    last of them. Returns the new watermark."""
    latest = select(func.coalesce(func.max(meter_values.c.id), 0)).scalar_subquery()
    value = await connection.scalar(
        update(rollup_watermark).values(raw_id=latest).returning(rollup_watermark.c.raw_id)
    )
    if value is None:  # the row is gone (a test emptied the table): start it again
        value = await connection.scalar(
            rollup_watermark.insert()
            .values(id=1, raw_id=latest)
            .returning(rollup_watermark.c.raw_id)
        )
    return int(value or 0)


async def uncounted(connection: AsyncConnection, after: int) -> list[Sequence[Any]]:
    """Meter values with an id above ``after`` (shaped as :data:`RETURNED`), in id order."""
    mv = meter_values.c
    query = select(*RETURNED).where(mv.id > after).order_by(mv.id)
    return list((await connection.execute(query)).all())


async def existing_charge_points(connection: AsyncConnection, ids: set[int]) -> set[int]:
    """Which of ``ids`` still exist (a removed charge point's rollups went with it)."""
    query = select(charge_points.c.id)
    if len(ids) <= 10_000:  # far below SQLite's variable limit; else read them all
        query = query.where(charge_points.c.id.in_(ids))
    return set((await connection.execute(query)).scalars())
