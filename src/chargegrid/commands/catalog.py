"""The CSMS-initiated actions the API offers, and their URL names (kebab-case)."""

from __future__ import annotations

import re

from chargegrid.ocpp.actions import CSMS_INITIATED


def slug(action: str) -> str:
    """``RemoteStartTransaction`` -> ``remote-start-transaction``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", action).lower()


ACTION_BY_SLUG: dict[str, str] = {slug(action): action for action in sorted(CSMS_INITIATED)}

# Answers that mean "done" or "will do"; every other status a charge point answers is a refusal.
POSITIVE_STATUSES = frozenset({"Accepted", "Scheduled", "RebootRequired", "Unlocked"})

# Not sent while the charge point's registration is Pending (CONFORMANCE L2).
NOT_WHILE_PENDING = frozenset({"RemoteStartTransaction", "RemoteStopTransaction"})

# Configuration keys whose values are secrets: masked in operation records and never stored.
SECRET_KEYS = frozenset({"AuthorizationKey"})


def outcome(response: dict[str, object]) -> str:
    """The operation status a CALLRESULT gives: ``accepted`` or ``rejected``.

    A response without a ``status`` (GetConfiguration, GetDiagnostics, GetLocalListVersion, ...) is
    an answer, hence accepted.
    """
    status = response.get("status")
    if status is None or status in POSITIVE_STATUSES:
        return "accepted"
    return "rejected"


def masked(action: str, payload: dict[str, object]) -> dict[str, object]:
    """``payload`` as it may be stored and shown: secret configuration values replaced."""
    if action == "ChangeConfiguration" and payload.get("key") in SECRET_KEYS:
        return {**payload, "value": "********"}
    return payload
