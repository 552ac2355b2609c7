"""Rollup rows: the merging upsert, the reads behind charts, and what a rebuild needs.

The arithmetic lives in :mod:`chargegrid.metering.rollups`; this module only speaks SQL. Every
statement works on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
from chargegrid.store.types import sqlite_text
from chargegrid.store.value_keys import charge_point_values, key_values

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


def _series_filter(series: SeriesKey) -> tuple[int, list[ColumnElement[bool]]]:
    """The series' charge point, and the clauses on its other columns (values with a number)."""
    charge_point_id, connector_id, measurand, phase, location = series
    mv = meter_values.c
    return charge_point_id, [
        mv.measurand == measurand,
        mv.connector_id == connector_id,
        mv.phase.is_(None) if phase == "" else mv.phase == phase,
        mv.location == location,
        mv.value.is_not(None),
    ]


def _readings(
    connection: AsyncConnection,
    series: SeriesKey,
    time: Callable[[ColumnElement[Any]], list[ColumnElement[bool]]],
    *,
    newest_first: bool = False,
    limit: int | None = None,
    counted: Counted | None = None,
    columns: Sequence[ColumnElement[Any]] | None = None,
) -> Any:
    charge_point_id, where = _series_filter(series)
    if counted is not None:
        where.append(counted.clause(meter_values.c))
    mv = meter_values.c
    return charge_point_values(
        connection.dialect.name,
        charge_point_id,
        columns or [mv.timestamp, mv.value],
        time=time,
        where=where,
        newest_first=newest_first,
        then_by="value" if columns is None else None,
        limit=limit,
    )


def _neighbour(
    connection: AsyncConnection,
    series: SeriesKey,
    time: Callable[[ColumnElement[Any]], list[ColumnElement[bool]]],
    *,
    newest_first: bool,
    counted: Counted | None = None,
) -> Any:
    """The series' readings at the newest (``newest_first``) or oldest timestamp within
    ``time``: all of them, as several can share a timestamp (contexts, formats); the caller
    takes the last or first by value. Found in two steps because ordering by (timestamp,
    value) with LIMIT 1 sorts everything in range on SQLite, a charge point's whole history for
    "the reading before"; by timestamp alone the keys' order is used and the search stops at
    the first match."""
    mv = meter_values.c
    at = _readings(
        connection,
        series,
        time,
        newest_first=newest_first,
        limit=1,
        counted=counted,
        columns=[mv.timestamp],
    ).scalar_subquery()
    return _readings(connection, series, lambda ts: [ts == at], counted=counted)


async def fresh_readings(
    connection: AsyncConnection, charge_point_ids: set[int]
) -> dict[SeriesKey, list[Reading]] | None:
    """SQLite: the readings with a number above the watermark of ``charge_point_ids``, by
    series (one read of the rowid range; there is no index by charge point to use). None on
    other databases, which need no such thing (store/value_keys.py)."""
    if connection.dialect.name != "sqlite" or not charge_point_ids:
        return None
    mv = meter_values.c
    watermark = func.coalesce(select(rollup_watermark.c.keyed_id).scalar_subquery(), 0)
    query = select(
        mv.charge_point_id,
        mv.connector_id,
        mv.measurand,
        mv.phase,
        mv.location,
        mv.timestamp,
        mv.value,
    ).where(mv.id > watermark, mv.value.is_not(None))
    if len(charge_point_ids) <= 10_000:  # far below SQLite's variable limit
        query = query.where(mv.charge_point_id.in_(sorted(charge_point_ids)))
    fresh: dict[SeriesKey, list[Reading]] = {}
    for cp, connector, measurand, phase, location, at, value in await connection.execute(query):
        if cp in charge_point_ids:
            key = (cp, connector, measurand, phase or "", location)
            fresh.setdefault(key, []).append((at, float(value)))
    return fresh


async def register_window(
    connection: AsyncConnection,
    series: SeriesKey,
    first: datetime,
    last: datetime,
    *,
    fresh: list[Reading] | None = None,
) -> tuple[list[Reading], bool]:
    """The series' readings from the one before ``first`` to the one after ``last``.

    Ordered by (timestamp, value); the flag says whether a reading after ``last`` exists.
    Three range reads of the charge point's values (store/value_keys.py); the rest of
    the series is matched on the rows. On SQLite, ``fresh`` (the series' readings above the
    watermark, from :func:`fresh_readings`) stands in for the values above the watermark.
    """
    if fresh is not None:
        return await _sqlite_register_window(connection, series, first, last, fresh)
    before_q = _readings(connection, series, lambda ts: [ts < first], newest_first=True, limit=1)
    inside_q = _readings(connection, series, lambda ts: [ts >= first, ts <= last])
    after_q = _readings(connection, series, lambda ts: [ts > last], limit=1)
    before = [(r[0], float(r[1])) for r in await connection.execute(before_q)]
    inside = [(r[0], float(r[1])) for r in await connection.execute(inside_q)]
    after = [(r[0], float(r[1])) for r in await connection.execute(after_q)]
    return before + sorted(inside) + after, bool(after)


