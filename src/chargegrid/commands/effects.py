"""What a charge point's answer changes in what we know about it.

Run in the same write as the operation's final status, so the record and its effects agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.clock import parse_timestamp
from chargegrid.commands.catalog import SECRET_KEYS
from chargegrid.store.tables import charge_points, charging_profiles, configuration, reservations


def _insert(connection: AsyncConnection, table: Any) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def _upsert_configuration(
    connection: AsyncConnection,
    charge_point_id: int,
    key: str,
    value: str | None,
    readonly: bool | None,
    now: datetime,
) -> None:
    if key in SECRET_KEYS:
        return
    statement = _insert(connection, configuration).values(
        charge_point_id=charge_point_id, key=key, value=value, readonly=readonly, updated_at=now
    )
    changes: dict[str, Any] = {"value": value, "updated_at": now}
    if readonly is not None:
        changes["readonly"] = readonly
    await connection.execute(
        statement.on_conflict_do_update(index_elements=["charge_point_id", "key"], set_=changes)
    )


async def apply(
    connection: AsyncConnection,
    *,
    charge_point_id: int,
    operation_id: int,
    action: str,
    request: dict[str, Any],
    response: dict[str, Any],
    now: datetime,
) -> None:
    """Record the effect of ``response`` to ``action``; a refusal changes nothing."""
    status = response.get("status")
    cp = charge_points.c
    if action == "GetConfiguration":
        for entry in response.get("configurationKey") or []:
            await _upsert_configuration(
                connection,
                charge_point_id,
                entry["key"],
                entry.get("value"),
                entry.get("readonly"),
                now,
            )
    elif action == "ChangeConfiguration" and status in ("Accepted", "RebootRequired"):
        await _upsert_configuration(
            connection, charge_point_id, request["key"], request["value"], None, now
        )
    elif action == "ReserveNow":
        statement = _insert(connection, reservations).values(
            id=request["reservationId"],
            charge_point_id=charge_point_id,
            connector_id=request["connectorId"],
            id_tag=request["idTag"],
            parent_id_tag=request.get("parentIdTag"),
            expiry_date=parse_timestamp(request["expiryDate"]),
            status=str(status),
            operation_id=operation_id,
            created_at=now,
            updated_at=now,
        )
        await connection.execute(
            statement.on_conflict_do_update(
                index_elements=["id"],
                set_={
                    "charge_point_id": charge_point_id,
                    "connector_id": request["connectorId"],
                    "id_tag": request["idTag"],
                    "expiry_date": parse_timestamp(request["expiryDate"]),
                    "status": str(status),
                    "operation_id": operation_id,
                    "updated_at": now,
                },
            )
        )
    elif action == "CancelReservation" and status == "Accepted":
        await connection.execute(
            update(reservations)
            .where(
                reservations.c.id == request["reservationId"],
                reservations.c.charge_point_id == charge_point_id,
            )
            .values(status="cancelled", updated_at=now)
        )
    elif action == "SetChargingProfile" and status == "Accepted":
        profile = request["csChargingProfiles"]
        statement = _insert(connection, charging_profiles).values(
            charge_point_id=charge_point_id,
            connector_id=request["connectorId"],
            charging_profile_id=profile["chargingProfileId"],
            stack_level=profile["stackLevel"],
            purpose=profile["chargingProfilePurpose"],
            profile=profile,
            status="installed",
            operation_id=operation_id,
            created_at=now,
            updated_at=now,
        )
        await connection.execute(
            statement.on_conflict_do_update(
                index_elements=["charge_point_id", "charging_profile_id"],
                set_={
                    "connector_id": request["connectorId"],
                    "stack_level": profile["stackLevel"],
                    "purpose": profile["chargingProfilePurpose"],
                    "profile": profile,
                    "status": "installed",
                    "operation_id": operation_id,
                    "updated_at": now,
                },
            )
        )
    elif action == "ClearChargingProfile" and status == "Accepted":
        # OCPP 1.6 §5.5: every given criterion must match; none given clears all.
        p = charging_profiles.c
        query = update(charging_profiles).where(
            p.charge_point_id == charge_point_id, p.status == "installed"
        )
        if "id" in request:
            query = query.where(p.charging_profile_id == request["id"])
        if "connectorId" in request:
            query = query.where(p.connector_id == request["connectorId"])
        if "chargingProfilePurpose" in request:
            query = query.where(p.purpose == request["chargingProfilePurpose"])
        if "stackLevel" in request:
            query = query.where(p.stack_level == request["stackLevel"])
        await connection.execute(query.values(status="cleared", updated_at=now))
    elif action == "SendLocalList" and status == "Accepted":
        await connection.execute(
            update(charge_points)
            .where(cp.id == charge_point_id)
            .values(local_list_version=request["listVersion"], updated_at=now)
        )
    elif action == "GetLocalListVersion":
        await connection.execute(
            update(charge_points)
            .where(cp.id == charge_point_id)
            .values(local_list_version=response["listVersion"], updated_at=now)
        )
    elif action in ("UpdateFirmware", "SignedUpdateFirmware") and status in (None, "Accepted"):
        await connection.execute(
            update(charge_points)
            .where(cp.id == charge_point_id)
            .values(firmware_status="Requested", firmware_status_at=now, updated_at=now)
        )
    elif action in ("GetDiagnostics", "GetLog") and status in (None, "Accepted"):
        await connection.execute(
            update(charge_points)
            .where(cp.id == charge_point_id)
            .values(diagnostics_status="Requested", diagnostics_status_at=now, updated_at=now)
        )
