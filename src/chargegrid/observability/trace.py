"""The per-charge-point OCPP message trace, for debugging a misbehaving charger.

Levels (:class:`~chargegrid.config.TraceLevel`): ``off``; ``errors``, CALLERRORs in both
directions plus the CALL each answers, and frames ignored as unanswerable; ``all``, every frame
in and out. A charge point's
``charge_points.trace_level`` overrides the node's ``trace_default`` (NULL: the default).

Recording never waits for the database: frames go into a bounded buffer (full: the frame is
dropped and counted) that a background task hands to the group-commit writer. A second task
deletes rows older than ``trace_retention_hours``, a small batch per transaction.

Secrets stay secret (DESIGN.md guarantee 6): the value of an ``AuthorizationKey`` in a frame,
e.g. a ChangeConfiguration that rotates it, is masked before the frame is buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chargegrid.clock import Clock
from chargegrid.commands.catalog import SECRET_KEYS
from chargegrid.config import TraceLevel
from chargegrid.gateway.connection import ChargePointConnection
from chargegrid.gateway.observer import FrameTrace
from chargegrid.ocpp.events import (
    Event,
    Ignored,
    IncomingCall,
    IncomingError,
    IncomingResult,
    Reply,
)
from chargegrid.store.group_commit import GroupCommitter, StoreUnavailable
from chargegrid.store.tables import charge_points, message_trace

log = logging.getLogger(__name__)

MASK = "********"
_MAX_OPEN_CALLS = 64  # CALLs kept at level "errors" until answered; more means a stuck peer


class MessageTrace:
    """Records traced frames of this node's connections and serves them back."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        writer: GroupCommitter,
        clock: Clock,
        default: TraceLevel = TraceLevel.OFF,
        retention: timedelta = timedelta(hours=72),
        buffer_limit: int = 10_000,
        flush_interval: float = 0.05,
        purge_interval: float = 600.0,
        purge_batch: int = 500,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self.clock = clock
        self.default = TraceLevel(default)
        self.retention = retention
        self.buffer_limit = buffer_limit
        self._flush_interval = flush_interval
        self._purge_interval = purge_interval
        self._purge_batch = purge_batch
        self._rows: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._writing: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # frames not stored: buffer full or the write failed

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="trace-flush"),
            asyncio.create_task(self._purge_loop(), name="trace-purge"),
        ]

    async def stop(self) -> None:
        """Stop the background tasks, then write what is buffered (before the writer stops)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush()

    # -- levels --------------------------------------------------------------------------------

    def effective(self, stored: str | None) -> TraceLevel:
        """The level in force for a charge point whose stored ``trace_level`` is ``stored``."""
        if stored is None:
            return self.default
        try:
            return TraceLevel(stored)
        except ValueError:
            return self.default

    def apply(
        self, connection: ChargePointConnection, charge_point_id: int, level: TraceLevel
    ) -> None:
        """Trace ``connection`` at ``level`` from its next frame on."""
        trace: FrameTrace | None = None
        if level == TraceLevel.ALL:
            trace = _AllFrames(self, charge_point_id)
        elif level == TraceLevel.ERRORS:
            trace = _ErrorFrames(self, charge_point_id)
        connection.trace = trace

    async def store_level(self, charge_point_id: int, level: TraceLevel | None) -> None:
        """Store a charge point's level (None: follow the node default)."""
        now = self.clock.now()
        async with self._engine.begin() as c:
            await c.execute(
                update(charge_points)
                .where(charge_points.c.id == charge_point_id)
                .values(trace_level=level.value if level is not None else None, updated_at=now)
            )

    # -- recording -----------------------------------------------------------------------------

    def record(
        self,
        charge_point_id: int,
        direction: str,
        text: str | bytes,
        timestamp: datetime | None = None,
    ) -> None:
        """Buffer one frame; never waits. A full buffer drops the frame and counts it."""
        if len(self._rows) >= self.buffer_limit:
            self.dropped += 1
            return
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if "AuthorizationKey" in text:
            text = mask_secrets(text)
        self._rows.append(
            {
                "charge_point_id": charge_point_id,
                "timestamp": timestamp or self.clock.now(),
                "direction": direction,
                "frame": text,
            }
        )
        if not self._wake.is_set():
            self._wake.set()

    async def flush(self) -> None:
        """Write everything buffered so far, and wait for a write already under way."""
        writing = self._writing
        rows, self._rows = self._rows, []
        await self._write(rows)
        if writing is not None:
            await asyncio.shield(writing)

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._flush_interval)  # gather the frames of a burst
            self._wake.clear()
            rows, self._rows = self._rows, []
            writing = self._writing = asyncio.get_running_loop().create_future()
            try:
                await self._write(rows)
            finally:
                writing.set_result(None)
                self._writing = None

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return

        async def unit(c: AsyncConnection) -> None:
            await c.execute(insert(message_trace), rows)

        # A unit of work rather than writer.insert: the unit runs in its own SAVEPOINT, so rows of
        # a charge point removed meanwhile (a foreign key violation) fail only themselves, never
        # the batch that carries other charge points' transactions and meter values.
        try:
            await self._writer.run(unit)
        except Exception as error:
            self.dropped += len(rows)
            log.warning("message trace: %d frames not stored: %s", len(rows), error)

    # -- reading and retention -----------------------------------------------------------------

    async def frames(
        self, charge_point_id: int, *, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        """Frames of one charge point, oldest first: from ``since`` on, or else the latest."""
        columns = (
            message_trace.c.id,
            message_trace.c.timestamp,
            message_trace.c.direction,
            message_trace.c.frame,
        )
        query = select(*columns).where(message_trace.c.charge_point_id == charge_point_id)
        if since is not None:
            query = query.where(message_trace.c.timestamp >= since).order_by(
                message_trace.c.timestamp, message_trace.c.id
            )
        else:
            query = query.order_by(message_trace.c.timestamp.desc(), message_trace.c.id.desc())
        async with self._engine.connect() as c:
            rows = [dict(row._mapping) for row in await c.execute(query.limit(limit))]
        if since is None:
            rows.reverse()
        return rows

    async def purge(self, *, batch: int | None = None) -> int:
        """Delete frames older than the retention, ``batch`` rows per transaction (default: the
        constructor's ``purge_batch``) so the writer is never held for long. Returns the count."""
        cutoff = self.clock.now() - self.retention
        batch = batch or self._purge_batch
        oldest = (
            select(message_trace.c.id)
            .where(message_trace.c.timestamp < cutoff)
            .order_by(message_trace.c.id)
            .limit(batch)
            .scalar_subquery()
        )
        statement = delete(message_trace).where(message_trace.c.id.in_(oldest))

        async def unit(c: AsyncConnection) -> int:
            return int((await c.execute(statement)).rowcount)

        total = 0
        while True:
            deleted = await self._writer.run(unit)
            total += deleted
            if deleted < batch:
                return total

    async def _purge_loop(self) -> None:
        # Not at once: a node starting up has better things to do (and on SQLite every write
        # transaction competes with the API's).
        await asyncio.sleep(min(self._purge_interval, 60.0))
        while True:
            try:
                removed = await self.purge()
                if removed:
                    log.info("message trace: purged %d frames", removed)
            except StoreUnavailable as error:
                log.warning("message trace: purge failed: %s", error)
            except Exception:
                log.exception("message trace: purge failed")
            await asyncio.sleep(self._purge_interval)


class _AllFrames:
    """Level ``all``: every frame in and out."""

    __slots__ = ("_charge_point_id", "_trace")

    def __init__(self, trace: MessageTrace, charge_point_id: int) -> None:
        self._trace = trace
        self._charge_point_id = charge_point_id

    def frame_in(self, text: str | bytes, event: Event) -> None:
        self._trace.record(self._charge_point_id, "in", text)

    def frame_out(self, text: str) -> None:
        self._trace.record(self._charge_point_id, "out", text)


class _ErrorFrames:
    """Level ``errors``: CALLERRORs both ways and the CALL each answers, with its own time;
    also frames the session ignored (unparseable, unknown message type, a late answer), which
    got no answer at all and are just as telling about a misbehaving charger.

    CALLs are held (text and arrival time) until answered; a CALLRESULT forgets them.
    """

    __slots__ = ("_charge_point_id", "_open", "_ours", "_reply", "_trace")

    def __init__(self, trace: MessageTrace, charge_point_id: int) -> None:
        self._trace = trace
        self._charge_point_id = charge_point_id
        self._open: dict[str, tuple[datetime, str | bytes]] = {}  # their CALLs by message id
        self._ours: tuple[datetime, str] | None = None  # our CALL awaiting its answer
        self._reply: str | None = None  # the session's CALLERROR, recorded with its frame

    def frame_in(self, text: str | bytes, event: Event) -> None:
        trace, cp = self._trace, self._charge_point_id
        if isinstance(event, IncomingCall):
            if len(self._open) >= _MAX_OPEN_CALLS:
                self._open.clear()
            self._open[event.call.message_id] = (trace.clock.now(), text)
        elif isinstance(event, Reply):
            # The frame the session refused, and the CALLERROR the connection sends next.
            now = trace.clock.now()
            trace.record(cp, "in", text, now)
            trace.record(cp, "out", event.text, now)
            self._reply = event.text
        elif isinstance(event, IncomingError):
            # A CALLERROR (or an invalid CALLRESULT) answering our CALL.
            if self._ours is not None:
                trace.record(cp, "out", self._ours[1], self._ours[0])
            trace.record(cp, "in", text)
            self._ours = None
        elif isinstance(event, IncomingResult):
            self._ours = None
        elif isinstance(event, Ignored):
            trace.record(cp, "in", text)

    def frame_out(self, text: str) -> None:
        if text is self._reply:  # already recorded with the frame it answers
            self._reply = None
            return
        # Frames we send come from orjson, so the message type is the second character.
        kind = text[1:2]
        if kind == "2":
            self._ours = (self._trace.clock.now(), text)
        elif kind in ("3", "4"):
            message_id = orjson.loads(text)[1]
            call = self._open.pop(message_id, None) if type(message_id) is str else None
            if kind == "4":
                if call is not None:
                    self._trace.record(self._charge_point_id, "in", call[1], call[0])
                self._trace.record(self._charge_point_id, "out", text)


_VALUE = re.compile(r'("value"\s*:\s*)"(?:[^"\\]|\\.)*"')


def mask_secrets(text: str) -> str:
    """``text`` with the value of every secret configuration key replaced by ``********``.

    Covers ChangeConfiguration requests and GetConfiguration answers (``{key, value}`` objects).
    A frame that is not valid JSON has every ``"value"`` masked instead.
    """
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _VALUE.sub(rf'\1"{MASK}"', text)
    return orjson.dumps(_masked(message)).decode()


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("key") in SECRET_KEYS and "value" in value:
            value = {**value, "value": MASK}
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value
