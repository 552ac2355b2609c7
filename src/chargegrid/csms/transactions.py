"""StartTransaction and StopTransaction (OCPP 1.6 §4.8, §4.10; CONFORMANCE T1-T8).

Strict protocol, forgiving business logic: a bad tag still gets a transactionId (T2), a stop for an
unknown or stopped transaction is still answered (T5); anomalies go to the event log. Both answer
only after the write is committed (DESIGN.md guarantee 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.bus import channels
from chargegrid.clock import parse_timestamp
from chargegrid.csms.authorization import id_tag_info
from chargegrid.csms.context import Context
from chargegrid.csms.decisions import decide_id_tag
from chargegrid.csms.sessions import session_payload
from chargegrid.metering.normalise import sampled_value_rows
from chargegrid.store import id_tags
from chargegrid.store import transactions as tx_store


async def start_transaction(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    charge_point = ctx.charge_point
    settings = services.settings
    now = services.clock.now()
    raw_timestamp: str = request["timestamp"]
    connector_id: int = request["connectorId"]
    id_tag: str = request["idTag"]

    # An external authorizer is asked before the write: it must never hold the group commit.
    decided = await decide_id_tag(services.authorizer, charge_point.identity, id_tag)

    async def unit(connection: AsyncConnection) -> tuple[dict[str, Any], tx_store.StartOutcome]:
        if decided is not None:
            info = decided
        else:
            tag = await id_tags.get(connection, id_tag)
            busy = tag is not None and await tx_store.tag_busy(
                connection, id_tag, except_connector=(charge_point.id, connector_id)
            )
            info = id_tag_info(tag, now, busy=busy, concurrent_tx=settings.authorize_concurrent_tx)
        outcome = await tx_store.start(
            connection,
            tx_store.StartRequest(
                charge_point_id=charge_point.id,
                connector_id=connector_id,
                id_tag=id_tag,
                id_tag_status=info["status"],
                meter_start=request["meterStart"],
                started_at=parse_timestamp(raw_timestamp),
                started_at_raw=raw_timestamp,
                reservation_id=request.get("reservationId"),
            ),
            now=now,
        )
        return info, outcome

    async def publish(result: tuple[dict[str, Any], tx_store.StartOutcome]) -> None:
        if not result[1].replayed:
            await _publish_session(ctx, "started", result[1])

    # late: committed after the charge point was answered with a CALLERROR (a stalled
    # database): the session did start, and its resend will be recognised as a replay.
    info, outcome = await services.writer.run(unit, late=publish)
    if outcome.replayed:
        # CONFORMANCE T3: the same answer as the first time.
        info = {"status": outcome.transaction.id_tag_status}
    await publish((info, outcome))
    return {"transactionId": outcome.transaction.id, "idTagInfo": info}


async def stop_transaction(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    charge_point = ctx.charge_point
    now = services.clock.now()
    raw_timestamp: str = request["timestamp"]
    transaction_id: int = request["transactionId"]
    id_tag: str | None = request.get("idTag")
    rows = sampled_value_rows(
        charge_point.id, 0, transaction_id, request.get("transactionData") or []
    )
    stop = tx_store.StopRequest(
        charge_point_id=charge_point.id,
        transaction_id=transaction_id,
        meter_stop=request["meterStop"],
        stopped_at=parse_timestamp(raw_timestamp),
        stopped_at_raw=raw_timestamp,
        reason=request.get("reason") or "Local",  # OCPP 1.6 §7.52: absent means Local
        id_tag=id_tag,
        transaction_data=rows,
    )

    async def unit(
        connection: AsyncConnection,
    ) -> tuple[dict[str, Any] | None, tx_store.StopOutcome]:
        info = None
        if id_tag is not None:
            tag = await id_tags.get(connection, id_tag)
            info = id_tag_info(tag, now, busy=False, concurrent_tx=False)
        request_ = stop
        if rows:
            # CONFORMANCE T4: transactionData is stored as meter values, here through the
            # writer's meter value sink so they are rolled up like any other (issue 4); the
            # connector is the transaction's, as tx_store.stop would pick it.
            current = await tx_store.get(connection, transaction_id)
            connector_id = (
                current.connector_id
                if current is not None and current.charge_point_id == charge_point.id
                else 0
            )
            await services.writer.write_rows(
                connection,
                services.meter_insert,
                [dict(row, connector_id=connector_id) for row in rows],
            )
            request_ = dataclasses.replace(stop, transaction_data=[])
        return info, await tx_store.stop(connection, request_, now=now)

    async def publish(result: tuple[dict[str, Any] | None, tx_store.StopOutcome]) -> None:
        outcome = result[1]
        if outcome.transaction is not None and not outcome.already_stopped:
            await _publish_session(ctx, "stopped", outcome)

    info, outcome = await services.writer.run(unit, late=publish)  # late: as in start
    await publish((info, outcome))
    return {"idTagInfo": info} if info is not None else {}


async def _publish_session(
    ctx: Context, event: str, outcome: tx_store.StartOutcome | tx_store.StopOutcome
) -> None:
    bus = ctx.services.bus
    identity = ctx.charge_point.identity
    channel = channels.charge_point(identity, channels.SESSIONS)
    fleet = channels.fleet(channels.SESSIONS)
    if outcome.transaction is None or not (
        bus.has_subscribers(channel) or bus.has_subscribers(fleet)
    ):
        return
    message = {"event": event, "session": session_payload(identity, outcome.transaction)}
    await bus.publish(channel, message)
    await bus.publish(fleet, message)
