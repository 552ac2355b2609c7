"""The clock, injected everywhere time is read so that tests can pin it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def isoformat_z(value: datetime) -> str:
    """UTC ISO 8601 with a ``Z`` suffix and millisecond precision, as OCPP peers expect."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_timestamp(raw: str) -> datetime:
    """Parse an OCPP dateTime (RFC 3339) into aware UTC. A missing offset is taken as UTC."""
    text = raw.strip()
    if text.endswith("z"):  # Python 3.11's fromisoformat takes "Z" but not "z"
        text = text[:-1] + "Z"
    parsed = datetime.fromisoformat(text)
    tz = parsed.tzinfo
    if tz is UTC:  # "Z" and "+00:00": the common case, no conversion
        return parsed
    if tz is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
