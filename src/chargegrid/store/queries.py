"""The Python query API: the reference guide's model scopes, over the store.

::

    queries = Queries(engine)
    await queries.connected_charge_points()
    await queries.current_session("CP001")
    await queries.meter_values("CP001", measurand="power", since=an_hour_ago)

Every method reads only; times are aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, CompoundSelect, Select, and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.store.records import ChargePoint, Connector, MeterValue, Transaction
from chargegrid.store.rollups import HOUR
from chargegrid.store.tables import (
    charge_points,
    connectors,
    meter_rollups,
    meter_values,
    transactions,
)
from chargegrid.store.value_keys import between, charge_point_values, transaction_values

# The reference guide's measurand scopes (``meter_values.energy`` etc.).
MEASURANDS: dict[str, str] = {
    "energy": "Energy.Active.Import.Register",
    "power": "Power.Active.Import",
    "current": "Current.Import",
    "voltage": "Voltage",
    "soc": "SoC",
    "temperature": "Temperature",
}

_CHARGING = exists().where(
    connectors.c.charge_point_id == charge_points.c.id, connectors.c.status == "Charging"
)


def measurand_name(measurand: str) -> str:
    """``"power"`` -> ``"Power.Active.Import"``; a full OCPP measurand name passes through."""
    return MEASURANDS.get(measurand.lower(), measurand)


class Queries:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _all(self, query: Select[Any] | CompoundSelect[Any]) -> list[Any]:
        async with self._engine.connect() as connection:
            return list((await connection.execute(query)).mappings())

    # Charge points -------------------------------------------------------------------------

    async def charge_point(self, identity: str) -> ChargePoint | None:
        rows = await self._all(select(charge_points).where(charge_points.c.identity == identity))
        return ChargePoint.from_row(rows[0]) if rows else None

    async def charge_points(
        self,
        *,
        connected: bool | None = None,
        available: bool | None = None,
        charging: bool | None = None,
    ) -> list[ChargePoint]:
        """Charge points ordered by identity, filtered like the reference's scopes.

        ``available``: connected and its status (connector 0) is Available. ``charging``: some
        connector reports Charging.
        """
        query = select(charge_points).order_by(charge_points.c.identity)
        if connected is not None:
            query = query.where(charge_points.c.connected.is_(connected))
        if available is not None:
            is_available = and_(
                charge_points.c.connected.is_(True), charge_points.c.status == "Available"
            )
            query = query.where(is_available if available else ~is_available)
        if charging is not None:
            query = query.where(_CHARGING if charging else ~_CHARGING)
        return [ChargePoint.from_row(row) for row in await self._all(query)]

    async def connected_charge_points(self) -> list[ChargePoint]:
        return await self.charge_points(connected=True)

    async def available_charge_points(self) -> list[ChargePoint]:
        return await self.charge_points(available=True)

    async def charging_charge_points(self) -> list[ChargePoint]:
        return await self.charge_points(charging=True)

    async def connectors(self, identity: str) -> list[Connector]:
        query = (
            select(connectors)
            .join(charge_points, charge_points.c.id == connectors.c.charge_point_id)
            .where(charge_points.c.identity == identity)
            .order_by(connectors.c.connector_id)
        )
        return [Connector.from_row(row) for row in await self._all(query)]

    # Sessions ------------------------------------------------------------------------------

    def _sessions(self, identity: str | None) -> Select[Any]:
        query = select(transactions)
        if identity is not None:
            query = query.join(
                charge_points, charge_points.c.id == transactions.c.charge_point_id
            ).where(charge_points.c.identity == identity)
        return query

    async def session(self, session_id: int) -> Transaction | None:
        rows = await self._all(select(transactions).where(transactions.c.id == session_id))
        return Transaction.from_row(rows[0]) if rows else None

    async def current_session(self, identity: str) -> Transaction | None:
        """The most recently started open session of a charge point."""
        sessions = await self.active_sessions(identity, limit=1)
        return sessions[0] if sessions else None

    async def active_sessions(
        self, identity: str | None = None, *, limit: int | None = None
    ) -> list[Transaction]:
        query = (
            self._sessions(identity)
            .where(transactions.c.stopped_at.is_(None))
            .order_by(transactions.c.started_at.desc(), transactions.c.id.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        return [Transaction.from_row(row) for row in await self._all(query)]

    async def completed_sessions(
        self,
        identity: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
    ) -> list[Transaction]:
        """Stopped sessions, the most recently stopped first; ``since``/``until`` bound the stop."""
        query = self._sessions(identity).where(transactions.c.stopped_at.is_not(None))
        if since is not None:
            query = query.where(transactions.c.stopped_at >= since)
        if until is not None:
            query = query.where(transactions.c.stopped_at < until)
        query = query.order_by(transactions.c.stopped_at.desc(), transactions.c.id.desc())
        return [Transaction.from_row(row) for row in await self._all(query.limit(limit))]

    async def energy_since(self, since: datetime) -> float:
        """Wh of the sessions started at or after ``since`` (the reference's energy today)."""
        query = select(func.coalesce(func.sum(transactions.c.energy_wh), 0.0)).where(
            transactions.c.started_at >= since
        )
        async with self._engine.connect() as connection:
            return float(await connection.scalar(query) or 0.0)

    # Meter values --------------------------------------------------------------------------

    async def meter_values(
        self,
        identity: str | None = None,
        *,
        measurand: str | None = None,
        session_id: int | None = None,
        phase: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> list[MeterValue]:
        """Sampled values, by charge point, measurand (a scope name like ``"power"`` or the
        OCPP name), session, phase and time range ``[since, until)``."""
        mv = meter_values.c
        where: list[ColumnElement[bool]] = []
        if measurand is not None:
            where.append(mv.measurand == measurand_name(measurand))
        if phase is not None:
            where.append(mv.phase == phase)
        time = between(since, until)

        query: Select[Any] | CompoundSelect[Any]
        dialect = self._engine.dialect.name
        charge_point = (
            select(charge_points.c.id).where(charge_points.c.identity == identity).scalar_subquery()
        )
        if session_id is not None:  # a session's values are fewer than its charge point's
            if identity is not None:
                where.append(mv.charge_point_id == charge_point)
            query = transaction_values(
                dialect,
                session_id,
                time=time,
                where=where,
                newest_first=newest_first,
                limit=limit,
            )
        elif identity is not None:
            query = charge_point_values(
                dialect,
                charge_point,
                time=time,
                where=where,
                newest_first=newest_first,
                limit=limit,
            )
        else:
            order = [mv.timestamp, mv.id]
            query = (
                select(meter_values)
                .where(*where, *time(mv.timestamp))
                .order_by(*(o.desc() for o in order) if newest_first else order)
            )
            if limit is not None:
                query = query.limit(limit)
        return [MeterValue.from_row(row) for row in await self._all(query)]

    async def latest_meter_value(
        self, identity: str, measurand: str, *, phase: str | None = None
    ) -> MeterValue | None:
        """The newest value of ``measurand`` (by timestamp).

        The sample index leads with (charge point, timestamp) (migration 0007), so an unbounded
        search walks the charge point's values back until one of ``measurand`` turns up: for a
        rare measurand, its whole history. The series' newest hourly rollup bounds it: the
        newest value is at or after the start of that hour (values not merged into rollups yet
        are newer still or do not matter). Without a rollup (no numeric value yet, or rollups
        deleted) the search is unbounded.
        """
        name = measurand_name(measurand)
        bucket = meter_rollups.c.bucket
        query = (
            select(func.max(bucket))
            .join(charge_points, charge_points.c.id == meter_rollups.c.charge_point_id)
            .where(
                charge_points.c.identity == identity,
                meter_rollups.c.measurand == name,
                meter_rollups.c.resolution == HOUR,
            )
        )
        if phase is not None:
            query = query.where(meter_rollups.c.phase == phase)
        async with self._engine.connect() as connection:
            since = await connection.scalar(query)
        if since is not None:
            values = await self.meter_values(
                identity, measurand=name, phase=phase, since=since, limit=1
            )
            if values:
                return values[0]
        values = await self.meter_values(identity, measurand=name, phase=phase, limit=1)
        return values[0] if values else None
