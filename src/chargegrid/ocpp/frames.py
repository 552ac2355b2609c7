"""OCPP-J 1.6 RPC frames: the three message types, their value objects and their encoders.

A frame is a JSON array (OCPP-J 1.6 §4.1.3): ``[2, id, action, payload]`` (CALL),
``[3, id, payload]`` (CALLRESULT) or ``[4, id, code, description, details]`` (CALLERROR).
Payload dicts are kept as they came off the wire and are never copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import orjson

__all__ = [
    "Call",
    "CallError",
    "CallResult",
    "MessageType",
    "encode_call",
    "encode_error",
    "encode_result",
    "recover_call_id",
]


class MessageType(IntEnum):
    """Message type numbers, OCPP-J 1.6 §4.1.3."""

    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4


@dataclass(frozen=True, slots=True)
class Call:
    """A request, ``[2, message_id, action, payload]`` (OCPP-J 1.6 §4.2.1)."""

    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    """A successful answer, ``[3, message_id, payload]`` (OCPP-J 1.6 §4.2.2)."""

    message_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    """A failed answer, ``[4, message_id, code, description, details]`` (OCPP-J 1.6 §4.2.3)."""

    message_id: str
    code: str
    description: str
    details: dict[str, Any]


def encode_call(message_id: str, action: str, payload: dict[str, Any] | None) -> str:
    """Return the text of a CALL frame; a ``None`` payload is sent as ``{}`` (CONFORMANCE R9)."""
    return orjson.dumps([2, message_id, action, {} if payload is None else payload]).decode()


def encode_result(message_id: str, payload: dict[str, Any] | None) -> str:
    """Return the text of a CALLRESULT frame; a ``None`` payload is sent as ``{}`` (R9)."""
    return orjson.dumps([3, message_id, {} if payload is None else payload]).decode()


def encode_error(
    message_id: str,
    code: str,
    description: str = "",
    details: dict[str, Any] | None = None,
) -> str:
    """Return the text of a CALLERROR frame.

    ``errorDetails`` is always a JSON object, ``{}`` when there are none: OCPP-J 1.6 §4.2.3
    types it as an object, and some charge points reject ``null`` there.
    """
    frame = [4, message_id, code, description, {} if details is None else details]
    return orjson.dumps(frame).decode()


# The start of a CALL up to and including its message id, as a JSON string literal. Only used
# on the error path, when a frame is not valid JSON (CONFORMANCE R1). The alternation is
# disjoint, so matching stays linear in the length of the input.
_CALL_HEAD: Final = re.compile(
    rb'\A[ \t\n\r]*\[[ \t\n\r]*2[ \t\n\r]*,[ \t\n\r]*("(?:[^"\\]|\\.)*")'
)


def recover_call_id(raw: str | bytes) -> str | None:
    """Read the message id of a CALL whose text is not valid JSON, or return ``None``.

    OCPP-J 1.6 §4.2.3 can only answer a CALL, so only text that starts like one
    (``[2, "...",``) yields an id. The id must itself be a well-formed JSON string (escapes are
    decoded, invalid UTF-8 or lone surrogates mean "unreadable") so that the CALLERROR echoing it
    can always be encoded.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    match = _CALL_HEAD.match(data)
    if match is None:
        return None
    try:
        message_id = orjson.loads(match.group(1))
    except orjson.JSONDecodeError:
        return None
    return message_id if isinstance(message_id, str) else None
