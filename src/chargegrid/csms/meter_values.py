"""MeterValues (OCPP 1.6 §4.7; CONFORMANCE M1-M8): the hot path.

Rows are normalised here and handed to the group-commit writer; the CALLRESULT waits for the commit.
"""

from __future__ import annotations

from typing import Any

from chargegrid.bus import channels
from chargegrid.clock import isoformat_z
from chargegrid.csms.context import Context
from chargegrid.metering.normalise import sampled_value_rows
from chargegrid.metering.rollups import RollupMaintainer
from chargegrid.store.group_commit import Done


def meter_values_nowait(ctx: Context, request: dict[str, Any], done: Done) -> dict[str, Any] | None:
    """The common case without a coroutine: the rows go to the group commit, which calls
    ``done`` when their batch has ended (csms/context.NowaitHandler). Not taken (None) when
    someone follows the charge point's values live (they are published after the commit, by
    :func:`meter_values`) or the writer has no room (there the charge point waits)."""
    services = ctx.services
    charge_point = ctx.charge_point
    channel = channels.charge_point(charge_point.identity, channels.METER_VALUES)
    if services.bus.has_subscribers(channel):
        return None
    rows = _rows(ctx, request)
    return {} if services.writer.insert_nowait(services.meter_insert, rows, done) else None


def _rows(ctx: Context, request: dict[str, Any]) -> list[dict[str, Any]]:
    services = ctx.services
    charge_point = ctx.charge_point
    rows = sampled_value_rows(
        charge_point.id, request["connectorId"], request.get("transactionId"), request["meterValue"]
    )
    sink = services.writer.sinks.get(services.meter_insert)
    if isinstance(sink, RollupMaintainer):
        # Rollups cache each register's latest reading; a new connection may mean another node
        # wrote in between (issue 4, metering/rollups.py).
        sink.connection_seen(charge_point.id, ctx)
    return rows


async def meter_values(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    charge_point = ctx.charge_point
    rows = _rows(ctx, request)
    await services.writer.insert(services.meter_insert, rows)
    channel = channels.charge_point(charge_point.identity, channels.METER_VALUES)
    if services.bus.has_subscribers(channel):
        for row in rows:
            # The reference guide's meter value payload.
            await services.bus.publish(
                channel,
                {
                    "connector_id": row["connector_id"],
                    "measurand": row["measurand"],
                    "value": row["value"],
                    "unit": row["unit"],
                    "phase": row["phase"],
                    "context": row["context"],
                    "timestamp": isoformat_z(row["timestamp"]),
                    "session_id": row["transaction_id"],
                },
            )
    return {}
