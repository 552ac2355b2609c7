"""Meter values of one charge point or one session, read the way each database indexes them.

PostgreSQL: the unique sample index leads with (charge point, timestamp), and
``ix_meter_values_transaction`` with (transaction, timestamp): one range scan either way.

SQLite (migrations 0008 and 0009): the sample index leads with the timestamp, so that a commit
appends to one tail of it, and there is no transaction index; instead ``meter_value_keys``
(charge point, timestamp, id) and ``meter_value_transaction_keys`` (transaction, timestamp, id)
say which values are whose, for every value up to the key watermark (``rollup_watermark.
keyed_id``, migration 0010). Both are filled in bulk about once a second, so each charge point's
and each session's page is written once a second rather than at every commit. A read is then two
arms merged in (timestamp, id) order:

- the keys of the charge point (session) in the time range, each joined to its row by id (both
  in index order, so ``LIMIT`` stops early);
- the values above the key watermark (a second or two's worth, read by rowid range), filtered.

The fill is sliced (:func:`fill_step`): the values of one second are keyed a slice of charge
points at a time, one slice per commit, spread over the next second, and the key watermark moves
when the last slice is in. Filling all of them in one transaction stalled every charge point's
next acknowledgement for that long (docs/benchmarks.md, session 7: 45-120 ms at 2,500 messages/s).

The second arm's timestamp is written ``+meter_values.timestamp``: SQLite's unary plus leaves the
value as it is but keeps the planner from walking the time-led sample index to produce that
arm's order or range, which would scan every charge point's values (https://sqlite.org/
optoverview.html, "Disqualifying WHERE clause terms using unary-+"). Tests check the plans
(tests/store/test_value_keys.py).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    FromClause,
    Select,
    Table,
    and_,
    func,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.tables import (
    meter_value_keys,
    meter_value_transaction_keys,
    meter_values,
    rollup_watermark,
)
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


@dataclass(frozen=True)
class _Keys:
    """A way in: the ``meter_values`` column a read selects on, and SQLite's key table for it."""

    column: str
    table: Table


