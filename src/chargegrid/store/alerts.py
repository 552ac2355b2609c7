"""Alert rules and alerts: rows in, rows out. The logic is in :mod:`chargegrid.metering.alerts`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.tables import alert_rules, alerts, charge_points

RULE_FIELDS = (
    "name",
    "measurand",
    "phase",
    "comparison",
    "threshold",
    "low",
    "high",
    "hysteresis",
    "cooldown_seconds",
    "severity",
    "charge_points",
    "enabled",
)

# The state filters: "open" (or "raised"): not yet back in range; "resolved"; and, kept for
# clients of the time when acknowledging changed the state, "acknowledged" (= acknowledged=True).
# Acknowledgement is its own filter: an acknowledged alert is still open until it resolves.
STATES = ("open", "raised", "resolved", "acknowledged")


async def rules(connection: AsyncConnection) -> list[dict[str, Any]]:
    rows = await connection.execute(select(alert_rules).order_by(alert_rules.c.id))
    return [dict(row) for row in rows.mappings()]


async def rule(connection: AsyncConnection, rule_id: int) -> dict[str, Any] | None:
    row = (
        (await connection.execute(select(alert_rules).where(alert_rules.c.id == rule_id)))
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


async def rule_by_name(connection: AsyncConnection, name: str) -> dict[str, Any] | None:
    row = (
        (await connection.execute(select(alert_rules).where(alert_rules.c.name == name)))
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


async def add_rule(
    connection: AsyncConnection, values: dict[str, Any], *, source: str, now: datetime
) -> int:
    result = await connection.execute(
        insert(alert_rules)
        .values(**values, source=source, created_at=now, updated_at=now)
        .returning(alert_rules.c.id)
    )
    return int(result.scalar_one())


async def update_rule(
    connection: AsyncConnection, rule_id: int, values: dict[str, Any], *, now: datetime
) -> bool:
    result = await connection.execute(
        update(alert_rules).where(alert_rules.c.id == rule_id).values(**values, updated_at=now)
    )
    return bool(result.rowcount)


async def delete_rule(connection: AsyncConnection, rule_id: int) -> bool:
    result = await connection.execute(delete(alert_rules).where(alert_rules.c.id == rule_id))
    return bool(result.rowcount)


async def upsert_rule(
    connection: AsyncConnection, values: dict[str, Any], *, source: str, now: datetime
) -> int:
    """Create or replace the rule named ``values["name"]`` (config file and CLI import)."""
    existing = await rule_by_name(connection, values["name"])
    if existing is None:
        return await add_rule(connection, values, source=source, now=now)
    await update_rule(connection, existing["id"], {**values, "source": source}, now=now)
    return int(existing["id"])


async def charge_point_ids(connection: AsyncConnection, identities: list[str]) -> dict[str, int]:
    rows = await connection.execute(
        select(charge_points.c.identity, charge_points.c.id).where(
            charge_points.c.identity.in_(identities)
        )
    )
    return {row[0]: int(row[1]) for row in rows}


async def identity(connection: AsyncConnection, charge_point_id: int) -> str | None:
    value = await connection.scalar(
        select(charge_points.c.identity).where(charge_points.c.id == charge_point_id)
    )
    return str(value) if value is not None else None


async def add_alert(connection: AsyncConnection, values: dict[str, Any]) -> int:
    result = await connection.execute(insert(alerts).values(**values).returning(alerts.c.id))
    return int(result.scalar_one())


async def resolve_alert(
    connection: AsyncConnection, alert_id: int, *, at: datetime, value: float
) -> dict[str, Any]:
    """Mark resolved; returns its acknowledgement (``acknowledged_at``, ``acknowledged_by``),
    which an operator may have given on any node since it was raised."""
    await connection.execute(
        update(alerts)
        .where(alerts.c.id == alert_id, alerts.c.resolved_at.is_(None))
        .values(resolved_at=at, resolved_value=value)
    )
    row = (
        (
            await connection.execute(
                select(alerts.c.acknowledged_at, alerts.c.acknowledged_by).where(
                    alerts.c.id == alert_id
                )
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else {}


async def acknowledge(connection: AsyncConnection, alert_id: int, *, by: str, at: datetime) -> bool:
    """Mark acknowledged (once; a second acknowledgement keeps the first). False: no alert."""
    result = await connection.execute(
        update(alerts)
        .where(alerts.c.id == alert_id, alerts.c.acknowledged_at.is_(None))
        .values(acknowledged_at=at, acknowledged_by=by)
    )
    if result.rowcount:
        return True
    return await connection.scalar(select(alerts.c.id).where(alerts.c.id == alert_id)) is not None


def query(state: str | None = None, acknowledged: bool | None = None) -> Select[Any]:
    """Alerts with their charge point's identity, newest first, filtered by ``state`` (one of
    :data:`STATES`) and by whether they were ``acknowledged``."""
    a = alerts.c
    statement = select(alerts, charge_points.c.identity).join(
        charge_points, charge_points.c.id == a.charge_point_id
    )
    if state in ("open", "raised"):
        statement = statement.where(a.resolved_at.is_(None))
    elif state == "resolved":
        statement = statement.where(a.resolved_at.is_not(None))
    elif state == "acknowledged":
        statement = statement.where(a.acknowledged_at.is_not(None))
    if acknowledged is not None:
        statement = statement.where(
            a.acknowledged_at.is_not(None) if acknowledged else a.acknowledged_at.is_(None)
        )
    return statement.order_by(a.raised_at.desc(), a.id.desc())


async def alert(connection: AsyncConnection, alert_id: int) -> dict[str, Any] | None:
    row = (await connection.execute(query().where(alerts.c.id == alert_id))).mappings().first()
    return dict(row) if row is not None else None


async def open_alerts(connection: AsyncConnection) -> list[dict[str, Any]]:
    rows = await connection.execute(select(alerts).where(alerts.c.resolved_at.is_(None)))
    return [dict(row) for row in rows.mappings()]
