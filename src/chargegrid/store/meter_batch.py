"""The two statements of every meter value batch: the idempotent insert and the rollup merge.

They run once per group commit with hundreds of rows each, so their per-row cost is the hot
path's (DESIGN.md performance budget). Through SQLAlchemy's executemany every row goes through
bind processors (our :class:`~chargegrid.store.types.UTCDateTime` and the dialect's datetime
formatting) and every returned row through result processors: measured at 166 µs per value on
SQLite with rollups, most of the 140 ms a 280-message batch took.

:class:`SqliteMeterBatch` sends the same statements as plain SQL with plain tuples: datetimes are
formatted once per distinct value into SQLAlchemy's own SQLite storage format (so indexes,
comparisons and reads see exactly what the ORM path would have written), the insert is one
multi-row ``VALUES`` per chunk, the merge one multi-row upsert per chunk compiled from
:func:`chargegrid.store.rollups.upsert_statement`, the single source of its SQL. Neither returns
rows or runs per row: the sqlite3 module releases and retakes the GIL at every step of a
statement, and while the event loop is busy each retake waits (up to the 5 ms switch interval),
so a statement stepped once per row took seconds under load. The insert learns which rows are
new from the count of changes (all of them, normally: the input rows with consecutive ids).
:class:`CoreMeterBatch` keeps SQLAlchemy Core for PostgreSQL, where asyncpg's own binary
protocol does the per-row work.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import Insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store import meter_values as meter_store
from chargegrid.store import rollups as rollup_store
from chargegrid.store.sqlite_writer import Abandon
from chargegrid.store.tables import meter_rollups, meter_values
from chargegrid.store.types import sqlite_text

# Columns of a rollup row in the order of :data:`RollupValues`.
ROLLUP_COLUMNS: tuple[str, ...] = tuple(column.name for column in meter_rollups.columns)
RollupValues = tuple[Any, ...]

# What SqliteMeterBatch.merge unpacks positionally; a schema change must update it.
_EXPECTED_ROLLUP_COLUMNS = (
    *rollup_store.PRIMARY_KEY,
    *("unit", "count", "sum", "min", "max", "first_at", "first_value", "last_at"),
    *("last_value", "energy"),
)
if ROLLUP_COLUMNS != _EXPECTED_ROLLUP_COLUMNS:
    raise RuntimeError(f"meter_rollups columns changed: {ROLLUP_COLUMNS}")

# The meter value columns a normalised row (metering/normalise.py) carries, in insert order:
# the timestamp first (formatted per batch), then the rest as they are.
_OTHER_NAMES = tuple(c.name for c in meter_values.columns if c.name not in ("id", "timestamp"))
INSERT_COLUMNS: tuple[str, ...] = ("timestamp", *_OTHER_NAMES)
_OTHER_COLUMNS = operator.itemgetter(*_OTHER_NAMES)
RETURNED_COLUMNS: tuple[str, ...] = tuple(c.name for c in rollup_store.RETURNED)
_RETURNED_AT = RETURNED_COLUMNS.index("timestamp")
_MISSING: Any = object()

# SQLite's default SQLITE_MAX_VARIABLE_NUMBER is 32766 (since 3.32); 1,000 rows of 13 columns
# stay far below it.
_CHUNK = 1024


def _statement_rows(count: int) -> int:
    """How many rows the insert statement for a chunk of ``count`` has: a power of two from 16
    to :data:`_CHUNK`, the chunk padded with copies of its last row (a copy conflicts with that
    row and is skipped: ON CONFLICT DO NOTHING). Batches come in every size, and SQLite
    compiles a statement of a thousand rows in ~6 ms, five times what running it takes; with
    a handful of shapes every statement comes from the sqlite3 module's cache."""
    rows = 16
    while rows < count:
        rows *= 2
    return rows


class MeterBatch(Protocol):
    """Insert meter value rows, merge rollup rows; both on the batch's open transaction."""

    async def insert(self, connection: AsyncConnection, rows: list[dict[str, Any]]) -> Inserted:
        """Insert ``rows`` skipping duplicates."""
        ...

    async def merge(self, connection: AsyncConnection, rollups: list[RollupValues]) -> None:
        """Merge partial rollups (tuples in :data:`ROLLUP_COLUMNS` order)."""
        ...


@dataclass(slots=True)
class Inserted:
    """What an insert stored: rows shaped as ``RETURNED``, and the lowest id given (0: none)."""

    rows: list[Sequence[Any]]
    first_id: int


def meter_batch(dialect: str) -> MeterBatch:
    return SqliteMeterBatch() if dialect == "sqlite" else CoreMeterBatch(dialect)


