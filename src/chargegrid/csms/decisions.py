"""Business decisions an embedding application may take over, with chargegrid's as the default.

- **Id tag authorization**: an :data:`IdTagAuthorizer` answers an idTagInfo (``{"status": ...}``)
  or None to leave the decision to the local list. :class:`ExternalAuthorizer` wraps a call to an
  outside service with a cache and a timeout; on timeout or error it falls back to the local list,
  so a slow service never leaves a driver standing at the charger.
- **Boot acceptance**: a :data:`BootPolicy` answers "Accepted", "Pending" or "Rejected" for a
  BootNotification, or None to keep the charge point's stored registration status.

Transaction ids stay chargegrid's: they are the database's, for exactly-once replay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

# (charge point identity, id tag) -> idTagInfo, or None for "ask the local list"
IdTagAuthorizer = Callable[[str, str], Awaitable[dict[str, Any] | None]]
# (charge point identity, BootNotification request) -> registration status, or None
BootPolicy = Callable[[str, dict[str, Any]], Awaitable[str | None]]

ID_TAG_STATUSES = frozenset({"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"})
REGISTRATION_STATUSES = frozenset({"Accepted", "Pending", "Rejected"})


class ExternalAuthorizer:
    """Ask ``service`` about id tags, caching answers for ``ttl`` seconds, giving up after
    ``timeout`` seconds (then the local list decides, and the failure is counted)."""

    def __init__(
        self, service: IdTagAuthorizer, *, timeout: float = 2.0, ttl: float = 300.0
    ) -> None:
        self._service = service
        self._timeout = timeout
        self._ttl = ttl
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self.fallbacks = 0

    async def __call__(self, charge_point: str, id_tag: str) -> dict[str, Any] | None:
        cached = self._cache.get(id_tag)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            info = await asyncio.wait_for(self._service(charge_point, id_tag), self._timeout)
        except TimeoutError:
            self.fallbacks += 1
            log.warning("id tag service timed out for %s; using the local list", charge_point)
            return None
        except Exception:
            self.fallbacks += 1
            log.exception("id tag service failed for %s; using the local list", charge_point)
            return None
        if info is None:
            return None
        if info.get("status") not in ID_TAG_STATUSES:
            self.fallbacks += 1
            log.error("id tag service answered an invalid idTagInfo %r; using the local list", info)
            return None
        self._cache[id_tag] = (now + self._ttl, info)
        return info


async def decide_id_tag(
    authorizer: IdTagAuthorizer | None, charge_point: str, id_tag: str
) -> dict[str, Any] | None:
    """The authorizer's idTagInfo, or None when there is none or it defers to the local list."""
    if authorizer is None:
        return None
    try:
        return await authorizer(charge_point, id_tag)
    except Exception:  # a plain callable without ExternalAuthorizer's guard
        log.exception("id tag authorizer failed for %s; using the local list", charge_point)
        return None


async def decide_boot(
    policy: BootPolicy | None, charge_point: str, request: dict[str, Any]
) -> str | None:
    if policy is None:
        return None
    try:
        status = await policy(charge_point, request)
    except Exception:
        log.exception("boot policy failed for %s; keeping the stored status", charge_point)
        return None
    if status is not None and status not in REGISTRATION_STATUSES:
        log.error("boot policy answered %r for %s; keeping the stored status", status, charge_point)
        return None
    return status
