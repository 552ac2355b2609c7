"""Sans-I/O OCPP-J 1.6 protocol engine: framing, the action table, schema validation, errors.

Nothing in this package does I/O, uses asyncio or logs. The gateway feeds WebSocket text frames
to an :class:`OcppSession` and acts on the events it returns.
"""

from __future__ import annotations

from chargegrid.ocpp.actions import ACTIONS, CP_INITIATED, CSMS_INITIATED, Direction
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.ocpp.events import (
    Event,
    Ignored,
    IncomingCall,
    IncomingError,
    IncomingResult,
    Reply,
)
from chargegrid.ocpp.frames import (
    Call,
    CallError,
    CallResult,
    MessageType,
    encode_call,
    encode_error,
    encode_result,
)
from chargegrid.ocpp.session import OcppSession
from chargegrid.ocpp.validation import (
    compile_all,
    validate_outgoing_call,
    validate_request,
    validate_response,
)

__all__ = [
    "ACTIONS",
    "CP_INITIATED",
    "CSMS_INITIATED",
    "Call",
    "CallError",
    "CallResult",
    "Direction",
    "ErrorCode",
    "Event",
    "Ignored",
    "IncomingCall",
    "IncomingError",
    "IncomingResult",
    "MessageType",
    "OcppError",
    "OcppSession",
    "Reply",
    "compile_all",
    "encode_call",
    "encode_error",
    "encode_result",
    "validate_outgoing_call",
    "validate_request",
    "validate_response",
]
