"""Charge point simulator and load generator (``chargegrid simulate``, ``chargegrid bench``).

A client of the OCPP endpoint only: it imports :mod:`chargegrid.ocpp` for framing and never the
server, so it can be pointed at any OCPP 1.6J central system.
"""

from __future__ import annotations

from chargegrid.simulator.chargepoint import SimConfig, SimulatedChargePoint
from chargegrid.simulator.fleet import Fleet, identities, run_fleet
from chargegrid.simulator.stats import FleetStats, SessionRecord

__all__ = [
    "Fleet",
    "FleetStats",
    "SessionRecord",
    "SimConfig",
    "SimulatedChargePoint",
    "identities",
    "run_fleet",
]