_CHARGE_POINT = _Keys("charge_point_id", meter_value_keys)
_TRANSACTION = _Keys("transaction_id", meter_value_transaction_keys)


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
    ``charge_point_id`` (an id, a scalar subquery or an outer query's column) matching
    ``where`` (clauses on ``meter_values`` columns) and ``time(timestamp)`` (clauses on the
    timestamp column given), ordered by timestamp, then by ``then_by`` (``"id"`` or
    ``"value"``, which must be among the columns; None: by timestamp alone, which SQLite's keys
    give without sorting, so that ``LIMIT`` stops at once), oldest first unless
    ``newest_first``.

    Rows are labelled by column name. Pass the time range through ``time``, never in ``where``:
    on SQLite each arm applies it to the column that its index can use (or must not use).
    """
    return _values(
        _CHARGE_POINT,
        dialect,
        charge_point_id,
        columns,
        time=time,
        where=where,
        newest_first=newest_first,
        then_by=then_by,
        limit=limit,
    )


def transaction_values(
    dialect: str,
    transaction_id: Any,
    columns: Sequence[ColumnElement[Any]] | None = None,
    *,
    time: TimeFilter = _no_time,
    where: Sequence[ColumnElement[bool]] = (),
    newest_first: bool = False,
    then_by: str | None = "id",
    limit: int | None = None,
    correlate: FromClause | None = None,
) -> Select[Any] | CompoundSelect[Any]:
    """As :func:`charge_point_values`, for the values that carry ``transaction_id`` (a
    session's). Values may carry a transaction id the server never issued (no foreign key);
    they are found all the same. ``transaction_id`` may be a column of ``correlate``, a table
    of an enclosing query (one read per row of it, e.g. each session's latest reading)."""
    return _values(
        _TRANSACTION,
        dialect,
        transaction_id,
        columns,
        time=time,
        where=where,
        newest_first=newest_first,
        then_by=then_by,
        limit=limit,
        correlate=correlate,
    )


def _values(
    way: _Keys,
    dialect: str,
    key: Any,
    columns: Sequence[ColumnElement[Any]] | None,
    *,
    time: TimeFilter,
    where: Sequence[ColumnElement[bool]],
    newest_first: bool,
    then_by: str | None,
    limit: int | None,
    correlate: FromClause | None = None,
) -> Select[Any] | CompoundSelect[Any]:
    mv = meter_values.c

    def within(query: Select[Any]) -> Select[Any]:
        # correlate() without arguments would turn auto-correlation off: only when asked.
        return query.correlate(correlate) if correlate is not None else query

    chosen = list(columns) if columns is not None else list(meter_values.columns)
    names = [column.name for column in chosen]
    for needed in ("timestamp", then_by or "timestamp"):
        if needed not in names:
            raise ValueError(f"meter value reads: {needed!r} must be among the columns")
    if dialect != "sqlite":
        query = select(*chosen).where(mv[way.column] == key, *time(mv.timestamp))
        query = within(query.where(*where))
        order = [mv.timestamp]
        if then_by is not None:
            order.append(mv.id if then_by == "id" else mv.value)
        query = query.order_by(*(o.desc() for o in order) if newest_first else order)
        return query.limit(limit) if limit is not None else query

    keys: Any = way.table.c
    watermark = func.coalesce(select(rollup_watermark.c.keyed_id).scalar_subquery(), 0)
    keyed_columns = [
        keys.timestamp.label("timestamp")
        if name == "timestamp"
        else keys.id.label("id")
        if name == "id"
        else column.label(name)
        for name, column in zip(names, chosen, strict=True)
    ]
    keyed = within(
        select(*keyed_columns)
        .select_from(
            way.table.join(
                meter_values,
                # The id finds the row; the rest only rules out a key left behind by a value
                # deleted without it whose id was then reused (checked on the row at hand).
                and_(
                    mv.id == keys.id,
                    mv[way.column] == keys[way.column],
                    mv.timestamp == keys.timestamp,
                ),
            )
        )
        # Keys are only written up to the watermark; one above it would be a stale one again
        # (the fresh arm reads those values).
        .where(
            keys[way.column] == key,
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
    fresh = within(
        select(*fresh_columns).where(
            mv.id > watermark, mv[way.column] == key, *time(unindexed), *where
        )
    )
    both = union_all(keyed, fresh)
    both = both.order_by(*by)
    return both.limit(limit) if limit is not None else both


# The two fills, for the values with ids in (?, ?] (and, sliced, charge point id ? modulo ?).
# ORDER BY the key: each page of keys is written once per statement.
_FILLS = (
    "INSERT OR IGNORE INTO meter_value_keys (charge_point_id, timestamp, id) "
    "SELECT charge_point_id, timestamp, id FROM meter_values WHERE id > ? AND id <= ?{slice} "
    "ORDER BY 1, 2, 3",
    "INSERT OR IGNORE INTO meter_value_transaction_keys "
    "(transaction_id, timestamp, id, charge_point_id) "
    "SELECT transaction_id, timestamp, id, charge_point_id FROM meter_values "
    "WHERE id > ? AND id <= ?{slice} AND transaction_id IS NOT NULL ORDER BY 1, 2, 3",
)
_WHOLE = tuple(sql.format(slice="") for sql in _FILLS)
_SLICE = tuple(sql.format(slice=" AND charge_point_id % ? = ?") for sql in _FILLS)
# A slice whose ids the writer thread noted (:class:`KeyQueue`): one JSON array of ids, each
# found by rowid (the plan: tests/store/test_value_keys.py); the round's bounds still apply.
_LISTED = tuple(sql.format(slice=" AND id IN (SELECT value FROM json_each(?))") for sql in _FILLS)
_NEWEST = "SELECT coalesce(max(id), 0) FROM meter_values"
_MOVE = "UPDATE rollup_watermark SET keyed_id = max(keyed_id, ?)"

# How many values one slice keys, about: both fills of ~2,000 values take ~6 ms of raw SQLite
# (benchmarks/sqlite_index.py), a pause an acknowledgement can take; at most this many slices.
SLICE_VALUES = 1000
MAX_SLICES = 32

Execute = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
"""Runs one SQL statement (qmark parameters) in the open transaction; its rows, if any."""


@dataclass(frozen=True, slots=True)
class KeyFill:
    """Where the sliced fill stands. Only a committed transaction's :func:`fill_step` result
    may replace it: a rolled-back slice must run again."""

    keyed: int  # keys are complete up to this id (rollup_watermark.keyed_id)
    target: int | None = None  # the round's last id, while a round runs
    done: int = 0  # slices of the round done
    slices: int = 0
    started: float = -math.inf  # when the round started (monotonic seconds)
    last: float = -math.inf  # when its last slice ran
    # Each slice's ids as a JSON array, when the round took them from a KeyQueue; None: the
    # slices find their values by scanning the round's ids for their charge points.
    listed: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def covered(self) -> int:
        """Ids up to here are keyed or will be by the running round's slices: a value the
        database stores with an id up to it (reused: a deleted top row's) must be keyed at
        once (:func:`key_values`)."""
        return self.keyed if self.target is None else self.target


class KeyQueue:
    """The ids of the values the writer thread stored, by charge point, for the key fill's next
    round: its slices then find their values by id instead of each scanning all of the round's
    values for its charge points. Scanning made the fill quadratic in the rate (a round of N
    values in N / :data:`SLICE_VALUES` slices reads N values per slice): at ~8,000 messages/s
    the fill was 15 % of the server's CPU, ~60 % of it these scans (docs/benchmarks.md,
    session 10).

    Only the writer thread uses it, and only as a shortcut: it holds every id in
    ``(low, high]`` or says it does not (:meth:`take` returns None and the round scans). Ids it
    lists but the database does not hold (a rolled-back transaction's) cost a lookup; a value
    is keyed by what its row says, whichever charge point the queue noted for it."""

    def __init__(self) -> None:
        self._by_charge_point: dict[int, list[int]] = {}
        self._low = 0  # every id in (low, high] is listed
        self._high = 0
        self.listed_rounds = 0  # rounds that took their ids from here
        self.scanned_rounds = 0  # ... that had to scan instead

    def add(self, first_id: int, charge_points: Sequence[int]) -> None:
        """Values just stored with the ids ``first_id, first_id + 1, ...``, of these charge
        points in that order (one writer: a transaction's new rows have consecutive ids)."""
        if not charge_points:
            return
        if first_id != self._high + 1:
            # Values stored another way in between, a reused id, or a transaction rolled back
            # after it was noted: what is listed no longer says which ids exist. Start again.
            self._by_charge_point.clear()
            self._low = first_id - 1
        by_charge_point = self._by_charge_point
        for row_id, charge_point_id in enumerate(charge_points, first_id):
            ids = by_charge_point.get(charge_point_id)
            if ids is None:
                by_charge_point[charge_point_id] = [row_id]
            else:
                ids.append(row_id)
        self._high = first_id + len(charge_points) - 1

    def take(self, above: int, up_to: int, slices: int) -> tuple[str, ...] | None:
        """The ids in ``(above, up_to]`` by slice (charge point id modulo ``slices``), each a
        JSON array; None if the queue does not hold them all. Either way it forgets the ids up
        to ``up_to``: the round keys them."""
        listed = self._low <= above and self._high >= up_to
        parts: list[list[int]] = [[] for _ in range(slices)]
        keep: dict[int, list[int]] = {}
        for charge_point_id, ids in self._by_charge_point.items():
            cut = bisect_right(ids, up_to)
            if cut < len(ids):
                keep[charge_point_id] = ids[cut:]
            if listed and cut:
                parts[charge_point_id % slices] += ids[bisect_right(ids, above, 0, cut) : cut]
        self._by_charge_point = keep
        self._low = max(self._low, up_to)
        self._high = max(self._high, self._low)
        if not listed:
            self.scanned_rounds += 1
            return None
        self.listed_rounds += 1
        return tuple("[" + ",".join(map(str, part)) + "]" for part in parts)


def fill_step(
    execute: Execute,
    state: KeyFill,
    now: float,
    interval: float,
    queue: KeyQueue | None = None,
) -> KeyFill:
    """Run the fill's slice that is due at ``now``, if any, and return the new state.

    A round starts once ``interval`` has passed since the previous one: it takes the values
    stored by then, splits them by charge point id modulo ``slices`` (one slice per
    :data:`SLICE_VALUES` values) and runs slice *j* at ``started + j * interval / slices``, one
    per call, and never sooner than half that spacing after the slice before it: behind time
    (the event loop or the disk stalled) it catches up gradually rather than adding a slice to
    every commit of the backlog. The last one moves the key watermark. With a ``queue`` that
    holds the round's ids, each slice looks up its own ids rather than scanning the round's."""
    if state.target is None:
        if now - state.started < interval:
            return state
        ((newest,),) = execute(_NEWEST, ())
        if newest <= state.keyed:
            return replace(state, started=now)
        slices = min(MAX_SLICES, max(1, math.ceil((newest - state.keyed) / SLICE_VALUES)))
        listed = queue.take(state.keyed, int(newest), slices) if queue is not None else None
        state = KeyFill(state.keyed, target=int(newest), slices=slices, started=now, listed=listed)
    else:
        spacing = interval / state.slices
        if now < max(state.started + state.done * spacing, state.last + spacing / 2):
            return state
    assert state.target is not None
    if state.listed is None:
        for sql in _SLICE:
            execute(sql, (state.keyed, state.target, state.slices, state.done))
    elif state.listed[state.done] != "[]":
        for sql in _LISTED:
            execute(sql, (state.keyed, state.target, state.listed[state.done]))
    if state.done + 1 < state.slices:
        return replace(state, done=state.done + 1, last=now)
    execute(_MOVE, (state.target,))
    return KeyFill(max(state.keyed, state.target), started=state.started, last=now)


async def fill_step_on(
    connection: AsyncConnection, state: KeyFill, now: float, interval: float
) -> KeyFill:
    """:func:`fill_step` on an SQLAlchemy connection (a batch that took the usual way)."""

    def run(sync: Any) -> KeyFill:
        def execute(sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            result = sync.exec_driver_sql(sql, parameters)
            return [tuple(row) for row in result] if result.returns_rows else []

        return fill_step(execute, state, now, interval)

    return await connection.run_sync(run)


async def key_values(connection: AsyncConnection, *, above: int | None, up_to: int | None) -> None:
    """SQLite: key the values with ids in ``(above, up_to]`` (``above`` None: the key
    watermark; ``up_to`` None: the newest) by charge point and, those with one, by transaction;
    sorted, so that each charge point's and each session's page of keys is written once. Keys
    already there are kept (a value below the watermark keyed at once). Moves the key watermark
    up to ``up_to`` only if ``above`` is None (then the values up to it are all keyed)."""
    if connection.dialect.name != "sqlite":
        return
    move = above is None
    if above is None:
        above = int(await connection.scalar(select(rollup_watermark.c.keyed_id)) or 0)
    if up_to is None:
        up_to = int(await connection.scalar(text(_NEWEST)) or 0)
    for sql in _WHOLE:
        await connection.exec_driver_sql(sql, (above, up_to))
    if move:
        await connection.exec_driver_sql(_MOVE, (up_to,))
