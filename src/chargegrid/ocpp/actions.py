"""The 39 actions of OCPP 1.6 and which side may start each of them.

28 actions come from OCPP 1.6 edition 2 §4 and §5, 11 from the OCPP 1.6 Security Whitepaper
edition 2. The table matches the schema files shipped in ``ocpp/v16/schemas`` one to one (the
tests check this).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

__all__ = ["ACTIONS", "CP_INITIATED", "CSMS_INITIATED", "Direction"]


class Direction(StrEnum):
    """Who sends the CALL of an action.

    ``BOTH`` exists for DataTransfer alone, which OCPP 1.6 §4.3 and §5.6 let either side start.
    To ask "may X start this action?" use :data:`CP_INITIATED` / :data:`CSMS_INITIATED`, which
    already put DataTransfer in both sets.
    """

    CP_TO_CSMS = "cp_to_csms"
    CSMS_TO_CP = "csms_to_cp"
    BOTH = "both"


_CP: Final = Direction.CP_TO_CSMS
_CSMS: Final = Direction.CSMS_TO_CP

ACTIONS: Final[Mapping[str, Direction]] = MappingProxyType(
    {
        # OCPP 1.6 §4: operations initiated by the charge point.
        "Authorize": _CP,
        "BootNotification": _CP,
        "DataTransfer": Direction.BOTH,
        "DiagnosticsStatusNotification": _CP,
        "FirmwareStatusNotification": _CP,
        "Heartbeat": _CP,
        "MeterValues": _CP,
        "StartTransaction": _CP,
        "StatusNotification": _CP,
        "StopTransaction": _CP,
        # Security Whitepaper: charge point initiated.
        "LogStatusNotification": _CP,
        "SecurityEventNotification": _CP,
        "SignCertificate": _CP,
        "SignedFirmwareStatusNotification": _CP,
        # OCPP 1.6 §5: operations initiated by the central system.
        "CancelReservation": _CSMS,
        "ChangeAvailability": _CSMS,
        "ChangeConfiguration": _CSMS,
        "ClearCache": _CSMS,
        "ClearChargingProfile": _CSMS,
        "GetCompositeSchedule": _CSMS,
        "GetConfiguration": _CSMS,
        "GetDiagnostics": _CSMS,
        "GetLocalListVersion": _CSMS,
        "RemoteStartTransaction": _CSMS,
        "RemoteStopTransaction": _CSMS,
        "ReserveNow": _CSMS,
        "Reset": _CSMS,
        "SendLocalList": _CSMS,
        "SetChargingProfile": _CSMS,
        "TriggerMessage": _CSMS,
        "UnlockConnector": _CSMS,
        "UpdateFirmware": _CSMS,
        # Security Whitepaper: central system initiated.
        "CertificateSigned": _CSMS,
        "DeleteCertificate": _CSMS,
        "ExtendedTriggerMessage": _CSMS,
        "GetInstalledCertificateIds": _CSMS,
        "GetLog": _CSMS,
        "InstallCertificate": _CSMS,
        "SignedUpdateFirmware": _CSMS,
    }
)
"""Every OCPP 1.6 action name, mapped to the side that sends its CALL."""

CP_INITIATED: Final[frozenset[str]] = frozenset(
    name for name, direction in ACTIONS.items() if direction is not Direction.CSMS_TO_CP
)
"""Actions a charge point may send us as a CALL (DataTransfer included)."""

CSMS_INITIATED: Final[frozenset[str]] = frozenset(
    name for name, direction in ACTIONS.items() if direction is not Direction.CP_TO_CSMS
)
"""Actions we may send a charge point as a CALL (DataTransfer included)."""
