"""The ``sessions`` event payload (reference guide: ``event: started|stopped, session: {...}``)."""

from __future__ import annotations

from typing import Any

from chargegrid.clock import isoformat_z
from chargegrid.store.records import Transaction


def session_payload(identity: str, transaction: Transaction) -> dict[str, Any]:
    return {
        "id": transaction.id,
        "charge_point": identity,
        "connector_id": transaction.connector_id,
        "id_tag": transaction.id_tag,
        "started_at": isoformat_z(transaction.started_at),
        "stopped_at": isoformat_z(transaction.stopped_at) if transaction.stopped_at else None,
        "meter_start": transaction.meter_start,
        "meter_stop": transaction.meter_stop,
        "stop_reason": transaction.stop_reason,
        "energy_consumed": transaction.energy_kwh,  # kWh, as in the reference guide
    }
