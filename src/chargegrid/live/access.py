"""Who may see which charge point's events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from chargegrid.api.deps import Principal
from chargegrid.store.tables import charge_points


async def visibility(node: Any, principal: Principal) -> Callable[[str], bool]:
    """A predicate on identities: everything for unrestricted users, else their groups' CPs."""
    if principal.visible is None:
        return lambda _identity: True
    async with node.engine.connect() as connection:
        rows = await connection.execute(
            select(charge_points.c.identity).where(charge_points.c.id.in_(principal.visible))
        )
        identities = frozenset(str(r[0]) for r in rows)
    return identities.__contains__


async def charge_point_exists(node: Any, identity: str) -> bool:
    async with node.engine.connect() as connection:
        found = await connection.scalar(
            select(charge_points.c.id).where(charge_points.c.identity == identity)
        )
    return found is not None
