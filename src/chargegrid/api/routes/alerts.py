"""Alerts and alert rules (issue 4).

Alerts: listed by viewers (filtered by state, acknowledgement and charge point, only visible
charge points), acknowledged by operators. Rules: read by viewers, created, changed and deleted
by admins; the node re-reads them at once and tells the other nodes to (after the commit).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from ocpp.v16.enums import Measurand
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from chargegrid.api.deps import Admin, Node, Operator, Viewer, visible_charge_point_id
from chargegrid.api.pagination import Limit, Offset, Refusal, RowId, visible
from chargegrid.metering.alert_rules import RuleSpec
from chargegrid.metering.alerts import alert_payload
from chargegrid.store import alerts as alert_store
from chargegrid.store.tables import alerts

router = APIRouter(prefix="/api/v1", tags=["alerts"])

KNOWN_MEASURANDS = frozenset(m.value for m in Measurand)


class AlertOut(BaseModel):
    """An alert. The condition (``state``) and the acknowledgement are separate facts."""

    id: int
    charge_point: str
    connector_id: int
    session_id: int | None
    rule: dict[str, Any] = Field(description="{id, name}; id is null once the rule is deleted")
    measurand: str
    phase: str | None = Field(description="null: the value had no phase, or is a sum of phases")
    severity: str
    value: float = Field(description="the value that raised it, in base units")
    unit: str
    value_at: str
    message: str
    state: Literal["raised", "resolved"] = Field(
        description="raised: not back in range yet (acknowledged or not); resolved: back in range"
    )
    raised_at: str
    resolved_at: str | None
    resolved_value: float | None
    acknowledged: bool = Field(description="an operator acknowledged it; the state is unchanged")
    acknowledged_at: str | None
    acknowledged_by: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int


class RuleOut(RuleSpec):
    id: int
    source: str


def _rule_out(row: dict[str, Any]) -> RuleOut:
    return RuleOut.model_validate({k: row[k] for k in (*alert_store.RULE_FIELDS, "id", "source")})


def _check(spec: RuleSpec) -> None:
    if spec.measurand not in KNOWN_MEASURANDS:
        raise HTTPException(422, f"unknown measurand {spec.measurand!r}")


@router.get("/alerts", response_model=AlertPage)
async def list_alerts(
    node: Node,
    principal: Viewer,
    state: Annotated[
        Literal["open", "raised", "resolved", "acknowledged"] | None,
        Query(
            description="open (or raised): not back in range, acknowledged or not; resolved; "
            "acknowledged: deprecated, the same as acknowledged=true"
        ),
    ] = None,
    acknowledged: Annotated[
        bool | None, Query(description="only acknowledged (true) or unacknowledged (false)")
    ] = None,
    charge_point: Annotated[str | None, Query(description="a charge point identity")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> AlertPage:
    """Alerts, newest first. What still needs someone: ``state=open&acknowledged=false``."""
    query = alert_store.query(state, acknowledged).where(
        visible(principal, alerts.c.charge_point_id)
    )
    if charge_point is not None:
        cp_id = await visible_charge_point_id(node, principal, charge_point)
        query = query.where(alerts.c.charge_point_id == cp_id)
    async with node.engine.connect() as connection:
        total = await connection.scalar(
            select(func.count()).select_from(query.order_by(None).subquery())
        )
        rows = list((await connection.execute(query.limit(limit).offset(offset))).mappings())
    return AlertPage(
        items=[AlertOut.model_validate(alert_payload(dict(r), r["identity"], None)) for r in rows],
        total=int(total or 0),
    )


async def _visible_alert(node: Any, principal: Any, alert_id: int) -> dict[str, Any]:
    async with node.engine.connect() as connection:
        row = await alert_store.alert(connection, alert_id)
    if row is None or not principal.can_see(int(row["charge_point_id"])):
        raise HTTPException(404, f"no alert {alert_id}")
    return row


@router.get("/alerts/{alert_id}", response_model=AlertOut)
async def get_alert(alert_id: RowId, node: Node, principal: Viewer) -> dict[str, Any]:
    row = await _visible_alert(node, principal, alert_id)
    return alert_payload(row, row["identity"], None)


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertOut)
async def acknowledge_alert(alert_id: RowId, node: Node, principal: Operator) -> dict[str, Any]:
    """Acknowledge an alert (raised or resolved); a second acknowledgement keeps the first.
    Its ``state`` does not change: a raised alert stays raised until it is back in range."""
    await _visible_alert(node, principal, alert_id)
    now = node.clock.now()
    username = principal.user.username
    await node.writer.run(lambda c: alert_store.acknowledge(c, alert_id, by=username, at=now))
    row = await _visible_alert(node, principal, alert_id)
    await node.alerts.publish(row, None, "acknowledged")
    return alert_payload(row, row["identity"], None)


@router.get("/alert-rules", response_model=list[RuleOut])
async def list_rules(node: Node, principal: Viewer) -> list[RuleOut]:
    async with node.engine.connect() as connection:
        return [_rule_out(r) for r in await alert_store.rules(connection)]


@router.post("/alert-rules", response_model=RuleOut, status_code=201)
async def create_rule(spec: RuleSpec, node: Node, principal: Admin) -> RuleOut:
    _check(spec)
    now = node.clock.now()

    async def unit(connection: Any) -> dict[str, Any] | None:
        if await alert_store.rule_by_name(connection, spec.name) is not None:
            raise Refusal(409, f"a rule named {spec.name!r} exists")
        rule_id = await alert_store.add_rule(connection, spec.model_dump(), source="api", now=now)
        return await alert_store.rule(connection, rule_id)

    row = await _run(node, unit)
    await node.alerts.rules_changed()
    assert row is not None
    return _rule_out(row)


@router.get("/alert-rules/{rule_id}", response_model=RuleOut)
async def get_rule(rule_id: RowId, node: Node, principal: Viewer) -> RuleOut:
    async with node.engine.connect() as connection:
        row = await alert_store.rule(connection, rule_id)
    if row is None:
        raise HTTPException(404, f"no alert rule {rule_id}")
    return _rule_out(row)


@router.put("/alert-rules/{rule_id}", response_model=RuleOut)
async def replace_rule(rule_id: RowId, spec: RuleSpec, node: Node, principal: Admin) -> RuleOut:
    _check(spec)
    now = node.clock.now()

    async def unit(connection: Any) -> dict[str, Any] | None:
        if not await alert_store.update_rule(connection, rule_id, spec.model_dump(), now=now):
            raise Refusal(404, f"no alert rule {rule_id}")
        return await alert_store.rule(connection, rule_id)

    row = await _run(node, unit)
    await node.alerts.rules_changed()
    assert row is not None
    return _rule_out(row)


@router.delete("/alert-rules/{rule_id}", status_code=204)
async def delete_rule(rule_id: RowId, node: Node, principal: Admin) -> None:
    async def unit(connection: Any) -> None:
        if not await alert_store.delete_rule(connection, rule_id):
            raise Refusal(404, f"no alert rule {rule_id}")

    await _run(node, unit)
    await node.alerts.rules_changed()


async def _run(node: Any, unit: Any) -> Any:
    try:
        return await node.writer.run(unit)
    except Refusal as refusal:
        raise HTTPException(refusal.status, refusal.detail) from None
    except IntegrityError:
        raise HTTPException(409, "conflicts with an existing rule") from None