class CoreMeterBatch:
    """SQLAlchemy Core statements: what every dialect understands."""

    def __init__(self, dialect: str) -> None:
        self._insert: Insert = meter_store.insert_statement(dialect).returning(
            *rollup_store.RETURNED, meter_values.c.id
        )
        self._upsert = rollup_store.upsert_statement(dialect)

    async def insert(self, connection: AsyncConnection, rows: list[dict[str, Any]]) -> Inserted:
        returned = (await connection.execute(self._insert, rows)).all()
        return Inserted([r[:-1] for r in returned], min((r[-1] for r in returned), default=0))

    async def merge(self, connection: AsyncConnection, rollups: list[RollupValues]) -> None:
        await connection.execute(
            self._upsert, [dict(zip(ROLLUP_COLUMNS, values, strict=True)) for values in rollups]
        )


@lru_cache(maxsize=64)
def _insert_sql(count: int) -> str:
    placeholders = "(" + ", ".join("?" * len(INSERT_COLUMNS)) + ")"
    return (
        f"INSERT INTO meter_values ({', '.join(INSERT_COLUMNS)}) "
        f"VALUES {', '.join([placeholders] * count)} "
        # No conflict target: the unique index is on expressions (store/meter_values.py).
        "ON CONFLICT DO NOTHING"
    )


# The rows an insert just made, newest first (see SqliteMeterBatch.insert_sync).
_NEWEST_SQL = f"SELECT {', '.join(RETURNED_COLUMNS)}, id FROM meter_values ORDER BY id DESC LIMIT ?"
_RETURNED_FROM_ROW = operator.itemgetter(*RETURNED_COLUMNS)


def _compiled_upsert() -> tuple[str, tuple[Any, ...]]:
    """The upsert's SQL for SQLite and the constants its placeholders take after the row's."""
    compiled = rollup_store.upsert_statement("sqlite").compile(
        dialect=sqlite.dialect(), column_keys=list(ROLLUP_COLUMNS)
    )
    names = compiled.positiontup or []
    # The row's columns come first, in table order, then literals of the SET clause (the 0.0
    # of coalesce(energy, 0.0)); fail loudly if a SQLAlchemy upgrade changes that.
    if tuple(names[: len(ROLLUP_COLUMNS)]) != ROLLUP_COLUMNS:
        raise RuntimeError(f"unexpected placeholder order in the rollup upsert: {names}")
    constants = tuple(compiled.params[name] for name in names[len(ROLLUP_COLUMNS) :])
    return str(compiled), constants


@lru_cache(maxsize=64)
def _upsert_sql(single: str, count: int) -> str:
    """The upsert for ``count`` rows in one VALUES list (each row a distinct key)."""
    values = "(" + ", ".join("?" * len(ROLLUP_COLUMNS)) + ")"
    if single.count(f"VALUES {values}") != 1:
        raise RuntimeError(f"unexpected shape of the rollup upsert: {single}")
    return single.replace(f"VALUES {values}", "VALUES " + ", ".join([values] * count))


async def _fetch_all(connection: AsyncConnection, sql: str, parameters: list[Any]) -> Any:
    """Run ``sql`` on the open transaction's aiosqlite connection and fetch every row, in one
    trip to aiosqlite's thread. SQLAlchemy's ``exec_driver_sql`` makes four (cursor, execute,
    fetch, close), each a handover of the GIL between the event loop and that thread, and builds
    a Row per returned tuple: the hot path's largest cost after SQLite itself."""
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None  # an open transaction's connection
    return await driver.execute_fetchall(sql, parameters)


def _chunks(rows: list[dict[str, Any]]) -> tuple[list[tuple[str, list[Any]]], dict[str, datetime]]:
    """The insert's statements with their parameters, and the datetime behind each timestamp
    text (a read-back of new rows hands back the text)."""
    texts: dict[datetime, str] = {}
    times: dict[str, datetime] = {}
    others = _OTHER_COLUMNS
    chunks = []
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        parameters: list[Any] = []
        for row in chunk:
            at: datetime = row["timestamp"]
            text = texts.get(at)
            if text is None:
                text = texts[at] = sqlite_text(at)
                times[text] = at.astimezone(UTC)
            parameters.append(text)
            parameters += others(row)
        rows_in_statement = _statement_rows(len(chunk))
        if rows_in_statement > len(chunk):
            width = len(parameters) // len(chunk)
            parameters += parameters[-width:] * (rows_in_statement - len(chunk))
        chunks.append((_insert_sql(rows_in_statement), parameters))
    return chunks, times


def _all_new(inserted: Inserted, chunk: list[dict[str, Any]], last_id: int) -> None:
    """Every row of ``chunk`` was new (no replay): they are what RETURNING would give, with
    consecutive ids ending at ``last_id``. No RETURNING: the sqlite3 module steps once per
    returned row and hands the GIL over and back each time, which under load (the event loop
    holding the GIL) costs far more than the insert."""
    first_id = last_id - len(chunk) + 1
    if not inserted.first_id or first_id < inserted.first_id:
        inserted.first_id = first_id
    at_index = _RETURNED_AT
    for row in chunk:
        values = list(_RETURNED_FROM_ROW(row))
        at = values[at_index]
        if at.tzinfo is not UTC:
            values[at_index] = at.astimezone(UTC)
        inserted.rows.append(values)


