"""Authorize (OCPP 1.6 §4.1; CONFORMANCE A1-A3)."""

from __future__ import annotations

from typing import Any

from chargegrid.csms.authorization import id_tag_info
from chargegrid.csms.context import Context
from chargegrid.csms.decisions import decide_id_tag
from chargegrid.store import id_tags
from chargegrid.store import transactions as tx_store


async def authorize(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    id_tag: str = request["idTag"]
    decided = await decide_id_tag(services.authorizer, ctx.charge_point.identity, id_tag)
    if decided is not None:
        return {"idTagInfo": decided}
    async with services.engine.connect() as connection:
        tag = await id_tags.get(connection, id_tag)
        busy = (
            tag is not None
            and services.settings.authorize_concurrent_tx
            and await tx_store.tag_busy(connection, id_tag)
        )
    info = id_tag_info(
        tag,
        services.clock.now(),
        busy=busy,
        concurrent_tx=services.settings.authorize_concurrent_tx,
    )
    return {"idTagInfo": info}
