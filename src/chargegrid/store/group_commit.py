"""Group commit: many writers, one database transaction every few milliseconds.

DESIGN.md guarantee 1: a CALLRESULT for StartTransaction, StopTransaction or MeterValues is sent
only after what it acknowledges is committed. Committing each message on its own would cap
throughput at the database's commit rate, so every connection hands its work to this writer and
awaits the batch it landed in: rows to insert go into one ``executemany`` per statement, units of
work (a function run on the open connection) run one after another, each inside a SAVEPOINT so that
one unit's failure fails only its own caller. If the commit itself fails, every caller in the batch
gets :class:`StoreUnavailable` and the charge point is answered with a CALLERROR, so it keeps the
message and retries: nothing acknowledged is lost.

A caller waits at most ``wait_timeout`` for its batch, counted from the batch's first write, or
from its own when it joins a batch whose earlier callers were answered already (and as long
again for room in a full queue). A database that stops answering without closing anything
holds the one writer for as long as the driver's own timeouts allow, per statement and then again
for the rollback; every message queued behind it would wait that long too. Past the bound the
callers get :class:`StoreUnavailable` (a CALLERROR) while their writes stay queued: if they commit
later, the charge point's resend is recognised as one (the same as a commit whose answer was
lost), so the early answer loses nothing.

Each caller awaits a future of its own, which the writer resolves: a caller that goes away (its
connection closed) cancels only its own wait, never its batch. One timer per batch enforces the
bound; this is the hot path, so nothing here is per caller beyond that one future, or, for the
busiest caller (MeterValues, :meth:`GroupCommitter.insert_nowait`), one callback instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import Insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chargegrid.store.database import writing

log = logging.getLogger(__name__)

T = TypeVar("T")
Unit = Callable[[AsyncConnection], Awaitable[T]]
Statement = tuple[str, tuple[Any, ...]]  # plain SQL with qmark parameters, and them
Rows = list[tuple[Any, ...]]  # what a caller's last statement returned
# Told how a batch ended: None once committed, else the StoreUnavailable its callers get.
Done = Callable[[Exception | None], None]
# Given a unit's result when its batch committed after the caller was answered (run(late=)).
Late = Callable[[Any], Awaitable[None]]


class RowSink(Protocol):
    """Writes one statement's rows itself, inside the batch's transaction (issue 4: the meter
    value insert also merges rollups, so they are exactly as durable as the values), and hears
    how the batch ended."""

    async def write(self, connection: AsyncConnection, rows: list[dict[str, Any]]) -> None: ...

    def mark(self) -> Any:
        """Called before each unit's savepoint."""
        ...

    def rolled_back(self, mark: Any) -> None:
        """That unit's savepoint was rolled back."""
        ...

    async def finish(self, connection: AsyncConnection, *, final: bool) -> None:
        """The batch's last statements, after every unit (``final``: the writer is stopping)."""
        ...

    def committed(self) -> None: ...

    def failed(self) -> None: ...

    async def write_alone(
        self, rows: list[dict[str, Any]], then: Callable[[sqlite3.Connection], None] | None
    ) -> bool:
        """Write and commit ``rows`` in a transaction of the sink's own, when a batch holds
        nothing else but plain statements (store/sqlite_writer.py: one trip to the database
        thread instead of several); ``then`` runs those statements in it, after the rows.
        ``rows`` is empty for a batch of statements alone (``statements_sink``).
        False: not now; the batch takes the usual way. Raising fails the batch."""
        ...


class StoreUnavailable(Exception):
    """The batch could not be committed; nothing in it was stored."""


@dataclass(slots=True)
class BatchStats:
    """Counters for metrics and benchmarks."""

    batches: int = 0
    alone: int = 0  # of them committed by a sink's write_alone (one trip to its thread)
    rows: int = 0
    units: int = 0
    failures: int = 0
    timeouts: int = 0  # callers answered before their batch ended (``wait_timeout``)
    last_batch_items: int = 0
    last_commit_seconds: float = 0.0


