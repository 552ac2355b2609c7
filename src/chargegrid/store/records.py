"""Typed, read-only views of stored rows, returned by the store and the Python query API."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Self

from sqlalchemy import RowMapping


class _FromRow:
    @classmethod
    def from_row(cls, row: RowMapping) -> Self:
        return cls(**{f.name: row[f.name] for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ChargePoint(_FromRow):
    id: int
    identity: str
    security_profile: int
    registration_status: str
    vendor: str | None
    model: str | None
    serial_number: str | None
    charge_box_serial_number: str | None
    firmware_version: str | None
    iccid: str | None
    imsi: str | None
    meter_type: str | None
    meter_serial_number: str | None
    status: str | None
    error_code: str | None
    connected: bool
    last_seen_at: datetime | None
    last_heartbeat_at: datetime | None
    last_boot_at: datetime | None
    connected_at: datetime | None
    disconnected_at: datetime | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Connector(_FromRow):
    charge_point_id: int
    connector_id: int
    status: str
    error_code: str
    info: str | None
    vendor_id: str | None
    vendor_error_code: str | None
    status_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class IdTag(_FromRow):
    id: int
    id_tag: str
    status: str
    expiry_date: datetime | None
    parent_id_tag: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Transaction(_FromRow):
    id: int
    charge_point_id: int
    connector_id: int
    id_tag: str
    id_tag_status: str
    reservation_id: int | None
    meter_start: int
    started_at: datetime
    started_at_raw: str
    meter_stop: int | None
    stopped_at: datetime | None
    stopped_at_raw: str | None
    stop_reason: str | None
    stop_id_tag: str | None
    energy_wh: float | None

    @property
    def active(self) -> bool:
        return self.stopped_at is None

    @property
    def energy_kwh(self) -> float | None:
        return None if self.energy_wh is None else self.energy_wh / 1000.0

    def duration_seconds(self, now: datetime) -> float:
        end = self.stopped_at or now
        return max(0.0, (end - self.started_at).total_seconds())


@dataclass(frozen=True, slots=True)
class MeterValue(_FromRow):
    id: int
    charge_point_id: int
    connector_id: int
    transaction_id: int | None
    timestamp: datetime
    timestamp_raw: str
    measurand: str
    phase: str | None
    location: str
    context: str
    unit: str
    value: float | None
    raw_value: str
    raw_unit: str
    format: str


@dataclass(frozen=True, slots=True)
class Event(_FromRow):
    id: int
    charge_point_id: int
    timestamp: datetime
    category: str
    type: str
    message: str
    payload: dict[str, Any]
