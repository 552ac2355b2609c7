"""Channel names, one place (DESIGN.md: "Channel names live here").

Per charge point, after the reference guide's ``charge_point_{id}_{topic}`` streams, keyed by the
charge point identity; plus fleet-wide channels; plus internal channels between nodes.
"""

from __future__ import annotations

STATUS = "status"
SESSIONS = "sessions"
METER_VALUES = "meter_values"
CONNECTION = "connection"
ALERTS = "alerts"
OPERATIONS = "operations"
STATS = "stats"  # fleet only: the dashboard counters changed
LIVE_STATS = "live_stats"  # per charge point: live statistics, at most once per interval

TOPICS = (STATUS, SESSIONS, METER_VALUES, CONNECTION, ALERTS, OPERATIONS, STATS, LIVE_STATS)


def charge_point(identity: str, topic: str) -> str:
    return f"charge_point.{identity}.{topic}"


def fleet(topic: str) -> str:
    return f"fleet.{topic}"


# Node-to-node notices, never shown to users: the live hub and the Python event API build only
# ``fleet.*`` and ``charge_point.*`` names, from their own topic lists, so no client can ask for
# an ``internal.*`` channel.
# A full channel name, not a topic: the alert rules changed in the database, reload them.
INTERNAL_ALERT_RULES = "internal.alert_rules"