@dataclass(slots=True)
class _Batch:
    rows: dict[Insert, list[dict[str, Any]]] = field(default_factory=dict)
    units: list[tuple[Unit[Any], asyncio.Future[Any]]] = field(default_factory=list)
    statements: list[tuple[list[Statement], asyncio.Future[Rows]]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)  # for the rows
    callbacks: list[Done] = field(default_factory=list)  # for rows given to insert_nowait
    items: int = 0
    deadline: asyncio.TimerHandle | None = None  # wait_timeout, from the first write


class GroupCommitter:
    """Collects writes from every connection and commits them together."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        interval: float = 0.004,
        max_items: int = 1000,
        queue_limit: int = 50_000,
        wait_timeout: float | None = None,
    ) -> None:
        self._engine = writing(engine)
        self._wait_timeout = wait_timeout
        self._interval = interval
        self._max_items = max_items
        self._queue_limit = queue_limit
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._space = asyncio.Condition()
        self._queued = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = BatchStats()
        # Observability: called with (items, seconds) after each committed batch (metrics).
        self.on_commit: Callable[[int, float], None] | None = None
        # Statements whose rows a sink writes instead of a plain executemany (issue 4).
        self.sinks: dict[Insert, RowSink] = {}
        # One of them whose ``write_alone`` also takes a batch of nothing but plain statements
        # (``execute``), with no rows, in one trip.
        self.statements_sink: RowSink | None = None
        self._late: dict[asyncio.Future[Any], Late] = {}  # run(late=) of units not yet written
        self._late_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        self._full.set()
        async with self._space:  # callers waiting for room get StoreUnavailable
            self._space.notify_all()
        if self._task is not None:
            await self._task
            self._task = None
            await self._finish_sinks()

    async def _finish_sinks(self) -> None:
        """One last transaction for what sinks still hold (deferred rollups), when the final
        batch had nothing else to commit. A failure leaves it to the sink's recovery."""
        if not self.sinks:
            return
        try:
            async with self._engine.begin() as connection:
                for sink in self.sinks.values():
                    await sink.finish(connection, final=True)
        except Exception as error:
            for sink in self.sinks.values():
                sink.failed()
            log.error("final write of the writer's sinks failed: %s", error)
            return
        for sink in self.sinks.values():
            sink.committed()

    async def insert(self, statement: Insert, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` with ``statement`` in the next batch; return once committed."""
        if not rows:
            return
        if not self._room(len(rows)):
            await self._admit(len(rows))
        batch = self._rows_to_batch(statement, rows)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.waiters.append(future)
        self._added(batch, len(rows))
        await future

    def insert_nowait(self, statement: Insert, rows: list[dict[str, Any]], done: Done) -> bool:
        """Insert ``rows`` with ``statement`` in the next batch and call ``done`` once it has
        ended (None: committed), never before this returns. False, with nothing done, if the
        rows must take :meth:`insert` (none, no room, not running): only that one waits.

        The hot path's way (csms/meter_values.py): a caller that awaits :meth:`insert` costs a
        future, its resolution and a wake-up of the caller's task per message, ~8 us in all
        (docs/benchmarks.md, session 10); a callback costs a call."""
        if not rows or not self._room(len(rows)):
            return False
        batch = self._rows_to_batch(statement, rows)
        batch.callbacks.append(done)
        self._added(batch, len(rows))
        return True

    def _rows_to_batch(self, statement: Insert, rows: list[dict[str, Any]]) -> _Batch:
        """Add ``rows`` to the open batch's rows of ``statement``; the batch."""
        batch = self._batch
        bucket = batch.rows.get(statement)
        if bucket is None:
            batch.rows[statement] = list(rows)
        else:
            bucket.extend(rows)
        return batch

    async def run(self, unit: Unit[T], *, late: Late | None = None) -> T:
        """Run ``unit`` inside the next batch's transaction; return its result once committed.

        ``late`` is for what the caller does after the commit besides answering (publishing a
        live event): if the caller was answered with :class:`StoreUnavailable` by the
        ``wait_timeout`` and the unit commits after all (module docstring), ``late`` is run
        with its result instead, in a task of its own."""
        if not self._room(1):
            await self._admit(1)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if late is not None:
            self._late[future] = late
        batch = self._batch
        batch.units.append((unit, future))
        self._added(batch, 1)
        try:
            return await future
        except asyncio.CancelledError:
            self._late.pop(future, None)  # the caller went away: nobody to do it for
            raise

    async def execute(self, statements: list[Statement]) -> Rows:
        """Run plain SQL ``statements`` (qmark parameters: SQLite's) in the next batch, in a
        savepoint of their own like a unit's; once committed, return the rows the last of
        them returned (none for most).

        Unlike a unit they can run in the writer thread's transaction with a batch of meter
        values (``RowSink.write_alone``) instead of sending the batch the usual way, which
        costs tens of milliseconds under load (docs/benchmarks.md): for SQLite-only writes
        that come often (csms/liveness.py)."""
        if not statements:
            return []
        if not self._room(1):
            await self._admit(1)
        future: asyncio.Future[Rows] = asyncio.get_running_loop().create_future()
        batch = self._batch
        batch.statements.append((statements, future))
        self._added(batch, 1)
        return await future

    def _expire(self, batch: _Batch) -> None:
        """The batch's ``wait_timeout`` passed: answer its callers now (module docstring).
        Whoever joins it afterwards (it is still open while the writer is stuck) starts a
        deadline of its own."""
        batch.deadline = None
        failure = StoreUnavailable(f"the database did not commit within {self._wait_timeout:g} s")
        self.stats.timeouts += _fail(_futures(batch), failure) + _call_back(batch, failure)

    async def write_rows(
        self, connection: AsyncConnection, statement: Insert, rows: list[dict[str, Any]]
    ) -> None:
        """For units: insert ``rows`` on the batch's ``connection`` as a batch would (through
        the statement's sink, if it has one)."""
        sink = self.sinks.get(statement)
        if sink is None:
            await connection.execute(statement, rows)
        else:
            await sink.write(connection, rows)

    @property
    def queued(self) -> int:
        return self._queued

    def _room(self, count: int) -> bool:
        """The common case, checked without a coroutine (the hot path): running, and room
        in the queue for ``count`` more. Otherwise :meth:`_admit` waits or refuses."""
        return (
            self._task is not None
            and not self._closing
            and self._queued + min(count, self._queue_limit) <= self._queue_limit
        )

    async def _admit(self, count: int) -> None:
        if self._closing:
            raise StoreUnavailable("the writer is shutting down")
        if self._task is None:
            raise StoreUnavailable("the writer is not running")
        # A write larger than the whole limit waits for an empty queue rather than forever.
        needed = min(count, self._queue_limit)
        if self._queued + needed > self._queue_limit:
            # Backpressure: the caller (a charge point's message) waits for room.
            async with self._space:
                try:
                    await asyncio.wait_for(
                        self._space.wait_for(
                            lambda: self._closing or self._queued + needed <= self._queue_limit
                        ),
                        self._wait_timeout,
                    )
                except TimeoutError:
                    self.stats.timeouts += 1
                    raise StoreUnavailable(
                        f"no room in the write queue within {self._wait_timeout:g} s"
                    ) from None
            if self._closing:
                raise StoreUnavailable("the writer is shutting down")

    def _added(self, batch: _Batch, count: int) -> None:
        if batch.deadline is None and self._wait_timeout is not None:
            batch.deadline = asyncio.get_running_loop().call_later(
                self._wait_timeout, self._expire, batch
            )
        batch.items += count
        self._queued += count
        self._wake.set()
        if batch.items >= self._max_items:
            self._full.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        cut_at = loop.time()
        while True:
            await self._wake.wait()
            # Let the batch fill until one interval after the previous cut, or until it is full.
            # Under load the previous commit took longer than that: this batch filled meanwhile
            # and goes at once, instead of adding an interval to every commit cycle.
            remaining = self._interval - (loop.time() - cut_at)
            if not self._closing and self._batch.items < self._max_items and remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), remaining)
            cut_at = loop.time()
            batch, self._batch = self._batch, _Batch()
            self._wake.clear()
            self._full.clear()
            self._carry_over(batch)
            if batch.items:
                await self._commit(batch)
                self._queued -= batch.items
                async with self._space:
                    self._space.notify_all()
            if self._closing and not self._batch.items:
                return

    def _carry_over(self, batch: _Batch) -> None:
        """Leave the units and statements beyond ``max_items`` to the next batch.

        Rows cost little each (one ``executemany``), units several trips to the database
        each: when connections pile up faster than the writer takes them (5,000 charge points
        connecting and booting at once), one batch of everything queued during the previous
        commit took longer than ``wait_timeout`` and every caller in it got a CALLERROR
        (docs/benchmarks.md, connection storm). Cut at ``max_items``, each batch ends in
        bounded time and the first callers are answered first."""
        excess = len(batch.units) + len(batch.statements) - self._max_items
        if excess <= 0:
            return
        rest = self._batch
        keep_units = min(len(batch.units), self._max_items)
        keep_statements = self._max_items - keep_units
        rest.units[:0] = batch.units[keep_units:]
        rest.statements[:0] = batch.statements[keep_statements:]
        del batch.units[keep_units:], batch.statements[keep_statements:]
        batch.items -= excess
        rest.items += excess
        if batch.deadline is not None:
            # They have waited since the first write not yet answered, not from now. (None:
            # the bound passed and they were answered; whoever joins next starts one.)
            rest.deadline = asyncio.get_running_loop().call_at(
                batch.deadline.when(), self._expire, rest
            )
        self._wake.set()
        if rest.items >= self._max_items:
            self._full.set()

    async def _commit(self, batch: _Batch) -> None:
        try:
            await self._write(batch)
        finally:
            if batch.deadline is not None:
                batch.deadline.cancel()

    async def _write(self, batch: _Batch) -> None:
        started = time.perf_counter()
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        if not batch.units and len(batch.rows) <= 1 and not self._closing:
            sink: RowSink | None
            if batch.rows:
                ((statement, rows),) = batch.rows.items()
                sink = self.sinks.get(statement)
            else:  # statements alone (charge points connecting, booting, seen)
                rows, sink = [], self.statements_sink
            then = _statements_sync(batch.statements, results) if batch.statements else None
            try:
                alone = sink is not None and await sink.write_alone(rows, then)
            except Exception as error:
                self._failed(batch, error)
                return
            if alone:
                self.stats.alone += 1
                self._committed(batch, started, results)
                return
            results.clear()  # (``then`` may have run before the sink's transaction gave up)
        try:
            async with self._engine.begin() as connection:
                for statement, rows in batch.rows.items():
                    await self.write_rows(connection, statement, rows)
                sinks = list(self.sinks.values())
                for unit, future in batch.units:
                    marks = [sink.mark() for sink in sinks]
                    try:
                        async with connection.begin_nested():
                            results.append((future, True, await unit(connection)))
                    except Exception as error:  # one unit's failure is its caller's alone
                        log.exception("write unit failed")
                        results.append((future, False, error))
                        for sink, mark in zip(sinks, marks, strict=True):
                            sink.rolled_back(mark)
                for statements, future in batch.statements:
                    try:
                        async with connection.begin_nested():
                            for sql, parameters in statements:
                                result = await connection.exec_driver_sql(sql, parameters)
                            returned = [tuple(r) for r in result] if result.returns_rows else []
                        results.append((future, True, returned))
                    except Exception as error:  # the statements' caller's alone
                        log.exception("write statements failed")
                        results.append((future, False, error))
                for sink in sinks:
                    await sink.finish(connection, final=self._closing)
        except Exception as error:
            self._failed(batch, error)
            return
        self._committed(batch, started, results)

    def _run_late(self, late: Late, value: Any) -> None:
        async def run() -> None:
            try:
                await late(value)
            except Exception:
                log.exception("a late commit's follow-up failed")

        task = asyncio.get_running_loop().create_task(run())
        self._late_tasks.add(task)
        task.add_done_callback(self._late_tasks.discard)

    def _failed(self, batch: _Batch, error: Exception) -> None:
        if self._late:
            for _unit, future in batch.units:
                self._late.pop(future, None)
        for sink in self.sinks.values():
            sink.failed()
        self.stats.failures += 1
        log.error("group commit of %d items failed: %s", batch.items, error)
        failure = StoreUnavailable(f"database write failed: {type(error).__name__}")
        failure.__cause__ = error
        _fail(_futures(batch), failure)
        _call_back(batch, failure)

    def _committed(
        self,
        batch: _Batch,
        started: float,
        results: list[tuple[asyncio.Future[Any], bool, Any]],
    ) -> None:
        for sink in self.sinks.values():
            sink.committed()
        self.stats.batches += 1
        self.stats.rows += sum(len(rows) for rows in batch.rows.values())
        self.stats.units += len(batch.units) + len(batch.statements)
        self.stats.last_batch_items = batch.items
        self.stats.last_commit_seconds = time.perf_counter() - started
        if self.on_commit is not None:
            self.on_commit(batch.items, self.stats.last_commit_seconds)
        for waiter in batch.waiters:
            if not waiter.done():  # not answered by the deadline, not cancelled
                waiter.set_result(None)
        _call_back(batch, None)
        for future, ok, value in results:
            late = self._late.pop(future, None) if self._late else None
            if future.done():
                if late is not None and ok and not future.cancelled():
                    self._run_late(late, value)
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
                future.exception()


def _futures(batch: _Batch) -> list[asyncio.Future[Any]]:
    """Every caller's future in ``batch``."""
    return [
        *batch.waiters,
        *(future for _unit, future in batch.units),
        *(future for _statements, future in batch.statements),
    ]


def _statements_sync(
    queued: list[tuple[list[Statement], asyncio.Future[Rows]]],
    results: list[tuple[asyncio.Future[Any], bool, Any]],
) -> Callable[[sqlite3.Connection], None]:
    """Runs each caller's statements in a savepoint of its own on a plain sqlite3 connection
    (in the writer thread), noting each outcome in ``results``."""

    def run(connection: sqlite3.Connection) -> None:
        results.clear()  # a retried transaction starts over
        for statements, future in queued:
            connection.execute("SAVEPOINT statements")
            try:
                for sql, parameters in statements:
                    rows = connection.execute(sql, parameters).fetchall()
            except sqlite3.Error as error:
                connection.execute("ROLLBACK TO statements")
                results.append((future, False, error))
            else:
                results.append((future, True, rows))
            connection.execute("RELEASE statements")

    return run


def _call_back(batch: _Batch, failure: Exception | None) -> int:
    """Tell the batch's callbacks how it ended, each once (not again after the deadline told
    them); how many were told."""
    callbacks, batch.callbacks = batch.callbacks, []
    for done in callbacks:
        try:
            done(failure)
        except Exception:  # one caller's bug must not keep the others from their answers
            log.exception("a commit callback failed")
    return len(callbacks)


def _fail(futures: list[asyncio.Future[Any]], failure: Exception) -> int:
    """Fail the futures not resolved yet; how many that was."""
    failed = 0
    for future in futures:
        if not future.done():
            future.set_exception(failure)
            future.exception()  # retrieved: the caller may have gone away
            failed += 1
    return failed