def _keyed_sql(alias: str, time: str, columns: str) -> str:
    """SQLite: the series' keyed values (up to the watermark) matching ``time`` (on
    ``{alias}k.timestamp``); see store/value_keys.py."""
    k, mv = f"{alias}k", f"{alias}mv"
    return (
        f"SELECT {columns} FROM meter_value_keys AS {k} JOIN meter_values AS {mv} "
        f"ON {mv}.id = {k}.id AND {mv}.charge_point_id = {k}.charge_point_id "
        f"AND {mv}.timestamp = {k}.timestamp "
        f"WHERE {k}.charge_point_id = :cp AND {time} "
        f"AND {k}.id <= (SELECT coalesce(max(keyed_id), 0) FROM rollup_watermark) "
        f"AND {mv}.measurand = :measurand AND {mv}.connector_id = :connector "
        f"AND coalesce({mv}.phase, '') = :phase AND {mv}.location = :location "
        f"AND {mv}.value IS NOT NULL"
    )


def _keyed_neighbour_sql(part: int, comparison: str, direction: str) -> str:
    # The neighbour's timestamp by the keys' order alone (LIMIT stops at the first match),
    # then every reading at it (several can share a timestamp).
    at = _keyed_sql("n", f"nk.timestamp {comparison}", "nk.timestamp")
    at += f" ORDER BY nk.timestamp {direction} LIMIT 1"
    return _keyed_sql("", f"k.timestamp = ({at})", f"{part}, k.timestamp, mv.value")


_SQLITE_WINDOW = " UNION ALL ".join(
    (
        _keyed_neighbour_sql(0, "< :first", "DESC"),
        _keyed_sql(
            "", "k.timestamp >= :first AND k.timestamp <= :last", "1, k.timestamp, mv.value"
        ),
        _keyed_neighbour_sql(2, "> :last", "ASC"),
    )
)


async def _sqlite_register_window(
    connection: AsyncConnection,
    series: SeriesKey,
    first: datetime,
    last: datetime,
    fresh: list[Reading],
) -> tuple[list[Reading], bool]:
    """:func:`register_window` on SQLite with the values above the watermark at hand: one
    statement, written out rather than built with SQLAlchemy, whose compiling took ~10 times
    as long as the statement ran; this runs once per series after a fleet reconnects."""
    charge_point_id, connector_id, measurand, phase, location = series
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    rows = await driver.execute_fetchall(
        _SQLITE_WINDOW,
        {
            "cp": charge_point_id,
            "connector": connector_id,
            "measurand": measurand,
            "phase": phase,
            "location": location,
            "first": sqlite_text(first),
            "last": sqlite_text(last),
        },
    )
    into: tuple[list[Reading], list[Reading], list[Reading]] = ([], [], [])
    for number, at, value in rows:
        into[number].append((datetime.fromisoformat(at).replace(tzinfo=UTC), float(value)))
    before, inside, after = into
    before = sorted(before + [r for r in fresh if r[0] < first])[-1:]
    inside += [r for r in fresh if first <= r[0] <= last]
    after = sorted(after + [r for r in fresh if r[0] > last])[:1]
    return before + sorted(inside) + after, bool(after)


async def previous_reading(
    connection: AsyncConnection,
    series: SeriesKey,
    before: datetime,
    *,
    counted: Counted | None = None,
) -> Reading | None:
    """The series' last reading strictly before ``before`` (a rebuild's starting point), among
    the ``counted`` values if given."""
    query = _neighbour(
        connection, series, lambda ts: [ts < before], newest_first=True, counted=counted
    )
    readings = sorted((r[0], float(r[1])) for r in await connection.execute(query))
    return readings[-1] if readings else None


async def raw_rows(
    connection: AsyncConnection,
    since: datetime,
    until: datetime,
    *,
    batch: int = 5000,
    counted: Counted | None = None,
) -> AsyncIterator[Sequence[Any]]:
    """Raw values in ``[since, until)`` with a number (and ``counted`` if given), in
    series order then (timestamp, value); streamed in batches from a server-side cursor.
    Columns as :data:`RETURNED`."""
    mv = meter_values.c
    where = [mv.timestamp >= since, mv.timestamp < until, mv.value.is_not(None)]
    if counted is not None:
        where.append(counted.clause(mv))
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


@dataclass(frozen=True, slots=True)
class Counted:
    """Which meter values are counted in meter_rollups (SQLite's deferred merging,
    metering/rollups.py): those with an id up to ``raw_id``, and, while a merge round is under
    way, those with an id up to ``round_up_to`` of the charge points whose slice is merged
    (charge point id modulo ``round_slices`` below ``round_done``)."""

    raw_id: int
    round_up_to: int | None = None
    round_slices: int = 0
    round_done: int = 0

    def clause(self, mv: Any) -> ColumnElement[bool]:
        """The condition on ``meter_values`` columns ``mv`` for "counted"."""
        counted: ColumnElement[bool] = mv.id <= self.raw_id
        if self.round_up_to is None or not self.round_done:
            return counted
        merged = and_(
            mv.id <= self.round_up_to, (mv.charge_point_id % self.round_slices) < self.round_done
        )
        return or_(counted, merged)