def _collect(inserted: Inserted, returned_rows: Any, times: dict[str, datetime]) -> None:
    at_index = _RETURNED_AT
    first_id = inserted.first_id
    for returned in returned_rows:
        values = list(returned)
        row_id = values.pop()
        if not first_id or row_id < first_id:
            first_id = row_id
        values[at_index] = times[values[at_index]]
        inserted.rows.append(values)
    inserted.first_id = first_id


class SqliteMeterBatch:
    """The same statements as :class:`CoreMeterBatch`, as plain SQL with plain tuples."""

    _TIMESTAMP = INSERT_COLUMNS.index("timestamp")
    # Datetime columns of a rollup row: bucket, first_at, last_at.
    _ROLLUP_TIMES = tuple(ROLLUP_COLUMNS.index(name) for name in ("bucket", "first_at", "last_at"))

    def __init__(self) -> None:
        self._upsert_sql, self._upsert_constants = _compiled_upsert()

    async def insert(self, connection: AsyncConnection, rows: list[dict[str, Any]]) -> Inserted:
        """Like :meth:`insert_sync` (no RETURNING, see there), on the transaction's aiosqlite
        connection: one trip to its thread per chunk."""
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None  # an open transaction's connection
        chunks, times = _chunks(rows)
        inserted = Inserted([], 0)
        for start, (sql, parameters) in zip(range(0, len(rows), _CHUNK), chunks, strict=True):
            chunk = rows[start : start + _CHUNK]
            before = driver.total_changes
            last = await driver.execute_insert(sql, parameters)
            made = driver.total_changes - before
            if made == len(chunk) and last is not None:
                _all_new(inserted, chunk, last[0])
            elif made:
                newest = await driver.execute_fetchall(_NEWEST_SQL, (made,))
                _collect(inserted, reversed(list(newest)), times)
        return inserted

    def insert_sync(
        self, connection: sqlite3.Connection, rows: list[dict[str, Any]], *, above: int
    ) -> Inserted:
        """The same insert on a plain sqlite3 connection (the writer thread's, inside its
        transaction: store/sqlite_writer.py). Raises :class:`Abandon` if an id given is not
        above ``above`` (SQLite reused the id of a deleted top row: the caller must merge
        such rows at once, on its other path)."""
        chunks, times = _chunks(rows)
        inserted = Inserted([], 0)
        for start, (sql, parameters) in zip(range(0, len(rows), _CHUNK), chunks, strict=True):
            chunk = rows[start : start + _CHUNK]
            cursor = connection.execute(sql, parameters)
            made = cursor.rowcount
            if made == len(chunk) and cursor.lastrowid is not None:
                _all_new(inserted, chunk, cursor.lastrowid)
            elif made:
                # Some were replays: the new ones are the ``made`` highest ids (SQLite gives a
                # new row the highest id + 1, and this transaction is the only writer).
                newest = connection.execute(_NEWEST_SQL, (made,)).fetchall()
                _collect(inserted, reversed(newest), times)
        if inserted.rows and inserted.first_id <= above:
            raise Abandon
        return inserted

    async def merge(self, connection: AsyncConnection, rollups: list[RollupValues]) -> None:
        for sql, parameters in self.merge_statements(rollups):
            await _fetch_all(connection, sql, parameters)

    def merge_sync(self, connection: sqlite3.Connection, rollups: list[RollupValues]) -> None:
        """The same merge on a plain sqlite3 connection (the writer thread's)."""
        for sql, parameters in self.merge_statements(rollups):
            connection.execute(sql, parameters)

    def merge_statements(self, rollups: list[RollupValues]) -> list[tuple[str, list[Any]]]:
        """The merge's statements with their parameters."""
        texts: dict[datetime | None, str | None] = {None: None}

        def text(at: datetime | None) -> str | None:
            value: str | None = texts.get(at, _MISSING)
            if value is _MISSING:
                assert at is not None
                value = texts[at] = sqlite_text(at)
            return value

        # Positions as in ROLLUP_COLUMNS (checked at import): the datetimes become text.
        rows = [
            (
                cp,
                m,
                res,
                text(bucket),
                c,
                ph,
                loc,
                u,
                n,
                s,
                lo,
                hi,
                text(fa),
                fv,
                text(la),
                lv,
                e,
            )
            for (cp, m, res, bucket, c, ph, loc, u, n, s, lo, hi, fa, fv, la, lv, e) in rollups
        ]
        # One multi-row statement per chunk, not an executemany: the sqlite3 module steps once
        # per parameter set and hands the GIL over and back each time, and under load each
        # handover waits for the busy event loop (a merge of a few thousand rows took 1-2 s
        # and stalled every charge point meanwhile).
        statements = []
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            parameters = [value for row in chunk for value in row]
            parameters += self._upsert_constants
            statements.append((_upsert_sql(self._upsert_sql, len(chunk)), parameters))
        return statements
