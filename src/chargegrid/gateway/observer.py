"""Hooks through which the gateway reports what happens on its sockets, for metrics and tracing.

The gateway knows nothing of Prometheus or of the message trace: the composition root hands it a
:class:`ConnectionObserver` and the gateway calls it. The default does nothing.

The per-message hooks sit on the hot path (DESIGN.md performance budget), so they are few:
:meth:`ConnectionObserver.call_handled` once per CALL a handler answered, and a frame hook only
on a connection whose :attr:`~chargegrid.gateway.connection.ChargePointConnection.trace` is set.
Every hook must return quickly, never block and never raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from chargegrid.gateway.admission import Admitted
    from chargegrid.gateway.connection import ChargePointConnection
    from chargegrid.ocpp.events import Event, Reply


class FrameTrace(Protocol):
    """Sees every frame of one connection while set as its ``trace`` (None: tracing is off)."""

    def frame_in(self, text: str | bytes, event: Event) -> None:
        """A frame arrived; ``event`` is what the OCPP session made of it."""
        ...

    def frame_out(self, text: str) -> None:
        """A frame is about to be sent."""
        ...


class ConnectionObserver:
    """What the gateway reports; this base class ignores all of it."""

    def handshake(self, status: int) -> None:
        """A WebSocket upgrade was answered: 101 when accepted, else the refusal's HTTP status."""
        return None

    async def connected(self, connection: ChargePointConnection, admitted: Admitted) -> None:
        """``connection`` is registered; called before its first frame is read, with what the
        handshake read of the charge point.

        The place to set ``connection.trace``. Awaited once per connection, never per message.
        """
        return None

    def disconnected(self, connection: ChargePointConnection) -> None:
        """``connection`` is gone (its socket closed or was replaced)."""
        return None

    def call_handled(
        self, connection: ChargePointConnection, action: str, error_code: str | None
    ) -> None:
        """A handler answered a CALL of ``action``: a CALLRESULT (``error_code`` None) or a
        CALLERROR with ``error_code``."""
        return None

    def call_refused(
        self, connection: ChargePointConnection, text: str | bytes, reply: Reply
    ) -> None:
        """The OCPP session answered the frame ``text`` with a CALLERROR itself (malformed,
        unknown action, schema violation...), without running a handler."""
        return None


NO_OBSERVER = ConnectionObserver()