async def counted(connection: AsyncConnection) -> Counted:
    """What the database says is counted (:class:`Counted`)."""
    w = rollup_watermark.c
    row = (
        await connection.execute(
            select(w.raw_id, w.merge_round_up_to, w.merge_round_slices, w.merge_round_done)
        )
    ).first()
    if row is None:
        return Counted(0)
    return Counted(int(row[0] or 0), row[1], int(row[2] or 0), int(row[3] or 0))


async def watermark(connection: AsyncConnection) -> int:
    """The id up to which every meter value is counted in the rollups (SQLite's deferred
    merging, metering/rollups.py)."""
    value = await connection.scalar(select(rollup_watermark.c.raw_id))
    return int(value or 0)


async def key_watermark(connection: AsyncConnection) -> int:
    """The id up to which every meter value is keyed (SQLite, store/value_keys.py)."""
    value = await connection.scalar(select(rollup_watermark.c.keyed_id))
    return int(value or 0)


async def advance_watermark(connection: AsyncConnection, *, keys: bool = True) -> int:
    """Every meter value stored so far is counted: called in the transaction that merged the
    last of them. Returns the new watermark. ``keys``: SQLite keys every value not keyed yet
    in the same transaction (else the sliced fill does, store/value_keys.fill_step)."""
    if keys:
        await key_values(connection, above=None, up_to=None)
    latest = select(func.coalesce(func.max(meter_values.c.id), 0)).scalar_subquery()
    value = await connection.scalar(
        update(rollup_watermark)
        .values(raw_id=latest, **_NO_ROUND)
        .returning(rollup_watermark.c.raw_id)
    )
    if value is None:  # the row is gone (a test emptied the table): start it again
        value = await connection.scalar(
            rollup_watermark.insert()
            .values(id=1, raw_id=latest, keyed_id=latest if keys else 0)
            .returning(rollup_watermark.c.raw_id)
        )
    return int(value or 0)


async def close_round(connection: AsyncConnection, raw_id: int) -> None:
    """A merge round is complete: every value up to ``raw_id`` is counted."""
    await connection.execute(update(rollup_watermark).values(raw_id=raw_id, **_NO_ROUND))


_NO_ROUND: dict[str, Any] = {
    "merge_round_up_to": None,
    "merge_round_slices": 0,
    "merge_round_done": 0,
}


async def uncounted(connection: AsyncConnection, counted: Counted) -> list[Sequence[Any]]:
    """Meter values not ``counted`` (shaped as :data:`RETURNED`), in id order."""
    mv = meter_values.c
    query = select(*RETURNED).where(~counted.clause(mv)).order_by(mv.id)
    return list((await connection.execute(query)).all())


async def existing_charge_points(connection: AsyncConnection, ids: set[int]) -> set[int]:
    """Which of ``ids`` still exist (a removed charge point's rollups went with it)."""
    query = select(charge_points.c.id)
    if len(ids) <= 10_000:  # far below SQLite's variable limit; else read them all
        query = query.where(charge_points.c.id.in_(ids))
    return set((await connection.execute(query)).scalars())


# The same two, and the watermark's move, on a plain sqlite3 connection: a deferred merge run
# by the writer thread (metering/rollups.py, RollupMaintainer.write_alone).


def existing_charge_points_sync(connection: sqlite3.Connection, ids: set[int]) -> set[int]:
    """:func:`existing_charge_points` on a plain sqlite3 connection."""
    if not ids:
        return set()
    if len(ids) <= 10_000:
        marks = ", ".join("?" * len(ids))
        sql = f"SELECT id FROM charge_points WHERE id IN ({marks})"
        cursor = connection.execute(sql, tuple(ids))
    else:
        cursor = connection.execute("SELECT id FROM charge_points")
    return {row[0] for row in cursor}


def set_round_sync(connection: sqlite3.Connection, up_to: int, slices: int, done: int) -> None:
    """A merge round is under way (:class:`Counted`): ``done`` of its ``slices`` merged."""
    connection.execute(
        "UPDATE rollup_watermark SET merge_round_up_to = ?, merge_round_slices = ?, "
        "merge_round_done = ?",
        (up_to, slices, done),
    )


def newest_id_sync(connection: sqlite3.Connection) -> int:
    """The highest meter value id stored (0: none)."""
    ((newest,),) = connection.execute("SELECT coalesce(max(id), 0) FROM meter_values").fetchall()
    return int(newest)


def set_watermark_sync(connection: sqlite3.Connection, raw_id: int) -> None:
    """Every meter value up to ``raw_id`` is counted in meter_rollups (the keys keep theirs);
    no merge round is under way."""
    cursor = connection.execute(
        "UPDATE rollup_watermark SET raw_id = ?, merge_round_up_to = NULL, "
        "merge_round_slices = 0, merge_round_done = 0",
        (raw_id,),
    )
    if cursor.rowcount == 0:  # the row is gone (a test emptied the table): start it again
        connection.execute(
            "INSERT INTO rollup_watermark (id, raw_id, keyed_id) VALUES (1, ?, 0)", (raw_id,)
        )
