"""Hourly and daily rollups, maintained in the same transaction as the raw insert.

Why in the same transaction: a rollup is then exactly as durable as the values it counts. A
SIGKILL either loses both (the batch was not committed, nothing was acknowledged, the charge point
retries) or keeps both. Replays are skipped by the raw insert's ``ON CONFLICT DO NOTHING``, and
only the rows its ``RETURNING`` hands back are counted, so a replay never counts twice.

Per bucket (hour or UTC day) and series (charge point, connector, measurand, phase, location):
count, sum (avg = sum/count), min, max, first and last by the total order (timestamp, value), and
for registers (``*.Register``) the energy credited to the bucket. Every reading of a register is
credited the reset-aware step from the series' previous reading (CONFORMANCE M8: a reading below
the previous one means a reset, and the step is the reading itself), so the credits of all buckets
add up to :func:`chargegrid.metering.energy.register_energy` of the whole series.

A reading arriving in order (the normal case) only needs the series' latest reading, kept in
memory. One arriving out of order (an offline queue replayed late) changes its successor's step
too; then the readings around it are read back inside the transaction and the difference of the
credits before and after is merged, so out-of-order arrivals give exactly the result of a
recompute from raw (``recompute``; checked property-based in tests/metering/test_rollups.py).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chargegrid.store import meter_values as meter_store
from chargegrid.store import rollups as rollup_store
from chargegrid.store.database import writing
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.meter_batch import (
    RETURNED_COLUMNS,
    ROLLUP_COLUMNS,
    Inserted,
    MeterBatch,
    RollupValues,
    SqliteMeterBatch,
    meter_batch,
)
from chargegrid.store.rollups import DAY, HOUR, Reading, SeriesKey
from chargegrid.store.sqlite_writer import Abandon, SqliteWriter
from chargegrid.store.tables import meter_rollups
from chargegrid.store.value_keys import KeyFill, KeyQueue, fill_step, fill_step_on, key_values

log = logging.getLogger(__name__)

_CHARGE_POINT = RETURNED_COLUMNS.index("charge_point_id")  # in an inserted row

# (charge point id, measurand, resolution, bucket, connector id, phase or "", location): the
# primary key of meter_rollups, in its order.
RollupKey = tuple[int, str, str, datetime, int, str, str]
_MISSING: Any = object()


async def _nothing(_connection: AsyncConnection) -> None:
    return None


def is_register(measurand: str) -> bool:
    """Energy.Active.Import.Register and its siblings: cumulative counters (OCPP 1.6 §7.31)."""
    return measurand.endswith(".Register")


def step(previous: float, reading: float) -> float:
    """The energy between two consecutive register readings; a drop is a reset (M8)."""
    return reading - previous if reading >= previous else max(reading, 0.0)


def hour_and_day(at: datetime) -> tuple[datetime, datetime]:
    hour = at.replace(minute=0, second=0, microsecond=0)
    return hour, hour.replace(hour=0)


class Aggregate:
    """A partial or complete rollup of one bucket of one series."""

    __slots__ = (
        "count",
        "energy",
        "first_at",
        "first_value",
        "last_at",
        "last_value",
        "max",
        "min",
        "sum",
        "unit",
    )

    def __init__(self, unit: str, register: bool) -> None:
        self.unit = unit
        self.count = 0
        self.sum = 0.0
        self.min: float | None = None
        self.max: float | None = None
        self.first_at: datetime | None = None
        self.first_value: float | None = None
        self.last_at: datetime | None = None
        self.last_value: float | None = None
        self.energy: float | None = 0.0 if register else None

    def add(self, at: datetime, value: float) -> None:
        # The hot path (every stored value, twice): plain comparisons, no tuples built.
        self.count += 1
        self.sum += value
        low = self.min
        if low is None or value < low:
            self.min = value
        high = self.max
        if high is None or value > high:
            self.max = value
        first = self.first_at
        if first is None or at < first or (at == first and value < (self.first_value or 0.0)):
            self.first_at, self.first_value = at, value
        last = self.last_at
        if last is None or at > last or (at == last and value > (self.last_value or 0.0)):
            self.last_at, self.last_value = at, value

    def absorb(self, other: Aggregate) -> None:
        """Fold another partial of the same key into this one: the upsert's merge, in memory."""
        self.unit = other.unit
        self.count += other.count
        self.sum += other.sum
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        if other.first_at is not None and (
            self.first_at is None
            or (other.first_at, other.first_value or 0.0) < (self.first_at, self.first_value or 0.0)
        ):
            self.first_at, self.first_value = other.first_at, other.first_value
        if other.last_at is not None and (
            self.last_at is None
            or (other.last_at, other.last_value or 0.0) > (self.last_at, self.last_value or 0.0)
        ):
            self.last_at, self.last_value = other.last_at, other.last_value
        if other.energy is not None:
            self.energy = (self.energy or 0.0) + other.energy

    def values(self, key: RollupKey) -> RollupValues:
        """The rollup row of ``key``, in :data:`~chargegrid.store.meter_batch.ROLLUP_COLUMNS`
        order (the table's): the key, then the aggregate."""
        return (
            *key,
            self.unit,
            self.count,
            self.sum,
            self.min,
            self.max,
            self.first_at,
            self.first_value,
            self.last_at,
            self.last_value,
            self.energy,
        )

    def row(self, key: RollupKey) -> dict[str, Any]:
        return dict(zip(ROLLUP_COLUMNS, self.values(key), strict=True))


