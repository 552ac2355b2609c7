"""The OCPP-J 1.6 state machine of one charge-point connection, without I/O.

Text frames go in through :meth:`OcppSession.receive`, which returns one :data:`Event` and never
raises; frames to send come out of :meth:`OcppSession.result`, :meth:`OcppSession.error` and
:meth:`OcppSession.encode`. The gateway owns the socket, timers and logging.

Checks on an incoming CALL run in this order, the first failure answering with a CALLERROR
(CONFORMANCE R1-R10): framing (FormationViolation) -> message id (FormationViolation) -> action
known (NotImplemented) -> direction and support (NotSupported) -> registration accepted
(SecurityError) -> id not in flight (ProtocolError) -> payload schema (Table 7 codes).

Message ids we cannot echo: a CALL whose id is not a string is answered with the id's JSON text
if it is a number (``[2, 17, ...]`` -> ``"17"``) and ``""`` otherwise; an empty or over-long
string id is echoed as sent, so the charge point can still correlate the error.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final
from uuid import uuid4

import orjson

from chargegrid.ocpp.actions import ACTIONS, CP_INITIATED
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.ocpp.events import (
    Event,
    Ignored,
    IncomingCall,
    IncomingError,
    IncomingResult,
    Reply,
)
from chargegrid.ocpp.frames import Call, encode_call, encode_error, encode_result, recover_call_id
from chargegrid.ocpp.validation import (
    validate_outgoing_call,
    validate_request,
    validate_response,
)

__all__ = [
    "Event",
    "Ignored",
    "IncomingCall",
    "IncomingError",
    "IncomingResult",
    "OcppSession",
    "Reply",
]

# OCPP-J 1.6 §4.2.1: UniqueId is string[36], room for a GUID.
_MAX_MESSAGE_ID_LENGTH: Final = 36
_BOOT: Final = "BootNotification"
_FORMATION: Final = ErrorCode.FORMATION_VIOLATION
_TRIGGERS: Final = frozenset({"TriggerMessage", "ExtendedTriggerMessage"})
# ExtendedTriggerMessage names a message differently from the action that carries it.
_TRIGGERED_ACTION: Final = {"SignChargePointCertificate": "SignCertificate"}


class OcppSession:
    """Protocol state of one charge-point connection: CALLs in flight and our pending CALL.

    ``supported`` names the charge-point actions the server handles; a name that is not a
    charge-point action raises ``ValueError`` (it could never match). Set ``accepted`` once the
    charge point's BootNotification was answered Accepted; until then, with
    ``reject_before_accepted``, every CALL but BootNotification gets SecurityError (OCPP 1.6
    errata §3.8, CONFORMANCE R10).
    """

    __slots__ = (
        "_in_flight",
        "_pending",
        "_reject_before_accepted",
        "_supported",
        "_triggered",
        "_validate_responses",
        "accepted",
    )

    def __init__(
        self,
        *,
        supported: Collection[str],
        accepted: bool = False,
        reject_before_accepted: bool = True,
        validate_responses: bool = True,
    ) -> None:
        unknown = set(supported) - CP_INITIATED
        if unknown:
            raise ValueError(f"not charge-point actions of OCPP 1.6: {sorted(unknown)}")
        self._supported = frozenset(supported)
        self.accepted = accepted
        self._reject_before_accepted = reject_before_accepted
        self._validate_responses = validate_responses
        self._in_flight: set[str] = set()
        self._pending: Call | None = None
        self._triggered: set[str] = set()  # asked for by TriggerMessage while not accepted

    def _take_triggered(self, action: str) -> bool:
        if action in self._triggered:
            self._triggered.discard(action)
            return True
        return False

    @property
    def pending(self) -> Call | None:
        """Our CALL awaiting an answer, if any (one at a time, OCPP-J 1.6 §4.1.1)."""
        return self._pending

    def receive(self, text: str | bytes) -> Event:
        """Turn one WebSocket text frame into an :data:`Event`. Never raises."""
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            message_id = recover_call_id(text)
            if message_id is None:
                return Ignored("not valid JSON, and no CALL message id readable")
            # CONFORMANCE R1: the CALL is recognisable, so it gets an answer.
            return self._reply(message_id, _FORMATION, "message is not valid JSON")
        if type(message) is not list or not message:
            return Ignored("not an OCPP-J message: expected a non-empty JSON array")
        kind = message[0]
        if type(kind) is int:
            if kind == 2:
                return self._on_call(message)
            if kind == 3:
                return self._on_result(message)
            if kind == 4:
                return self._on_error(message)
        # CONFORMANCE R7: not a message type of OCPP-J 1.6 §4.1.3; nobody to answer.
        return Ignored(f"unknown message type {_excerpt(kind)}")

    def result(self, message_id: str, payload: dict[str, Any] | None) -> str:
        """Return the CALLRESULT answering the in-flight CALL ``message_id``; it is then done.

        A ``None`` payload is sent as ``{}`` (CONFORMANCE R9).
        """
        self._in_flight.discard(message_id)
        return encode_result(message_id, payload)

    def error(
        self,
        message_id: str,
        code: ErrorCode,
        description: str = "",
        details: dict[str, Any] | None = None,
    ) -> str:
        """Return the CALLERROR answering the in-flight CALL ``message_id``; it is then done.

        For a handler that raised anything but :class:`OcppError`, pass InternalError with a
        generic description and no details (CONFORMANCE R8).
        """
        self._in_flight.discard(message_id)
        return encode_error(message_id, code, description, details)

    def call(self, action: str, payload: dict[str, Any]) -> Call:
        """Start our CALL of ``action``; send ``encode(call)`` and await its answer.

        Raises :class:`OcppError` if we may not send ``action`` or ``payload`` fails its schema
        (or cannot be encoded as JSON), and ``RuntimeError`` while another call is pending: one
        CALL in flight per charge point (OCPP-J 1.6 §4.1.1, CONFORMANCE R11). Call
        :meth:`cancel` when the answer times out.
        """
        validate_outgoing_call(action, payload)
        try:
            # Python-built payloads may hold what JSON cannot carry (ints beyond 64 bits, lone
            # surrogates); refuse them here rather than fail after the call was made pending.
            orjson.dumps(payload)
        except TypeError as exc:
            raise OcppError(
                ErrorCode.TYPE_CONSTRAINT_VIOLATION, f"payload: not encodable as JSON ({exc})"
            ) from None
        if self._pending is not None:
            raise RuntimeError(
                f"{self._pending.action} {self._pending.message_id} is still awaiting its answer"
            )
        call = Call(str(uuid4()), action, payload)
        self._pending = call
        return call

    def encode(self, call: Call) -> str:
        """Return the text of the CALL frame for ``call``."""
        return encode_call(call.message_id, call.action, call.payload)

    def cancel(self, message_id: str) -> None:
        """Forget our pending call ``message_id`` (timed out); a late answer is then ignored."""
        if self._pending is not None and self._pending.message_id == message_id:
            self._pending = None

    def _on_call(self, message: list[Any]) -> Event:
        if len(message) < 2:
            return Ignored("CALL without a message id")
        message_id = message[1]
        if len(message) != 4:
            return self._reply(message_id, _FORMATION, "CALL must be [2, id, action, payload]")
        action = message[2]
        if type(action) is not str:
            return self._reply(message_id, _FORMATION, "CALL action must be a string")
        payload = message[3]
        if payload is None:
            # CONFORMANCE R9: some charge points send null for an empty payload.
            payload = {}
        elif type(payload) is not dict:
            return self._reply(message_id, _FORMATION, "CALL payload must be a JSON object")
        if type(message_id) is not str:
            return self._reply(message_id, _FORMATION, "message id must be a string")
        if not message_id or len(message_id) > _MAX_MESSAGE_ID_LENGTH:
            return self._reply(message_id, _FORMATION, "message id must be 1 to 36 characters")
        if action not in self._supported:
            return self._reply_unsupported(message_id, action)
        if (
            not self.accepted
            and self._reject_before_accepted
            and action != _BOOT
            and not self._take_triggered(action)
        ):
            return self._reply(
                message_id,
                ErrorCode.SECURITY_ERROR,
                f"{action} before the charge point was accepted; send BootNotification first",
            )
        if message_id in self._in_flight:
            # CONFORMANCE R6: the first CALL with this id stays in flight.
            return self._reply(
                message_id, ErrorCode.PROTOCOL_ERROR, "a CALL with this id is still being handled"
            )
        try:
            validate_request(action, payload)
        except OcppError as exc:
            return self._reply(message_id, exc.code, exc.description, exc.details)
        self._in_flight.add(message_id)
        return IncomingCall(Call(message_id, action, payload))

    def _reply_unsupported(self, message_id: str, action: str) -> Reply:
        # OCPP-J 1.6 Table 7: NotImplemented = "Requested Action is not known by receiver";
        # NotSupported = "Requested Action is recognized but not supported by the receiver".
        if action not in ACTIONS:
            code, problem = ErrorCode.NOT_IMPLEMENTED, "is not an OCPP 1.6 action"
        elif action not in CP_INITIATED:
            code, problem = ErrorCode.NOT_SUPPORTED, "is sent by a central system, not to one"
        else:
            code, problem = ErrorCode.NOT_SUPPORTED, "is not supported by this central system"
        return self._reply(message_id, code, f"{_excerpt(action)} {problem}")

    def _on_result(self, message: list[Any]) -> Event:
        pending = self._pending
        if pending is None or len(message) < 2 or message[1] != pending.message_id:
            return Ignored(f"CALLRESULT for no pending call: id {_excerpt_id(message)}")
        # From here on the frame answers our call, so a broken one fails the call at once
        # instead of leaving it to time out.
        self._pending = None
        if len(message) != 3 or not (message[2] is None or type(message[2]) is dict):
            return IncomingError(
                pending, _FORMATION, "invalid response: CALLRESULT must be [3, id, {payload}]", {}
            )
        payload = message[2] or {}  # CONFORMANCE R9: null means {}
        if self._validate_responses:
            try:
                validate_response(pending.action, payload)
            except OcppError as exc:
                return IncomingError(
                    pending, exc.code, f"invalid response: {exc.description}", exc.details
                )
        if (
            not self.accepted
            and pending.action in _TRIGGERS
            and payload.get("status") == "Accepted"
        ):
            # OCPP 1.6 §4.2.1: while Pending, the central system may ask for messages with
            # TriggerMessage; the one it asked for must then get through (once).
            requested = str(pending.payload.get("requestedMessage", ""))
            self._triggered.add(_TRIGGERED_ACTION.get(requested, requested))
        return IncomingResult(pending, payload)

    def _on_error(self, message: list[Any]) -> Event:
        pending = self._pending
        if pending is None or len(message) < 2 or message[1] != pending.message_id:
            return Ignored(f"CALLERROR for no pending call: id {_excerpt_id(message)}")
        if len(message) != 5:
            return Ignored("malformed CALLERROR: expected [4, id, code, description, details]")
        _, _, code, description, details = message
        if details is None:
            details = {}
        if type(code) is not str or type(description) is not str or type(details) is not dict:
            return Ignored("malformed CALLERROR: code, description or details of the wrong type")
        self._pending = None
        return IncomingError(pending, code, description, details)

    def _reply(
        self,
        message_id: object,
        code: ErrorCode,
        description: str,
        details: dict[str, Any] | None = None,
    ) -> Reply:
        if type(message_id) is str:
            text = encode_error(message_id, code, description, details)
            return Reply(text, message_id, code, description)
        # CONFORMANCE R5: a non-string id cannot be echoed as is; see the module docstring.
        number = type(message_id) is int or type(message_id) is float
        echoed = orjson.dumps(message_id).decode() if number else ""
        return Reply(encode_error(echoed, code, description, details), None, code, description)


def _excerpt(value: object, limit: int = 64) -> str:
    # Charge-point data in log reasons and descriptions: as JSON text, cut short. Anything
    # orjson decoded, it can encode again.
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[:limit] + "..."


def _excerpt_id(message: list[Any]) -> str:
    return _excerpt(message[1]) if len(message) > 1 else "missing"
