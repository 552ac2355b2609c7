"""String formats the OCPP 1.6 schemas name, checked without a regular expression.

The schemas mark every timestamp ``"format": "date-time"``, which JSON Schema defines as an
RFC 3339 ``date-time``. fastjsonschema's built-in check is a regex that also lets through
non-ASCII digits, leap seconds and ``+0200`` offsets, which ``datetime.fromisoformat`` then may
not parse. :func:`is_date_time` accepts exactly the strings the rest of chargegrid can rely on.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["is_date_time"]


def is_date_time(value: str) -> bool:
    """Tell whether ``value`` is an RFC 3339 date-time the server can rely on.

    Accepted: ``YYYY-MM-DDTHH:MM:SS``, an optional fraction of one or more digits, then ``Z`` or
    a ``+HH:MM`` / ``-HH:MM`` offset, with a date that exists in the calendar. Every accepted
    string gives an offset-aware datetime with ``datetime.fromisoformat`` (Python 3.11+).

    The offset is required, as in RFC 3339: a local time without one cannot be placed (OCPP 1.6
    §3.14 recommends UTC, §3.15 makes receivers handle offsets). Stricter than RFC 3339, on
    purpose: ``T`` and ``Z`` must be upper case (ISO 8601; ``fromisoformat`` rejects the
    lower-case forms), seconds stop at 59 (no leap seconds) and the year starts at 0001.
    """
    # The character checks pin the layout, because fromisoformat alone also takes dates
    # without time, "10:30" without seconds, "+0200", ",5" fractions, ".Z" and "00 Z".
    # 20 = len("2024-01-15T10:30:00Z"), the shortest valid form.
    if len(value) < 20 or not value.isascii():
        return False
    if (
        value[4] != "-"
        or value[7] != "-"
        or value[10] != "T"
        or value[13] != ":"
        or value[16] != ":"
    ):
        return False
    if value[-1] == "Z":
        if not value[-2].isdigit():
            return False
    elif (
        value[-6] not in "+-"
        or value[-3] != ":"
        or not value[-7].isdigit()
        # fromisoformat takes "+02:60" as three hours.
        or value[-2] > "5"
    ):
        return False
    # After the end checks, a "." here cannot be the last character.
    tail = value[19]
    if tail == ".":
        if not value[20].isdigit():
            return False
    elif tail != "Z" and tail != "+" and tail != "-":
        return False
    try:
        # C code: checks the digits (ASCII only), month lengths, leap years, hour <= 23,
        # minute and second <= 59, and |offset| < 24 h.
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True
