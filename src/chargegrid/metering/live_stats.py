"""Live statistics per charge point, connector and session, in memory, updated per value.

Fed by :class:`chargegrid.metering.rollups.RollupMaintainer` with the rows of each committed
batch (so duplicates and uncommitted values never count), and by the ``sessions`` events for each
session's meterStart and start time. Per value the work is a few comparisons and one deque
append, because this runs on the hot path (DESIGN.md performance budget); snapshots are built only
when asked for.

What a node holds is what it ingested: the charge points connected to it, since it started.
With several nodes, :mod:`chargegrid.cluster.live_stats` mirrors the figures of the charge points
a node holds to Redis, so that every node answers for every charge point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chargegrid.bus import channels
from chargegrid.bus.base import Bus, Subscription
from chargegrid.clock import Clock, isoformat_z, parse_timestamp
from chargegrid.metering.rollups import step

log = logging.getLogger(__name__)

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"


class SeriesStats:
    """One measurand and phase: latest value, totals since it was first seen, rolling window."""

    __slots__ = ("at", "count", "max", "min", "sum", "unit", "value", "window")

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.value = 0.0
        self.at: datetime | None = None
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.window: deque[tuple[datetime, float]] = deque()

    def add(self, at: datetime, value: float, unit: str, horizon: timedelta) -> None:
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if self.at is None or at >= self.at:
            self.at, self.value, self.unit = at, value, unit
        window = self.window
        window.append((at, value))
        # Trimming only bounds memory (readers filter by time themselves), so it runs every
        # 32nd value: it was a datetime subtraction per value on the hot path.
        if not len(window) & 31:
            oldest = self.at - horizon
            while window and window[0][0] < oldest:
                window.popleft()

    def snapshot(self, measurand: str, phase: str | None, horizon: timedelta) -> dict[str, Any]:
        assert self.at is not None
        oldest = self.at - horizon
        recent = [value for at, value in self.window if at >= oldest]
        return {
            "measurand": measurand,
            "phase": phase,
            "unit": self.unit,
            "value": self.value,
            "timestamp": isoformat_z(self.at),
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "avg": self.sum / self.count,
            "window": {
                "seconds": horizon.total_seconds(),
                "count": len(recent),
                "min": min(recent) if recent else None,
                "max": max(recent) if recent else None,
                "avg": sum(recent) / len(recent) if recent else None,
            },
        }


Series = dict[tuple[str, str | None], SeriesStats]


@dataclass(slots=True)
class ConnectorStats:
    charge_point_id: int
    connector_id: int
    series: Series = field(default_factory=dict)
    session_id: int | None = None  # the last session seen on it


@dataclass(slots=True)
class SessionStats:
    id: int
    charge_point_id: int
    connector_id: int
    series: Series = field(default_factory=dict)
    started_at: datetime | None = None  # from StartTransaction, else the first value's time
    meter_start: float | None = None
    stopped_at: datetime | None = None
    first_at: datetime | None = None
    last_at: datetime | None = None
    energy: float = 0.0  # Wh since meterStart (or the first reading), reset-aware
    register: float | None = None  # the last Energy.Active.Import.Register reading counted
    register_at: datetime | None = None


def _power(series: Series) -> float | None:
    """Current power (W): the total if the charge point sends one, else the phases summed."""
    total = series.get((POWER, None))
    if total is not None:
        return total.value
    phases = [s.value for (measurand, phase), s in series.items() if measurand == POWER and phase]
    return sum(phases) if phases else None


def _series(series: Series, horizon: timedelta) -> list[dict[str, Any]]:
    return [
        stats.snapshot(measurand, phase, horizon)
        for (measurand, phase), stats in sorted(
            series.items(), key=lambda i: (i[0][0], i[0][1] or "")
        )
    ]


class LiveStats:
    """``observe`` rows as they commit; ``for_charge_point`` / ``for_session`` snapshots."""

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        *,
        window_seconds: float = 900.0,
        stopped_sessions: int = 1000,
    ) -> None:
        self._bus = bus
        self._clock = clock
        self.horizon = timedelta(seconds=window_seconds)
        self._keep_stopped = stopped_sessions
        self._connectors: dict[tuple[int, int], ConnectorStats] = {}
        self._by_charge_point: dict[int, list[ConnectorStats]] = {}
        self._sessions: dict[int, SessionStats] = {}
        self._stopped: OrderedDict[int, SessionStats] = OrderedDict()
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.changed: set[int] = set()  # charge points with new values since the last publish
        # Called with each session as it stops (once per session, never per value): the cluster
        # mirror writes its final figures. None on a single node.
        self.on_finish: Callable[[SessionStats], None] | None = None

    async def start(self) -> None:
        # Sessions events carry meterStart and the start time; publishers only build them when
        # someone listens, which this subscription ensures.
        self._subscription = await self._bus.subscribe(
            [channels.fleet(channels.SESSIONS)], max_pending=10_000
        )
        self._task = asyncio.create_task(self._follow(self._subscription), name="live-stats")

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = self._subscription = None

    async def _follow(self, subscription: Subscription) -> None:
        async for _channel, message in subscription:
            try:
                self.session_event(message)
            except Exception:
                log.exception("live stats: bad sessions event %r", message)

    def session_event(self, message: dict[str, Any]) -> None:
        """A ``sessions`` bus event (``event: started|stopped, session: {...}``)."""
        session = message.get("session") or {}
        transaction_id = session.get("id")
        charge_point_id = session.get("charge_point_id")
        if not isinstance(transaction_id, int):
            return
        stats = self._sessions.get(transaction_id)
        if message.get("event") == "started":
            if stats is None:
                stats = self._sessions[transaction_id] = SessionStats(
                    transaction_id,
                    charge_point_id if isinstance(charge_point_id, int) else -1,
                    int(session.get("connector_id") or 0),
                )
            stats.meter_start = float(session["meter_start"])
            stats.started_at = parse_timestamp(session["started_at"])
            if stats.register is not None and stats.register_at is not None:
                # Values came first; count from meterStart instead of the first reading.
                stats.energy += step(stats.meter_start, self._first_register(stats))
        elif message.get("event") == "stopped":
            if stats is None:
                stats = self._stopped.get(transaction_id)
            if stats is None:
                return
            if session.get("stopped_at"):
                stats.stopped_at = parse_timestamp(session["stopped_at"])
            if session.get("meter_stop") is not None and stats.register is not None:
                stats.energy += step(stats.register, float(session["meter_stop"]))
                stats.register = float(session["meter_stop"])
            self._finish(stats)

    def _first_register(self, stats: SessionStats) -> float:
        """The oldest register reading still in the window (it is trimmed lazily)."""
        series = stats.series.get((ENERGY, None))
        if series is None or series.at is None:
            return 0.0
        oldest = series.at - self.horizon
        return next((value for at, value in series.window if at >= oldest), 0.0)

    def _finish(self, stats: SessionStats) -> None:
        self._sessions.pop(stats.id, None)
        self._stopped[stats.id] = stats
        self._stopped.move_to_end(stats.id)
        while len(self._stopped) > self._keep_stopped:
            self._stopped.popitem(last=False)
        if self.on_finish is not None:
            self.on_finish(stats)

    def observe(self, rows: list[Sequence[Any]]) -> None:
        """Committed rows shaped like :data:`chargegrid.store.rollups.RETURNED`."""
        horizon = self.horizon
        connectors = self._connectors
        sessions = self._sessions
        changed = self.changed
        connector: ConnectorStats | None = None
        for charge_point_id, connector_id, tx, at, measurand, phase, location, unit, value in rows:
            if value is None:
                continue
            value = float(value)
            key = (measurand, phase)
            # A message's rows share their connector: looked up once per run of them.
            if (
                connector is None
                or connector.charge_point_id != charge_point_id
                or connector.connector_id != connector_id
            ):
                connector = connectors.get((charge_point_id, connector_id))
                if connector is None:
                    connector = connectors[charge_point_id, connector_id] = ConnectorStats(
                        charge_point_id, connector_id
                    )
                    self._by_charge_point.setdefault(charge_point_id, []).append(connector)
                changed.add(charge_point_id)
            series = connector.series.get(key)
            if series is None:
                series = connector.series[key] = SeriesStats(unit)
            series.add(at, value, unit, horizon)
            if tx is None:
                continue
            session = sessions.get(tx)
            if session is None:
                if tx in self._stopped:
                    continue  # transactionData of a stopped session: already final
                session = sessions[tx] = SessionStats(tx, charge_point_id, connector_id)
            if session.charge_point_id < 0:
                session.charge_point_id = charge_point_id
            connector.session_id = tx
            if session.first_at is None or at < session.first_at:
                session.first_at = at
            if session.last_at is None or at > session.last_at:
                session.last_at = at
            series = session.series.get(key)
            if series is None:
                series = session.series[key] = SeriesStats(unit)
            series.add(at, value, unit, horizon)
            if measurand == ENERGY and phase is None and location == "Outlet":
                self._count_energy(session, at, value)

    @staticmethod
    def _count_energy(session: SessionStats, at: datetime, value: float) -> None:
        if session.register_at is not None and at < session.register_at:
            return  # a late reading: the rollups place it exactly; live energy moves forward only
        previous = session.register if session.register is not None else session.meter_start
        if previous is not None:
            session.energy += step(previous, value)
        session.register, session.register_at = value, at

    # -- snapshots ------------------------------------------------------------------------

    def _session_snapshot(self, stats: SessionStats) -> dict[str, Any]:
        started = stats.started_at or stats.first_at
        ended = stats.stopped_at or self._clock.now()
        return {
            "session_id": stats.id,
            "connector_id": stats.connector_id,
            "active": stats.stopped_at is None,
            "started_at": isoformat_z(started) if started else None,
            "stopped_at": isoformat_z(stats.stopped_at) if stats.stopped_at else None,
            "duration_seconds": (ended - started).total_seconds() if started else None,
            "meter_start": stats.meter_start,
            "energy_wh": stats.energy,
            "power_w": _power(stats.series),
            "last_value_at": isoformat_z(stats.last_at) if stats.last_at else None,
            "measurands": _series(stats.series, self.horizon),
        }

    def for_session(self, transaction_id: int) -> dict[str, Any] | None:
        stats = self._sessions.get(transaction_id) or self._stopped.get(transaction_id)
        return self._session_snapshot(stats) if stats is not None else None

    def session_charge_point(self, transaction_id: int) -> int | None:
        stats = self._sessions.get(transaction_id) or self._stopped.get(transaction_id)
        return stats.charge_point_id if stats is not None else None

    def for_charge_point(self, charge_point_id: int) -> dict[str, Any]:
        """Per connector: latest values, statistics, current power and its session."""
        connectors = []
        for connector in sorted(
            self._by_charge_point.get(charge_point_id, []), key=lambda c: c.connector_id
        ):
            session = self._sessions.get(connector.session_id or -1)
            connectors.append(
                {
                    "connector_id": connector.connector_id,
                    "power_w": _power(connector.series),
                    "measurands": _series(connector.series, self.horizon),
                    "session": self._session_snapshot(session) if session is not None else None,
                }
            )
        return {"connectors": connectors}
