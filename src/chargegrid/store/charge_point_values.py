"""One charge point's raw meter values, read the way each database indexes them.

PostgreSQL: the unique sample index leads with (charge point, timestamp): one range scan.

SQLite (migration 0008): the sample index leads with the timestamp, so that a commit appends to
one tail of it, and ``meter_value_keys`` (charge point, timestamp, id) says which values are
whose, for every value up to the rollup watermark; it is filled in bulk when the watermark
advances (:func:`chargegrid.store.rollups.advance_watermark`, about once a second). A read is
then two arms merged in (timestamp, id) order:

- the keys of the charge point in the time range, each joined to its row by id (both in index
  order, so ``LIMIT`` stops early);
- the values above the watermark (a second's worth, read by rowid range), filtered.

The second arm's timestamp is written ``+meter_values.timestamp``: SQLite's unary plus leaves the
value as it is but keeps the planner from walking the time-led sample index to produce that
arm's order or range, which would scan every charge point's values (https://sqlite.org/
optoverview.html, "Disqualifying WHERE clause terms using unary-+"). Tests check both plans
(tests/store/test_charge_point_values.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    and_,
    func,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.tables import meter_value_keys, meter_values, rollup_watermark
from chargegrid.store.types import UTCDateTime

TimeFilter = Callable[[ColumnElement[Any]], list[ColumnElement[bool]]]


def _no_time(_timestamp: ColumnElement[Any]) -> list[ColumnElement[bool]]:
    return []


def between(since: datetime | None, until: datetime | None) -> TimeFilter:
    """The time range ``[since, until)`` (either end open when None) as a :data:`TimeFilter`."""

    def time(timestamp: ColumnElement[Any]) -> list[ColumnElement[bool]]:
        bounds: list[ColumnElement[bool]] = []
        if since is not None:
            bounds.append(timestamp >= since)
        if until is not None:
            bounds.append(timestamp < until)
        return bounds

    return time


def charge_point_values(
    dialect: str,
    charge_point_id: Any,
    columns: Sequence[ColumnElement[Any]] | None = None,
    *,
    time: TimeFilter = _no_time,
    where: Sequence[ColumnElement[bool]] = (),
    newest_first: bool = False,
    then_by: str | None = "id",
    limit: int | None = None,
) -> Select[Any] | CompoundSelect[Any]:
    """``SELECT columns`` (default: every column of ``meter_values``) of the values of
    ``charge_point_id`` (an id or a scalar subquery) matching ``where`` (clauses on
    ``meter_values`` columns) and ``time(timestamp)`` (clauses on the timestamp column given),
    ordered by timestamp, then by ``then_by`` (``"id"`` or ``"value"``, which must be among
    the columns; None: by timestamp alone, which SQLite's keys give without sorting, so that
    ``LIMIT`` stops at once), oldest first unless ``newest_first``.

    Rows are labelled by column name. Pass the time range through ``time``, never in ``where``:
    on SQLite each arm applies it to the column that its index can use (or must not use).
    """
    mv = meter_values.c
    chosen = list(columns) if columns is not None else list(meter_values.columns)
    names = [column.name for column in chosen]
    for needed in ("timestamp", then_by or "timestamp"):
        if needed not in names:
            raise ValueError(f"charge_point_values: {needed!r} must be among the columns")
    if dialect != "sqlite":
        query = select(*chosen).where(mv.charge_point_id == charge_point_id, *time(mv.timestamp))
        query = query.where(*where)
        order = [mv.timestamp]
        if then_by is not None:
            order.append(mv.id if then_by == "id" else mv.value)
        query = query.order_by(*(o.desc() for o in order) if newest_first else order)
        return query.limit(limit) if limit is not None else query

    keys = meter_value_keys.c
    watermark = func.coalesce(select(rollup_watermark.c.raw_id).scalar_subquery(), 0)
    keyed_columns = [
        keys.timestamp.label("timestamp")
        if name == "timestamp"
        else keys.id.label("id")
        if name == "id"
        else column.label(name)
        for name, column in zip(names, chosen, strict=True)
    ]
    keyed = (
        select(*keyed_columns)
        .select_from(
            meter_value_keys.join(
                meter_values,
                # The id finds the row; the rest only rules out a key left behind by a value
                # deleted without it whose id was then reused (checked on the row at hand).
                and_(
                    mv.id == keys.id,
                    mv.charge_point_id == keys.charge_point_id,
                    mv.timestamp == keys.timestamp,
                ),
            )
        )
        # Keys are only written up to the watermark; one above it would be a stale one again
        # (the fresh arm reads those values).
        .where(
            keys.charge_point_id == charge_point_id,
            *time(keys.timestamp),
            keys.id <= watermark,
            *where,
        )
    )
    by: list[ColumnElement[Any]] = [literal_column("timestamp")]
    if then_by is not None:
        by.append(literal_column(then_by))
    if newest_first:
        by = [o.desc() for o in by]
    unindexed = literal_column("+meter_values.timestamp", UTCDateTime())
    fresh_columns = [
        unindexed.label("timestamp") if name == "timestamp" else column.label(name)
        for name, column in zip(names, chosen, strict=True)
    ]
    fresh = select(*fresh_columns).where(
        mv.id > watermark, mv.charge_point_id == charge_point_id, *time(unindexed), *where
    )
    both = union_all(keyed, fresh)
    both = both.order_by(*by)
    return both.limit(limit) if limit is not None else both


async def key_values(connection: AsyncConnection, *, above: int | None, up_to: int | None) -> None:
    """SQLite: key the values with ids in ``(above, up_to]`` (``above`` None: the watermark;
    ``up_to`` None: the newest), sorted, so that each charge point's page of the keys is
    written once. Keys already there are kept (a value below the watermark keyed at once)."""
    if connection.dialect.name != "sqlite":
        return
    low = "coalesce((SELECT raw_id FROM rollup_watermark), 0)" if above is None else str(int(above))
    high = "" if up_to is None else f" AND id <= {int(up_to)}"
    await connection.execute(
        text(
            "INSERT OR IGNORE INTO meter_value_keys (charge_point_id, timestamp, id) "
            f"SELECT charge_point_id, timestamp, id FROM meter_values WHERE id > {low}{high} "
            "ORDER BY 1, 2, 3"
        )
    )
