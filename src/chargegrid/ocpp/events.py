"""What :meth:`chargegrid.ocpp.session.OcppSession.receive` makes of one incoming frame.

Each event tells the caller what to do next:

* :class:`IncomingCall`: run the handler, then send ``session.result(...)`` or
  ``session.error(...)`` for ``call.message_id``.
* :class:`IncomingResult` / :class:`IncomingError`: the answer to our pending CALL; record it.
* :class:`Reply`: send ``text`` as is and log; the engine already answered.
* :class:`Ignored`: send nothing; log ``reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from chargegrid.ocpp.errors import ErrorCode
from chargegrid.ocpp.frames import Call

__all__ = ["Event", "Ignored", "IncomingCall", "IncomingError", "IncomingResult", "Reply"]


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A schema-valid CALL of a supported charge-point action, now in flight until answered."""

    call: Call


@dataclass(frozen=True, slots=True)
class IncomingResult:
    """A CALLRESULT for our pending ``call``; ``payload`` passed the response schema if asked."""

    call: Call
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IncomingError:
    """Our pending ``call`` failed: the charge point sent a CALLERROR, or an invalid CALLRESULT.

    For an invalid CALLRESULT, ``code`` is the Table 7 code the payload would have earned and
    ``description`` starts with ``"invalid response: "``. ``code`` is a plain string because a
    charge point may send codes that are not in :class:`ErrorCode`.
    """

    call: Call
    code: str
    description: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    """The engine answered on its own: send ``text`` (a CALLERROR frame) and log.

    ``message_id`` is the id the frame echoes when the charge point sent it as a string, and
    ``None`` when it sent none we could use (the frame then carries ``""`` or the id's JSON
    text, see :class:`chargegrid.ocpp.session.OcppSession`).
    """

    text: str
    message_id: str | None
    code: ErrorCode
    description: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to send (OCPP-J 1.6 §4.2.3 only answers CALLs); log ``reason``."""

    reason: str


Event: TypeAlias = IncomingCall | IncomingResult | IncomingError | Reply | Ignored
"""Everything :meth:`OcppSession.receive` can return."""