class Rollups:
    """Partial aggregates of one batch (or of a whole recompute), by rollup key.

    Values are counted into their hour only (this is per value, the hot path); each day is
    folded from its hours when the rows are taken (:meth:`complete`): the same aggregate, since
    every field merges associatively, at one fold per hour instead of one add per value.
    """

    def __init__(self) -> None:
        self.by_key: dict[RollupKey, Aggregate] = {}  # hourly keys only
        # Register readings by series, and each series' unit.
        self.registers: dict[SeriesKey, list[Reading]] = {}
        self.units: dict[SeriesKey, str] = {}
        # A batch's values share few timestamps: each one's hour is computed once.
        self._hours: dict[datetime, datetime] = {}

    def add(self, row: Sequence[Any]) -> None:
        """Add a row shaped like :data:`chargegrid.store.rollups.RETURNED`."""
        charge_point_id, connector_id, _tx, at, measurand, phase, location, unit, value = row
        if value is None:  # SignedData or unparsable: stored, but nothing to aggregate
            return
        value = float(value)
        phase = phase or ""
        register = is_register(measurand)
        hour = self._hours.get(at)
        if hour is None:
            if len(self._hours) >= 4096:  # a long-lived partial (deferred merging) sees many
                self._hours.clear()
            hour = self._hours[at] = at.replace(minute=0, second=0, microsecond=0)
        key = (charge_point_id, measurand, HOUR, hour, connector_id, phase, location)
        aggregate = self.by_key.get(key)
        if aggregate is None:
            aggregate = self.by_key[key] = Aggregate(unit, register)
        aggregate.add(at, value)
        if register:
            series = (charge_point_id, connector_id, measurand, phase, location)
            readings = self.registers.get(series)
            if readings is None:
                self.registers[series] = [(at, value)]
                self.units[series] = unit
            else:
                readings.append((at, value))

    def credit(self, series: SeriesKey, at: datetime, energy: float) -> None:
        """Credit ``energy`` to the hour and day of ``at``."""
        if energy == 0.0:
            return
        charge_point_id, connector_id, measurand, phase, location = series
        hour = at.replace(minute=0, second=0, microsecond=0)
        key = (charge_point_id, measurand, HOUR, hour, connector_id, phase, location)
        aggregate = self.by_key.get(key)
        if aggregate is None:
            # A correction to a bucket this batch has no values for (a successor's step).
            aggregate = self.by_key[key] = Aggregate(self.units[series], True)
        aggregate.energy = (aggregate.energy or 0.0) + energy

    def credit_chain(self, series: SeriesKey, chain: Iterable[Reading], sign: float = 1.0) -> None:
        """Credit every reading of ``chain`` but the first its step from the one before."""
        previous: Reading | None = None
        for reading in chain:
            if previous is not None:
                self.credit(series, reading[0], sign * step(previous[1], reading[1]))
            previous = reading

    def complete(self) -> dict[RollupKey, Aggregate]:
        """Every partial aggregate: the hours counted, and each day folded from its hours."""
        days: dict[RollupKey, Aggregate] = {}
        for key, hour in self.by_key.items():
            cp, measurand, _hour, bucket, connector, phase, location = key
            day_key = (cp, measurand, DAY, bucket.replace(hour=0), connector, phase, location)
            day = days.get(day_key)
            if day is None:
                day = days[day_key] = Aggregate(hour.unit, False)
                day.energy = None  # a register's hours bring theirs
            unit = day.unit  # as when counted directly: the unit of the day's first value
            day.absorb(hour)
            day.unit = unit
        return {**self.by_key, **days}

    def rows(self) -> list[dict[str, Any]]:
        return [aggregate.row(key) for key, aggregate in self.complete().items()]

    def values(self) -> list[RollupValues]:
        return [aggregate.values(key) for key, aggregate in self.complete().items()]


