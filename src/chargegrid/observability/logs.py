"""Logging setup for ``chargegrid serve``: plain text or one JSON object per line.

A JSON line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and
``charge_point`` when the record has one (each connection logs through a LoggerAdapter that adds
it, STYLE.md principle 9), plus ``exception`` with the traceback text when there is one.

Whatever the format, a filter on the handler masks credentials that might slip into a message
(DESIGN.md guarantee 6): HTTP ``Basic``/``Bearer`` credentials, and ``token``, ``password``,
``auth_key``, ``AuthorizationKey`` and ``Authorization`` assignments, e.g. in a query string of an
access-log line. The code never logs these on purpose; this is the net under that rule.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from chargegrid.config import LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "********"

_SECRETS = re.compile(
    r"(?P<scheme>\b(?:Basic|Bearer)\s+)[A-Za-z0-9+/=._~-]+"
    r"|(?P<key>\b(?:access_token|token|password|passwd|secret|auth_key|authorization_key"
    r"|AuthorizationKey|Authorization)\b[\"']?\s*[=:]\s*[\"']?)(?!\s*(?:Basic|Bearer)\b)"
    r"[^\s\"'&,;}]+"
    # an OCPP {"key": "AuthorizationKey", "value": "..."} object, e.g. a logged payload
    r"|(?P<pair>AuthorizationKey\\?\"[^}]*?\"value\\?\"\s*:\s*\\?\")[^\"\\]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``********``."""
    return _SECRETS.sub(
        lambda m: (m.group("scheme") or m.group("key") or m.group("pair")) + MASK, text
    )


class RedactSecrets(logging.Filter):
    """Masks credentials in the formatted message (and its arguments) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one record per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        charge_point = getattr(record, "charge_point", None)
        if charge_point is not None:
            line["charge_point"] = str(charge_point)
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = record.stack_info
        return orjson.dumps(line).decode()


def configure_logging(
    level: str, log_format: LogFormat, stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records (uvicorn's too) to one handler on the root logger.

    Returns the handler. Run uvicorn with ``log_config=None`` so it does not install its own.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
