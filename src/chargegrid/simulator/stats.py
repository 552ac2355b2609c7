"""What a simulated fleet did: counters shared by every charge point, and the final summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FleetStats", "SessionRecord"]


@dataclass(slots=True)
class SessionRecord:
    """One session as the charge point saw it, once its StopTransaction was acknowledged."""

    charge_point: str
    connector_id: int
    transaction_id: int
    id_tag: str
    meter_start: int
    meter_stop: int
    stop_reason: str
    started_at: str = ""  # the timestamps the charge point sent (UTC, milliseconds)
    stopped_at: str = ""

    @property
    def energy_wh(self) -> int:
        return self.meter_stop - self.meter_start

    def as_dict(self) -> dict[str, Any]:
        return {
            "charge_point": self.charge_point,
            "connector_id": self.connector_id,
            "transaction_id": self.transaction_id,
            "id_tag": self.id_tag,
            "meter_start": self.meter_start,
            "meter_stop": self.meter_stop,
            "energy_wh": self.energy_wh,
            "stop_reason": self.stop_reason,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
        }


@dataclass
class FleetStats:
    """Counters of the whole fleet. Single-threaded (one event loop), so plain ints suffice."""

    sent: Counter[str] = field(default_factory=Counter)  # CALLs we sent, per action
    answered: Counter[str] = field(default_factory=Counter)  # their CALLRESULTs
    received: Counter[str] = field(default_factory=Counter)  # CSMS-initiated CALLs, per action
    replied: Counter[str] = field(default_factory=Counter)  # our answers: "Action: status"
    call_errors: Counter[str] = field(default_factory=Counter)  # "Action: Code"
    timeouts: Counter[str] = field(default_factory=Counter)
    connect_failures: Counter[str] = field(default_factory=Counter)  # HTTP status or error kind
    rejected: Counter[str] = field(default_factory=Counter)  # business refusals (not errors)
    unexpected: Counter[str] = field(default_factory=Counter)  # stray frames from the server
    connected: int = 0
    connects: int = 0
    disconnects: int = 0
    offline_periods: int = 0
    lost_acks: int = 0  # CALLs sent just before dropping the network (replayed later)
    lost_ack_actions: Counter[str] = field(default_factory=Counter)  # the same, per action
    replayed: int = 0  # queued transaction messages sent after a reconnect
    dropped: int = 0  # queued messages given up (their StartTransaction was refused)
    faults: int = 0
    sessions_started: int = 0  # StartTransactions the CSMS acknowledged
    sampled_values_stored: int = 0  # sampled values in acknowledged MeterValues/transactionData
    sessions: list[SessionRecord] = field(default_factory=list)
    energy_wh: dict[str, int] = field(default_factory=dict)
    undelivered: dict[str, int] = field(default_factory=dict)  # queue left at the end, per CP

    @property
    def sessions_stopped(self) -> int:
        return len(self.sessions)

    @property
    def sessions_active(self) -> int:
        """Sessions the CSMS knows as started and not yet as stopped (acknowledged messages
        only, so this is what the CSMS should count as active)."""
        return self.sessions_started - self.sessions_stopped

    @property
    def errors(self) -> int:
        """Everything that went wrong on the wire (business refusals are not errors)."""
        return (
            sum(self.call_errors.values())
            + sum(self.timeouts.values())
            + sum(self.connect_failures.values())
            + sum(self.unexpected.values())
        )

    @property
    def messages(self) -> int:
        """Frames exchanged so far (CALLs both ways and their answers)."""
        return (
            sum(self.sent.values())
            + sum(self.answered.values())
            + sum(self.call_errors.values())
            + 2 * sum(self.received.values())
        )

    def summary(self, **header: Any) -> dict[str, Any]:
        """The final summary as plain JSON-able data (``--summary-json``)."""
        return {
            **header,
            "connected_at_end": self.connected,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "offline_periods": self.offline_periods,
            "lost_acks": self.lost_acks,
            "lost_ack_actions": dict(sorted(self.lost_ack_actions.items())),
            "replayed": self.replayed,
            "dropped": self.dropped,
            "faults": self.faults,
            "messages": {
                "sent": dict(sorted(self.sent.items())),
                "answered": dict(sorted(self.answered.items())),
                "received": dict(sorted(self.received.items())),
                "replied": dict(sorted(self.replied.items())),
                "total": self.messages,
            },
            "errors": {
                "total": self.errors,
                "call_errors": dict(sorted(self.call_errors.items())),
                "timeouts": dict(sorted(self.timeouts.items())),
                "connect_failures": dict(sorted(self.connect_failures.items())),
                "unexpected": dict(sorted(self.unexpected.items())),
            },
            "rejected": dict(sorted(self.rejected.items())),
            "sessions": {
                "started": self.sessions_started,
                "stopped": self.sessions_stopped,
                "active_at_end": self.sessions_active,
                "stopped_list": [record.as_dict() for record in self.sessions],
            },
            "sampled_values_stored": self.sampled_values_stored,
            "energy_wh": dict(sorted(self.energy_wh.items())),
            "energy_total_wh": sum(self.energy_wh.values()),
            "undelivered": {k: v for k, v in sorted(self.undelivered.items()) if v},
        }