def recompute(rows: Iterable[Sequence[Any]]) -> dict[RollupKey, Aggregate]:
    """The brute-force answer: rollups of ``rows`` (shaped as ``RETURNED``) from scratch."""
    rollups = Rollups()
    for row in rows:
        rollups.add(row)
    for series, readings in rollups.registers.items():
        rollups.credit_chain(series, sorted(readings))
    return rollups.complete()


@dataclass(slots=True)
class RollupStats:
    rows: int = 0  # raw rows inserted (duplicates excluded)
    duplicates: int = 0  # rows skipped by ON CONFLICT DO NOTHING
    rollup_rows: int = 0  # partial aggregates merged
    lookups: int = 0  # out-of-order or cold series read back from the database
    recounts: int = 0  # merges that counted from the database after a failure (see _recount)


# Rollup rows per slice of a merge round (RollupMaintainer.write_alone): ~4 ms of the writer
# thread each for 500 charge points' hourly and daily rows; at most this many slices.
MERGE_SLICE_ROWS = 500
MAX_MERGE_SLICES = 32


@dataclass(frozen=True, slots=True)
class _Round:
    """A deferred merge under way: the rollups of the values up to ``up_to``, by slice of
    charge points (id modulo the number of parts), ``done`` of them merged."""

    up_to: int
    parts: list[list[RollupValues]]
    done: int = 0

    @classmethod
    def of(cls, values: list[RollupValues]) -> _Round:
        """A round for ``values`` (``up_to`` is set when it starts, in its transaction)."""
        slices = min(MAX_MERGE_SLICES, max(1, -(-len(values) // MERGE_SLICE_ROWS)))
        parts: list[list[RollupValues]] = [[] for _ in range(slices)]
        for value in values:
            parts[value[0] % slices].append(value)
        return cls(0, parts, _next_part(parts, 0))

    def after(self) -> int:
        """What ``done`` is once the next part is merged: past the empty parts after it too
        (no value of theirs waits), so that every batch of the round merges something."""
        return _next_part(self.parts, self.done + 1)


def _next_part(parts: list[list[RollupValues]], start: int) -> int:
    """The first non-empty part from ``start`` on; ``len(parts)`` if none."""
    for index in range(start, len(parts)):
        if parts[index]:
            return index
    return len(parts)


class RollupMaintainer:
    """The group-commit writer's sink for meter values: insert, then merge rollups.

    Implements :class:`chargegrid.store.group_commit.RowSink`. ``observers`` are called with the
    rows of each committed batch (after the commit, so only with what is durable): live
    statistics and alerts hang there.
    """

    def __init__(
        self,
        dialect: str,
        *,
        cache_limit: int = 200_000,
        merge_interval: float = 0.0,
        merge_limit: int = 50_000,
    ) -> None:
        # The statement rows are submitted under (the writer's key for this sink); the rows
        # themselves go through ``_batch``.
        self.insert: Insert = meter_store.insert_statement(dialect)
        self._batch: MeterBatch = meter_batch(dialect)
        # Deferred merging (module docstring): SQLite only, where this process is the only
        # writer, so "every id up to the watermark is counted" describes the whole database.
        self._sqlite = dialect == "sqlite"
        self.deferred = self._sqlite and merge_interval > 0
        self._inserted = False  # the open batch stored values
        self._merge_interval = merge_interval
        self._merge_limit = merge_limit
        # Values stored above the watermark and not merged into meter_rollups yet, the open
        # batch's included: counted here as they are inserted (no per-batch partial to fold
        # in: this is the hot path). A batch that fails, or a unit whose savepoint rolls back,
        # leaves counts of values that were never stored: then ``_recount`` says these are
        # wrong, and the next merge counts what is above the watermark from the database
        # instead (as recover() does after a crash).
        self._uncounted = Rollups()
        self._counted = 0  # values counted into _uncounted, ever
        self._batch_counted = 0  # ... at the start of the open batch
        self._recount = False
        self._merging = False  # the open batch merges (and advances the watermark)
        self._merged_at = time.monotonic()
        self._merge_wanted = False
        # The committed watermark (None: not read yet) and the one the open batch sets.
        self._watermark: int | None = None
        self._next_watermark: int | None = None
        # A merge round under way in the writer thread (write_alone), and the watermark a round
        # ended by the open batch (the usual way) leaves.
        self._round: _Round | None = None
        self._round_closing: int | None = None
        # SQLite's keys (store/value_keys.py): the committed state of their fill (None: not
        # read yet) and the one the open batch leaves, adopted when it commits.
        self._keys: KeyFill | None = None
        self._next_keys: KeyFill | None = None
        # The ids the writer thread stored, for the key fill's slices (store/value_keys.py).
        self.key_queue = KeyQueue()
        # The latest register reading of each series as of the open transaction (None: the
        # series has none), by charge point. Only a cache: what is missing is read back.
        self._latest: dict[int, dict[SeriesKey, Reading | None]] = {}
        self._cached = 0
        self._cache_limit = cache_limit
        self._connections: dict[int, object] = {}
        self._pending: list[Sequence[Any]] = []
        self._writer: SqliteWriter | None = None  # use_writer()
        self._engine: AsyncEngine | None = None
        self._sqlite_batch = SqliteMeterBatch()
        self.observers: list[Callable[[list[Sequence[Any]]], None]] = []
        self.stats = RollupStats()

    # -- RowSink --------------------------------------------------------------------------

    async def write(self, connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``; merge their rollups now, or if merging is deferred count them in
        memory for the next merge (a unit's separately: its savepoint may roll back)."""
        result = await self._batch.insert(connection, rows)
        inserted = result.rows
        self.stats.rows += len(inserted)
        self.stats.duplicates += len(rows) - len(inserted)
        if not inserted:
            return
        self._inserted = True
        if self.deferred:
            if self._watermark is None:
                self._watermark = await rollup_store.watermark(connection)
            # SQLite reuses the ids of deleted top rows (a removed charge point's values): such
            # a row is below the watermark, which promises it is counted, so it is merged now
            # (a round under way ends in this transaction too: finish()).
            if result.first_id > self._counted_to():
                await self._count(connection, inserted, self._uncounted)
                self._counted += len(inserted)
            else:
                await self.merge(connection, inserted)
        else:
            await self.merge(connection, inserted)
        if self._sqlite:
            # ... and keyed now if the keys are (or the running fill round will be) complete
            # past it (store/value_keys.py).
            keys = await self._key_fill(connection)
            if result.first_id <= keys.covered:
                await key_values(connection, above=result.first_id - 1, up_to=keys.covered)
        if self.observers:
            self._pending.extend(inserted)

    async def finish(self, connection: AsyncConnection, *, final: bool) -> None:
        """End of the batch's transaction: merge what is deferred when it is due (an interval
        has passed, a reader asked, the writer stops, or memory is getting full)."""
        inserted, self._inserted = self._inserted, False
        if not self.deferred:
            if self._sqlite and inserted:
                # Merged already; keep the watermark true for a later start with merging
                # deferred, and for rebuilds. Every value is keyed with it.
                watermark = await rollup_store.advance_watermark(connection)
                self._next_keys = KeyFill(watermark)
            return
        if self._sliced:
            # Batches that take this way (units, merges) run the fill's slices too: a load of
            # mostly units must not leave the keys ever further behind.
            keys = await self._key_fill(connection)
            self._next_keys = await fill_step_on(
                connection, keys, time.monotonic(), self._merge_interval
            )
        round_ = self._round
        if round_ is not None and not self._recount:
            # A merge round under way ends here, all its slices left at once.
            for part in round_.parts[round_.done :]:
                await self._merge_existing(connection, part)
            self._round_closing = round_.up_to
        if not self._merge_due(final):
            if self._round_closing is not None:  # (a merge below would end it too)
                await rollup_store.close_round(connection, self._round_closing)
            return
        if self._recount:
            if self._watermark is None:
                self._watermark = await rollup_store.watermark(connection)
            self._clear()  # the cache may hold readings that were never stored
            # By what the database says is counted: a round's merged slices included.
            counted = await rollup_store.counted(connection)
            rows = await rollup_store.uncounted(connection, counted)
            self.stats.recounts += 1
            values = (await self._count(connection, rows)).values()
        else:
            values = self._uncounted.values()
        await self._merge_existing(connection, list(values))
        self._next_watermark = await rollup_store.advance_watermark(
            connection, keys=not self._sliced
        )
        if not self._sliced:
            self._next_keys = KeyFill(self._next_watermark)
        self._merging = True

    async def _merge_existing(
        self, connection: AsyncConnection, values: list[RollupValues]
    ) -> None:
        """Merge ``values`` but those of charge points removed since (their values and rollups
        deleted with them, possibly by the CLI in another process): they must not fail every
        later merge on the foreign key."""
        if values:
            existing = await rollup_store.existing_charge_points(connection, {v[0] for v in values})
            values = [v for v in values if v[0] in existing]
        if values:
            await self._batch.merge(connection, values)
            self.stats.rollup_rows += len(values)

    def _counted_to(self) -> int:
        """Ids up to here are counted, or will be when the round under way ends."""
        assert self._watermark is not None
        return self._watermark if self._round is None else max(self._watermark, self._round.up_to)

    @property
    def _sliced(self) -> bool:
        """The keys are filled a slice per commit (store/value_keys.fill_step), not all at
        once when the watermark advances: with merging deferred and the writer thread's
        connection, whose page cache keeps the keys' pages between commits."""
        return self.deferred and self._writer is not None

    async def _key_fill(self, connection: AsyncConnection) -> KeyFill:
        """The open batch's state of the key fill, read from the database the first time."""
        keys = self._next_keys or self._keys
        if keys is None:
            keys = self._keys = KeyFill(await rollup_store.key_watermark(connection))
        return keys

    def _merge_due(self, final: bool) -> bool:
        """An interval has passed, a reader asked, the writer stops, memory is getting full,
        or the counts in memory are wrong (``_recount``)."""
        return (
            final
            or self._recount
            or self._merge_wanted
            or time.monotonic() - self._merged_at >= self._merge_interval
            or len(self._uncounted.by_key) >= self._merge_limit
        )

    def use_writer(self, writer: SqliteWriter, engine: AsyncEngine) -> None:
        """Commit batches of nothing but meter values through ``writer`` in one trip
        (store/sqlite_writer.py) when merging is deferred and no merge is due; ``engine``
        reads back the neighbours of out-of-order readings."""
        self._writer = writer
        self._engine = engine

    async def write_alone(
        self, rows: list[dict[str, Any]], then: Callable[[sqlite3.Connection], None] | None
    ) -> bool:
        """RowSink: insert ``rows``, run ``then`` and commit, counting the rows after the
        commit; in the same transaction a slice of the deferred merge if one is due or under
        way, or else the key fill's slice.

        Counting after the commit is the same as counting inside it: with merging deferred the
        counts are only memory until the next merge (a crash recounts from the watermark), and
        this writer is the only one of meter values, so the committed state a read-back sees
        is the one the transaction had.

        A merge round takes what was counted before the batch that starts it (values up to
        just below its first id) and merges it a slice of charge points per batch (id modulo
        the slices, ~:data:`MERGE_SLICE_ROWS` rollup rows each), recording its progress with
        the watermark (store/rollups.Counted): in one commit the merge of a second's rollups
        paused every charge point for 23-57 ms at 5,000 messages/s (docs/benchmarks.md).

        Everything runs in the writer thread on its connection: one trip, and the pages of
        the rollups and keys stay in that connection's cache between commits.
        """
        writer = self._writer
        watermark = self._watermark
        keys = self._keys
        if (
            writer is None
            or not self.deferred
            or watermark is None  # read by the first batch, on the usual way
            or keys is None  # the same
            or self._recount  # the merge counts from the database: the usual way
        ):
            return False
        batch = self._sqlite_batch
        now = time.monotonic()
        interval = self._merge_interval
        round_ = self._round
        starting = round_ is None and self._merge_due(False)
        if starting:
            round_ = _Round.of(list(self._uncounted.values()))
        above = max(self._counted_to(), keys.covered)
        queue = self.key_queue

        def work(connection: sqlite3.Connection) -> tuple[Inserted, int, int, KeyFill]:
            up_to = rollup_store.newest_id_sync(connection) if starting else 0
            result = batch.insert_sync(connection, rows, above=above)
            if result.rows:
                queue.add(result.first_id, [row[_CHARGE_POINT] for row in result.rows])
            merged = 0
            if round_ is not None:
                up_to = up_to if starting else round_.up_to
                part = round_.parts[round_.done] if round_.done < len(round_.parts) else []
                if part:
                    ids = {value[0] for value in part}
                    existing = rollup_store.existing_charge_points_sync(connection, ids)
                    if existing != ids:  # removed since (see _merge_existing)
                        part = [v for v in part if v[0] in existing]
                    batch.merge_sync(connection, part)
                    merged = len(part)
                if round_.after() == len(round_.parts):
                    rollup_store.set_watermark_sync(connection, up_to)
                else:
                    rollup_store.set_round_sync(
                        connection, up_to, len(round_.parts), round_.after()
                    )
            if then is not None:
                then(connection)

            def execute(sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                return connection.execute(sql, parameters).fetchall()

            # Not both in one commit: each is a pause of its own (docs/benchmarks.md).
            filled = keys if round_ is not None else fill_step(execute, keys, now, interval, queue)
            return result, up_to, merged, filled

        try:
            result, up_to, merged, self._keys = await writer.transaction(work)
        except Abandon:
            # An id not above the watermarks: merged and keyed at once, on the usual way.
            return False
        if starting:
            self._uncounted = Rollups()
            self._merged_at = time.monotonic()
            self._merge_wanted = False  # a reader's wish: the round has all acknowledged
        if round_ is not None:
            self.stats.rollup_rows += merged
            done = round_.after()
            if done == len(round_.parts):
                self._round = None
                self._watermark = up_to
            else:
                self._round = _Round(up_to, round_.parts, done)
        inserted = result.rows
        self.stats.rows += len(inserted)
        self.stats.duplicates += len(rows) - len(inserted)
        if inserted:
            await self._count(None, inserted, self._uncounted)
            self._counted += len(inserted)
            if self.observers:
                self._pending.extend(inserted)
        return True

    @property
    def uncounted(self) -> int:
        """Rollup rows waiting for a deferred merge (the next, or the round under way)."""
        waiting = len(self._uncounted.by_key)
        if self._round is not None:
            waiting += sum(len(part) for part in self._round.parts[self._round.done :])
        return waiting

    async def settle(self, writer: GroupCommitter) -> None:
        """Return once every value committed so far is merged into meter_rollups: a reader
        sees what was acknowledged. At most one extra (empty) batch."""
        if self.deferred and self.uncounted:
            self._merge_wanted = True
            await writer.run(_nothing)

    def connection_seen(self, charge_point_id: int, connection: object) -> None:
        """Called per MeterValues with the charge point's connection (its handler context).

        With several nodes a charge point that reconnects elsewhere has its values written by
        another node; when it comes back here, this node's cache of its registers may be stale.
        A new connection object means exactly that chance, so its cache is dropped.
        """
        if self._connections.get(charge_point_id) is not connection:
            self._connections[charge_point_id] = connection
            self._cached -= len(self._latest.pop(charge_point_id, ()))

    def mark(self) -> tuple[int, int]:
        return len(self._pending), self._counted

    def rolled_back(self, mark: tuple[int, int]) -> None:
        """A unit's savepoint was rolled back: forget what it wrote."""
        pending, counted = mark
        del self._pending[pending:]
        if self._counted != counted:
            self._recount = True  # counts of values that are not stored
        self._clear()  # safe: the cache refills from the database

    def committed(self) -> None:
        if self._next_keys is not None:
            self._keys, self._next_keys = self._next_keys, None
        if self._round_closing is not None:
            self._round = None
            if not self._merging:
                self._watermark = self._round_closing
            self._round_closing = None
        if self._merging:
            self._watermark = self._next_watermark
            self._uncounted = Rollups()
            self._merged_at = time.monotonic()
            self._merge_wanted = False
            self._merging = False
            self._recount = False
            self._round = None  # ended by the merge (or, recounting, taken in by it)
        self._batch_counted = self._counted
        pending, self._pending = self._pending, []
        for observer in self.observers:
            try:
                observer(pending)
            except Exception:  # an observer's bug must never fail ingest
                log.exception("meter value observer failed")

    def failed(self) -> None:
        self._next_keys = None  # its slice is not stored: it runs again
        self._round_closing = None  # nor the end of a round
        self._pending = []
        self._inserted = False
        if self._counted != self._batch_counted:
            self._recount = True  # nothing of this batch is stored, but it was counted
            self._batch_counted = self._counted
        self._merging = False  # nor its merge: the uncounted values are still to merge
        self._clear()

    def _clear(self) -> None:
        self._latest.clear()
        self._cached = 0

    # -- rollups --------------------------------------------------------------------------

    async def merge(self, connection: AsyncConnection, inserted: Sequence[Sequence[Any]]) -> None:
        """Merge the rollups of freshly ``inserted`` rows (in the open transaction)."""
        values = (await self._count(connection, inserted)).values()
        if values:
            await self._batch.merge(connection, values)
            self.stats.rollup_rows += len(values)

    async def _count(
        self,
        connection: AsyncConnection | None,
        inserted: Sequence[Sequence[Any]],
        rollups: Rollups | None = None,
    ) -> Rollups:
        """The partial rollups of freshly ``inserted`` rows, energy credits included, added to
        ``rollups`` (a new one by default). Without ``connection``, read-backs take one of
        the engine's."""
        if rollups is None:
            rollups = Rollups()
        add = rollups.add
        for row in inserted:
            add(row)
        reader = connection
        async with contextlib.AsyncExitStack() as stack:

            async def read() -> AsyncConnection:
                # One of the engine's connections for all read-backs of this count, taken only
                # if one is needed (after a reconnect every series of the charge point is).
                nonlocal reader
                if reader is None:
                    assert self._engine is not None  # use_writer()
                    reader = await stack.enter_async_context(self._engine.connect())
                return reader

            fresh: dict[SeriesKey, list[Reading]] | None = None
            loaded = False

            async def window(
                series: SeriesKey, first: datetime, last: datetime
            ) -> tuple[list[Reading], bool]:
                # SQLite: the values above the watermark of every charge point counted here are
                # read once (one rowid range), not once per series read back: after a fleet
                # reconnects, every series of every charge point is.
                nonlocal fresh, loaded
                connection = await read()
                if not loaded:
                    charge_points = {key[0] for key in rollups.registers}
                    fresh = await rollup_store.fresh_readings(connection, charge_points)
                    loaded = True
                return await rollup_store.register_window(
                    connection,
                    series,
                    first,
                    last,
                    fresh=None if fresh is None else fresh.get(series, []),
                )

            for series, readings in rollups.registers.items():
                await self._credit_energy(window, rollups, series, readings)
        rollups.registers.clear()  # only needed for the credits
        return rollups

    async def recover(self, engine: AsyncEngine) -> int:
        """After a crash: count the values stored since the last deferred merge (their
        rollups were only in memory). Returns how many; run before the writer starts."""
        if not self._sqlite:
            return 0
        async with writing(engine).begin() as connection:
            # A round under way at the crash: its merged slices are counted already.
            counted = await rollup_store.counted(connection)
            rows = await rollup_store.uncounted(connection, counted)
            if rows:
                await self.merge(connection, rows)
            watermark = await rollup_store.advance_watermark(connection)
        self._watermark = watermark
        self._round = None
        self._keys = KeyFill(watermark)  # every value keyed too
        self._next_keys = None
        self._clear()  # the cache filled inside that transaction; let it refill lazily
        return len(rows)

    async def _credit_energy(
        self,
        window: Callable[[SeriesKey, datetime, datetime], Awaitable[tuple[list[Reading], bool]]],
        rollups: Rollups,
        series: SeriesKey,
        readings: list[Reading],
    ) -> None:
        readings.sort()
        cache = self._latest.get(series[0])
        if cache is None:
            cache = self._latest[series[0]] = {}
        latest = cache.get(series, _MISSING)
        if latest is not _MISSING and (latest is None or readings[0] > latest):
            # In order: each reading's step is from the one before it.
            rollups.credit_chain(series, [latest, *readings] if latest else readings)
            cache[series] = readings[-1]
            return
        # Out of order, or a series not seen since start: the readings are already inserted
        # (same transaction), so read the neighbourhood back and merge the change in credits.
        self.stats.lookups += 1
        chain, has_successor = await window(series, readings[0][0], readings[-1][0])
        before = list(chain)
        for reading in readings:
            before.remove(reading)
        rollups.credit_chain(series, chain)
        rollups.credit_chain(series, before, -1.0)
        if not has_successor:
            if self._cached >= self._cache_limit:
                self._clear()
                cache = self._latest[series[0]] = {}
            if series not in cache:
                self._cached += 1
            cache[series] = chain[-1]


async def rebuild(
    engine: AsyncEngine,
    since: datetime,
    until: datetime,
    *,
    progress: Callable[[datetime, int], None] | None = None,
) -> int:
    """Recompute rollups from raw values for whole UTC days covering ``[since, until)``.

    One transaction per day, so a long rebuild never holds the write lock for long. Returns the
    raw rows read. The step into the first reading after ``until`` is left as it was.
    """
    day = hour_and_day(since)[1]
    total = 0
    while day < until:
        end = day + timedelta(days=1)
        async with writing(engine).begin() as connection:
            await rollup_store.lock_for_rebuild(connection)
            # SQLite: values above the watermark are counted in a running server's memory
            # (deferred merging) and merged later; counting them here too would count twice.
            counted = (
                await rollup_store.counted(connection)
                if connection.dialect.name == "sqlite"
                else None
            )
            await rollup_store.delete_range(connection, day, end)
            count = await _rebuild_range(connection, day, end, counted)
        total += count
        if progress is not None:
            progress(day, count)
        day = end
    return total


async def _rebuild_range(
    connection: AsyncConnection,
    since: datetime,
    until: datetime,
    counted: rollup_store.Counted | None,
) -> int:
    count = 0
    rollups = Rollups()
    current: SeriesKey | None = None
    previous: Reading | None = None

    async def flush() -> None:
        nonlocal rollups
        rows = rollups.rows()
        if rows:
            await connection.execute(meter_rollups.insert(), rows)
        rollups = Rollups()

    async for row in rollup_store.raw_rows(connection, since, until, counted=counted):
        count += 1
        charge_point_id, connector_id, _tx, at, measurand, phase, location, _unit, value = row
        series = (charge_point_id, connector_id, measurand, phase or "", location)
        if series != current:
            if len(rollups.by_key) > 5000:
                await flush()
            current = series
            previous = (
                await rollup_store.previous_reading(connection, series, since, counted=counted)
                if is_register(measurand)
                else None
            )
        rollups.add(row)
        if is_register(measurand):
            reading = (at, float(value))
            if previous is not None:
                rollups.credit(series, at, step(previous[1], reading[1]))
            previous = reading
    await flush()
    return count
