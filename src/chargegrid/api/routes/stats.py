"""Dashboard figures: the reference's ``calculate_stats``, over the charge points a user sees."""

from __future__ import annotations

from fastapi import APIRouter

from chargegrid.api.deps import Node, Viewer
from chargegrid.api.models import StatsOut
from chargegrid.store.stats import fleet_stats

router = APIRouter(prefix="/api/v1", tags=["stats"])


@router.get("/stats", response_model=StatsOut)
async def stats(node: Node, principal: Viewer) -> StatsOut:
    """Total, connected, available (connected and Available), charging (a connector is
    Charging), active sessions, and the energy of the sessions started since 00:00 UTC."""
    return StatsOut(**await fleet_stats(node.engine, node.clock.now(), principal.visible))
