"""The node's :class:`~chargegrid.gateway.observer.ConnectionObserver`: gateway events to metrics
and to the message trace."""

from __future__ import annotations

from chargegrid.gateway.admission import Admitted
from chargegrid.gateway.connection import ChargePointConnection
from chargegrid.gateway.observer import ConnectionObserver
from chargegrid.observability.metrics import Metrics
from chargegrid.observability.trace import MessageTrace
from chargegrid.ocpp.events import Reply


class NodeObserver(ConnectionObserver):
    def __init__(self, metrics: Metrics, trace: MessageTrace | None) -> None:
        self.metrics = metrics
        self.trace = trace
        self._calls_ok = metrics.calls_ok  # the hot path's counter, one lookup closer

    def handshake(self, status: int) -> None:
        self.metrics.handshakes[status] += 1

    async def connected(self, connection: ChargePointConnection, admitted: Admitted) -> None:
        if self.trace is not None:
            # The stored level came with the handshake's read: no query of its own.
            trace = self.trace
            trace.apply(connection, admitted.charge_point_id, trace.effective(admitted.trace_level))

    def disconnected(self, connection: ChargePointConnection) -> None:
        connection.trace = None

    def call_handled(
        self, connection: ChargePointConnection, action: str, error_code: str | None
    ) -> None:
        if error_code is None:
            self._calls_ok[action] += 1
        else:
            self.metrics.call_failed(action, error_code)

    def call_refused(
        self, connection: ChargePointConnection, text: str | bytes, reply: Reply
    ) -> None:
        self.metrics.call_refused(text, reply.code)
