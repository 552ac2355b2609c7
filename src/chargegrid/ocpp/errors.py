"""CALLERROR codes of OCPP-J 1.6 and the exception that carries one.

Handlers and the validator raise :class:`OcppError`; the one place that answers a CALL turns it
into a CALLERROR frame with :func:`chargegrid.ocpp.frames.encode_error`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = ["ErrorCode", "OcppError"]


class ErrorCode(StrEnum):
    """The ten error codes of OCPP-J 1.6 Table 7, spelled as that table spells them.

    "Occurence" is misspelt on purpose: the OCPP-J 1.6 errata say "do not fix", and charge points
    compare the string. The 2.0.1 codes (FormatViolation, RpcFrameworkError, ...) do not exist
    in 1.6 and must never be sent.
    """

    NOT_IMPLEMENTED = "NotImplemented"
    NOT_SUPPORTED = "NotSupported"
    INTERNAL_ERROR = "InternalError"
    PROTOCOL_ERROR = "ProtocolError"
    SECURITY_ERROR = "SecurityError"
    FORMATION_VIOLATION = "FormationViolation"
    PROPERTY_CONSTRAINT_VIOLATION = "PropertyConstraintViolation"
    OCCURENCE_CONSTRAINT_VIOLATION = "OccurenceConstraintViolation"
    TYPE_CONSTRAINT_VIOLATION = "TypeConstraintViolation"
    GENERIC_ERROR = "GenericError"


class OcppError(Exception):
    """Raise to answer a CALL with a specific CALLERROR.

    ``description`` and ``details`` go to the charge point verbatim, so they must never hold a
    stack trace, SQL or a secret. ``details`` is always a dict because OCPP-J 1.6 §4.2.3 makes
    ``errorDetails`` a JSON object (``{}`` when there is nothing to say).
    """

    __slots__ = ("code", "description", "details")

    def __init__(
        self, code: ErrorCode, description: str = "", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {description}" if description else str(code))
        self.code = code
        self.description = description
        self.details: dict[str, Any] = {} if details is None else details

    def __repr__(self) -> str:
        return f"OcppError({self.code!r}, {self.description!r}, {self.details!r})"
