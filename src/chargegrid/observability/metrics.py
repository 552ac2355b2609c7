"""Prometheus metrics of one node, served at ``GET /metrics``.

Each node has its own :class:`~prometheus_client.CollectorRegistry` (tests run many nodes in one
process). Counts bumped once per message are plain ints in dicts, read by a collector at scrape
time: on the hot path that is one dict update, no lock and no label lookup (DESIGN.md performance
budget). Histograms (command latency, group-commit batches) are observed per command or batch,
never per message, so they use prometheus_client directly.

Label values come from bounded sets: actions of OCPP 1.6 (anything else is ``unknown``), Table 7
error codes (only ours: codes a charge point sends are not labels), HTTP statuses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import orjson
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from chargegrid.ocpp.actions import ACTIONS

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


def _zero() -> int:
    return 0


class Metrics:
    """The node's metrics. ``connected``, ``queued``, ``commit_failures`` and ``trace_dropped``
    are read at scrape time."""

    def __init__(
        self,
        *,
        connected: Callable[[], int],
        queued: Callable[[], int],
        commit_failures: Callable[[], int] = _zero,
        commit_timeouts: Callable[[], int] = _zero,
        trace_dropped: Callable[[], int] = _zero,
        hook_failures: Callable[[], int] = _zero,
    ) -> None:
        self.registry = CollectorRegistry()
        # action -> CALLRESULTs sent for it; the hot path's one increment.
        self.calls_ok: defaultdict[str, int] = defaultdict(int)
        # (action, code) -> CALLERRORs answering CALLs of action.
        self.calls_failed: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.errors_sent: defaultdict[str, int] = defaultdict(int)  # code -> CALLERRORs sent
        self.handshakes: defaultdict[int, int] = defaultdict(int)  # HTTP status -> upgrades
        self._connected = connected
        self._queued = queued
        self._commit_failures = commit_failures
        self._commit_timeouts = commit_timeouts
        self.trace_dropped = trace_dropped
        self.hook_failures = hook_failures
        self.command_seconds = Histogram(
            "chargegrid_command_duration_seconds",
            "CSMS-initiated calls: time from sending the CALL to the charge point's answer.",
            ["action", "outcome"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.batch_items = Histogram(
            "chargegrid_group_commit_batch_items",
            "Rows and units of work committed together in one group-commit transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "chargegrid_group_commit_duration_seconds",
            "Time to write and commit one group-commit batch.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.registry.register(_Counts(self))

    def call_failed(self, action: str, code: str) -> None:
        """A handler answered a CALL of ``action`` with a CALLERROR ``code``."""
        self.calls_failed[action, code] += 1
        self.errors_sent[code] += 1

    def call_refused(self, text: str | bytes, code: str) -> None:
        """The OCPP session answered ``text`` with CALLERROR ``code`` (no handler ran).

        Rare, so finding the action again by decoding the frame costs nothing that matters.
        """
        self.calls_failed[_action_of(text), code] += 1
        self.errors_sent[code] += 1

    def command_finished(self, action: str, outcome: str, seconds: float) -> None:
        self.command_seconds.labels(action, outcome).observe(seconds)

    def batch_committed(self, items: int, seconds: float) -> None:
        self.batch_items.observe(items)
        self.commit_seconds.observe(seconds)

    def exposition(self) -> bytes:
        """Everything above in the Prometheus text exposition format."""
        return generate_latest(self.registry)


def _action_of(text: str | bytes) -> str:
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "unknown"
    if type(message) is list and len(message) > 2:
        action = message[2]
        if type(action) is str and action in ACTIONS:
            return action
    return "unknown"


class _Counts(Collector):
    """Turns the plain counts into metric families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        # The scrape runs on the event loop, as do all writers of these dicts; the copies keep
        # it correct should that ever change.
        received = CounterMetricFamily(
            "chargegrid_ocpp_messages_received",
            "CALLs received from charge points, by action and result (ok or the CALLERROR code "
            "they were answered with).",
            labels=["action", "result"],
        )
        for action, count in list(m.calls_ok.items()):
            received.add_metric([action, "ok"], count)
        for (action, code), count in list(m.calls_failed.items()):
            received.add_metric([action, code], count)
        yield received

        errors = CounterMetricFamily(
            "chargegrid_ocpp_callerrors_sent",
            "CALLERRORs sent to charge points, by error code (OCPP-J 1.6 Table 7).",
            labels=["code"],
        )
        for code, count in list(m.errors_sent.items()):
            errors.add_metric([code], count)
        yield errors

        handshakes = CounterMetricFamily(
            "chargegrid_websocket_connections",
            "OCPP WebSocket upgrades by outcome and HTTP status (101: accepted).",
            labels=["outcome", "status"],
        )
        for status, count in sorted(m.handshakes.items()):
            outcome = "accepted" if status == 101 else "refused"
            handshakes.add_metric([outcome, str(status)], count)
        yield handshakes

        yield GaugeMetricFamily(
            "chargegrid_connected_charge_points",
            "Charge points with a live WebSocket on this node.",
            value=m._connected(),
        )
        yield GaugeMetricFamily(
            "chargegrid_group_commit_queue_depth",
            "Rows and units of work waiting for the group-commit writer.",
            value=m._queued(),
        )
        yield CounterMetricFamily(
            "chargegrid_group_commit_failures",
            "Group-commit batches whose transaction failed (every caller got an error).",
            value=m._commit_failures(),
        )
        yield CounterMetricFamily(
            "chargegrid_group_commit_wait_timeouts",
            "Writes answered with a CALLERROR because their commit took longer than "
            "commit_wait_timeout (the write stayed queued).",
            value=m._commit_timeouts(),
        )
        yield CounterMetricFamily(
            "chargegrid_trace_frames_dropped",
            "Message-trace frames not stored: the trace buffer was full or its write failed.",
            value=m.trace_dropped(),
        )
        yield CounterMetricFamily(
            "chargegrid_hook_failures",
            "Hooks of the embedding application that raised (logged; the connection stayed up).",
            value=m.hook_failures(),
        )
