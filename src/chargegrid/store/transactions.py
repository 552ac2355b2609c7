"""Transactions: the start and stop units run inside a group-commit batch.

Both run in the writer's transaction, so the checks they make (replay, open transaction on the
connector, tag busy elsewhere) and the writes that follow are one atomic step.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.metering.energy import register_energy
from chargegrid.store import events as event_log
from chargegrid.store import meter_values as meter_store
from chargegrid.store.records import Transaction
from chargegrid.store.tables import transactions


@dataclass(frozen=True, slots=True)
class StartRequest:
    charge_point_id: int
    connector_id: int
    id_tag: str
    id_tag_status: str
    meter_start: int
    started_at: datetime
    started_at_raw: str
    reservation_id: int | None


@dataclass(frozen=True, slots=True)
class StartOutcome:
    transaction: Transaction
    replayed: bool  # the same StartTransaction had been stored before (CONFORMANCE T3)
    closed: list[Transaction]  # open transactions on the connector closed as anomalies (T8)


@dataclass(frozen=True, slots=True)
class StopRequest:
    charge_point_id: int
    transaction_id: int
    meter_stop: int
    stopped_at: datetime
    stopped_at_raw: str
    reason: str
    id_tag: str | None
    # Normalised meter value rows; their connector_id is filled in from the transaction.
    transaction_data: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class StopOutcome:
    transaction: Transaction | None  # None: unknown transaction (T5)
    already_stopped: bool


async def get(connection: AsyncConnection, transaction_id: int) -> Transaction | None:
    row = (
        (await connection.execute(select(transactions).where(transactions.c.id == transaction_id)))
        .mappings()
        .first()
    )
    return Transaction.from_row(row) if row else None


async def tag_busy(
    connection: AsyncConnection, id_tag: str, *, except_connector: tuple[int, int] | None = None
) -> bool:
    """True when ``id_tag`` has an open transaction (CONFORMANCE A3).

    ``except_connector`` (charge point id, connector id) is left out: a StartTransaction on a
    connector whose old transaction was never stopped closes that one instead (T8).
    """
    t = transactions.c
    query = select(t.id).where(t.id_tag == id_tag, t.stopped_at.is_(None))
    if except_connector is not None:
        charge_point_id, connector_id = except_connector
        query = query.where(
            (t.charge_point_id != charge_point_id) | (t.connector_id != connector_id)
        )
    return (await connection.execute(query.limit(1))).first() is not None


async def start(
    connection: AsyncConnection, request: StartRequest, *, now: datetime
) -> StartOutcome:
    t = transactions.c
    existing = (
        (
            await connection.execute(
                select(transactions).where(
                    t.charge_point_id == request.charge_point_id,
                    t.connector_id == request.connector_id,
                    t.started_at == request.started_at,
                    t.meter_start == request.meter_start,
                    t.id_tag == request.id_tag,
                )
            )
        )
        .mappings()
        .first()
    )
    if existing is not None:
        return StartOutcome(Transaction.from_row(existing), replayed=True, closed=[])

    # CONFORMANCE T8: never two open transactions on one connector; the one left open (its
    # StopTransaction lost) is closed as an anomaly.
    closed: list[Transaction] = []
    open_rows = (
        await connection.execute(
            select(transactions).where(
                t.charge_point_id == request.charge_point_id,
                t.connector_id == request.connector_id,
                t.stopped_at.is_(None),
            )
        )
    ).mappings()
    for open_row in list(open_rows):
        stale = Transaction.from_row(open_row)
        await connection.execute(
            update(transactions)
            .where(t.id == stale.id)
            .values(
                stopped_at=max(request.started_at, stale.started_at),
                stopped_at_raw="",
                stop_reason="Other",
                updated_at=now,
            )
        )
        await event_log.record(
            connection,
            event_log.row(
                request.charge_point_id,
                event_log.Category.ANOMALY,
                "StartTransaction.open_transaction_closed",
                f"transaction {stale.id} on connector {stale.connector_id} was still open "
                "when a new one started; closed without a StopTransaction",
                now,
                {"closed_transaction_id": stale.id, "connector_id": stale.connector_id},
            ),
        )
        closed.append(stale)

    result = await connection.execute(
        insert(transactions)
        .values(
            charge_point_id=request.charge_point_id,
            connector_id=request.connector_id,
            id_tag=request.id_tag,
            id_tag_status=request.id_tag_status,
            reservation_id=request.reservation_id,
            meter_start=request.meter_start,
            started_at=request.started_at,
            started_at_raw=request.started_at_raw,
            created_at=now,
            updated_at=now,
        )
        .returning(transactions)
    )
    return StartOutcome(
        Transaction.from_row(result.mappings().one()), replayed=False, closed=closed
    )


async def stop(connection: AsyncConnection, request: StopRequest, *, now: datetime) -> StopOutcome:
    current = await get(connection, request.transaction_id)
    if current is not None and current.charge_point_id != request.charge_point_id:
        current = None
    if request.transaction_data:
        # CONFORMANCE T4: transactionData is stored as meter values.
        connector_id = current.connector_id if current is not None else 0
        rows = [dict(row, connector_id=connector_id) for row in request.transaction_data]
        await connection.execute(meter_store.insert_statement(connection.dialect.name), rows)
    if current is None:
        await event_log.record(
            connection,
            event_log.row(
                request.charge_point_id,
                event_log.Category.ANOMALY,
                "StopTransaction.unknown_transaction",
                f"StopTransaction for unknown transaction {request.transaction_id}",
                now,
                {"transaction_id": request.transaction_id, "meter_stop": request.meter_stop},
            ),
        )
        return StopOutcome(None, already_stopped=False)
    if current.stopped_at is not None and current.meter_stop is not None:
        await event_log.record(
            connection,
            event_log.row(
                request.charge_point_id,
                event_log.Category.ANOMALY,
                "StopTransaction.already_stopped",
                f"StopTransaction for transaction {current.id}, which was already stopped",
                now,
                {"transaction_id": current.id, "meter_stop": request.meter_stop},
            ),
        )
        return StopOutcome(current, already_stopped=True)

    # CONFORMANCE T4: energy = meterStop - meterStart, when the register readings in between
    # agree. A register that went backwards was reset (M8): then the energy is summed across the
    # reset, never negative, and the disagreement is logged for the operator.
    energy = float(request.meter_stop - current.meter_start)
    readings = await meter_store.energy_register_readings(connection, current.id)
    track = [float(current.meter_start), *readings, float(request.meter_stop)]
    if any(later < earlier for earlier, later in itertools.pairwise(track)):
        energy = register_energy(track)
        await event_log.record(
            connection,
            event_log.row(
                request.charge_point_id,
                event_log.Category.ANOMALY,
                "StopTransaction.register_reset",
                f"energy register of transaction {current.id} went backwards; energy summed "
                f"across the reset: {energy:g} Wh (meterStop - meterStart = "
                f"{request.meter_stop - current.meter_start} Wh)",
                now,
                {"transaction_id": current.id, "energy_wh": energy},
            ),
        )
    result = await connection.execute(
        update(transactions)
        .where(transactions.c.id == current.id)
        .values(
            meter_stop=request.meter_stop,
            stopped_at=request.stopped_at,
            stopped_at_raw=request.stopped_at_raw,
            stop_reason=request.reason,
            stop_id_tag=request.id_tag,
            energy_wh=energy,
            updated_at=now,
        )
        .returning(transactions)
    )
    return StopOutcome(Transaction.from_row(result.mappings().one()), already_stopped=False)
