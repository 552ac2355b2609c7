"""What a handler gets: the charge point it serves and the services it may use. No socket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.bus.base import Bus
from chargegrid.clock import Clock
from chargegrid.config import Settings
from chargegrid.csms.decisions import BootPolicy, IdTagAuthorizer
from chargegrid.csms.liveness import Liveness
from chargegrid.store.group_commit import Done, GroupCommitter


@dataclass(slots=True)
class ChargePointSession:
    """One connected charge point as the handlers see it."""

    id: int
    identity: str
    registration_status: str
    security_profile: int = 0

    @property
    def accepted(self) -> bool:
        return self.registration_status == "Accepted"


@dataclass(slots=True)
class Services:
    settings: Settings
    clock: Clock
    engine: AsyncEngine  # reads; every write goes through ``writer``
    writer: GroupCommitter
    bus: Bus
    liveness: Liveness
    meter_insert: Insert
    # DataTransfer vendorId -> handler; unknown vendors get UnknownVendorId (OCPP 1.6 §4.3).
    data_transfer: dict[str, DataTransferHandler] = field(default_factory=dict)
    # Decisions an embedding application may take over (csms/decisions.py); None: built-in.
    authorizer: IdTagAuthorizer | None = None
    boot_policy: BootPolicy | None = None


@dataclass(slots=True)
class Context:
    """Made once per connection and handed to every handler call on it."""

    charge_point: ChargePointSession
    services: Services

    @property
    def accepted(self) -> bool:
        return self.charge_point.accepted


Handler = Callable[[Context, dict[str, Any]], Awaitable[dict[str, Any]]]
DataTransferHandler = Handler
# The same without a coroutine, for the hot path: the response to send once ``done`` (a
# GroupCommitter Done) is called with None, or None: not taken, the CALL goes to the Handler.
NowaitHandler = Callable[[Context, dict[str, Any], Done], "dict[str, Any] | None"]
