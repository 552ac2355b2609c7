"""Response models shared by the resource routers, so OpenAPI documents every answer.

Times are ISO 8601 UTC with a ``Z`` suffix (millisecond precision); energy is in kWh.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import RowMapping

from chargegrid.api.pagination import iso


class SessionSummary(BaseModel):
    """A charge point's current (open) session."""

    id: int
    connector_id: int
    id_tag: str
    started_at: str
    energy_kwh: float | None = Field(
        description="Energy so far, from the latest energy register reading; null if none yet."
    )


class ChargePointOut(BaseModel):
    identity: str
    connected: bool
    status: str | None = Field(description="Status of connector 0 (the charge point as a whole).")
    error_code: str | None
    registration_status: str
    security_profile: int
    vendor: str | None
    model: str | None
    firmware_version: str | None
    last_seen_at: str | None
    last_heartbeat_at: str | None
    current_session: SessionSummary | None


class ConnectorOut(BaseModel):
    connector_id: int
    status: str
    error_code: str
    info: str | None
    vendor_id: str | None
    vendor_error_code: str | None
    status_at: str | None = Field(description="The charge point's own timestamp, if it sent one.")
    updated_at: str


class ChargePointDetail(ChargePointOut):
    live: bool = Field(description="Its WebSocket is held by the node that answered.")
    has_auth_key: bool
    serial_number: str | None
    charge_box_serial_number: str | None
    iccid: str | None
    imsi: str | None
    meter_type: str | None
    meter_serial_number: str | None
    local_list_version: int | None
    firmware_status: str | None
    firmware_status_at: str | None
    diagnostics_status: str | None
    diagnostics_status_at: str | None
    last_boot_at: str | None
    connected_at: str | None
    disconnected_at: str | None
    created_at: str
    updated_at: str
    connectors: list[ConnectorOut]


class SessionOut(BaseModel):
    id: int
    charge_point: str
    connector_id: int
    id_tag: str
    started_at: str
    stopped_at: str | None
    meter_start: int
    meter_stop: int | None
    energy_kwh: float | None = Field(
        description="Completed: the session's energy. Active: energy so far from the latest "
        "energy register reading (null if none yet)."
    )
    duration_seconds: float
    stop_reason: str | None
    stop_id_tag: str | None
    reservation_id: int | None
    status: str = Field(description="active | completed")


class MeterValueOut(BaseModel):
    timestamp: str
    charge_point: str
    connector_id: int
    session_id: int | None
    measurand: str
    phase: str | None
    location: str
    context: str
    unit: str
    value: float | None = Field(description="Normalised to the base unit (Wh, W, A, V, ...).")
    raw_value: str
    format: str


class GroupedValue(BaseModel):
    """One point of a measurand's series (the reference's grouped-for-charting shape)."""

    timestamp: str
    value: float | None
    unit: str
    phase: str | None


class SessionDetail(SessionOut):
    meter_values: list[MeterValueOut] = Field(description="Oldest first.")
    meter_values_truncated: bool = Field(
        description="More values exist than were included; page through "
        "`/sessions/{id}/meter-values` or export the CSV."
    )


class IdTagOut(BaseModel):
    id_tag: str
    status: str
    expiry_date: str | None
    parent_id_tag: str | None
    created_at: str
    updated_at: str


class IdTagImportOut(BaseModel):
    added: int
    skipped: list[str]


class StatsOut(BaseModel):
    """The reference's ``calculate_stats``, over the charge points the user may see."""

    total: int
    connected: int
    available: int
    charging: int
    active_sessions: int
    energy_today_kwh: float = Field(
        description="Energy of the sessions started since 00:00 UTC today (completed ones)."
    )


class EventOut(BaseModel):
    id: int
    charge_point: str
    timestamp: str
    category: str
    type: str
    message: str
    payload: dict[str, Any]


class ConfigurationEntry(BaseModel):
    key: str
    value: str | None
    readonly: bool | None
    updated_at: str


class ReservationOut(BaseModel):
    id: int
    connector_id: int
    id_tag: str
    parent_id_tag: str | None
    expiry_date: str
    status: str
    operation_id: int | None
    created_at: str
    updated_at: str


class ChargingProfileOut(BaseModel):
    charging_profile_id: int
    connector_id: int
    stack_level: int
    purpose: str
    profile: dict[str, Any]
    status: str
    operation_id: int | None
    created_at: str
    updated_at: str


def connector_out(row: RowMapping) -> ConnectorOut:
    return ConnectorOut(
        connector_id=row["connector_id"],
        status=row["status"],
        error_code=row["error_code"],
        info=row["info"],
        vendor_id=row["vendor_id"],
        vendor_error_code=row["vendor_error_code"],
        status_at=iso(row["status_at"]),
        updated_at=iso(row["updated_at"]) or "",
    )


def id_tag_out(row: Any) -> IdTagOut:
    return IdTagOut(
        id_tag=row.id_tag,
        status=row.status,
        expiry_date=iso(row.expiry_date),
        parent_id_tag=row.parent_id_tag,
        created_at=iso(row.created_at) or "",
        updated_at=iso(row.updated_at) or "",
    )


def meter_value_out(row: RowMapping, identity: str) -> MeterValueOut:
    return MeterValueOut(
        timestamp=iso(row["timestamp"]) or "",
        charge_point=identity,
        connector_id=row["connector_id"],
        session_id=row["transaction_id"],
        measurand=row["measurand"],
        phase=row["phase"],
        location=row["location"],
        context=row["context"],
        unit=row["unit"],
        value=row["value"],
        raw_value=row["raw_value"],
        format=row["format"],
    )
