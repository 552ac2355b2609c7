"""Deciding an idTagInfo (OCPP 1.6 §7.30, CONFORMANCE A1-A3). Pure: no I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chargegrid.clock import isoformat_z
from chargegrid.store.records import IdTag


def id_tag_info(
    tag: IdTag | None, now: datetime, *, busy: bool, concurrent_tx: bool
) -> dict[str, Any]:
    """The idTagInfo for ``tag``: unknown is Invalid, a lapsed expiry is Expired, a tag already
    in a transaction elsewhere is ConcurrentTx when ``concurrent_tx`` is on."""
    if tag is None:
        return {"status": "Invalid"}
    status = tag.status
    if status == "Accepted" and tag.expiry_date is not None and tag.expiry_date <= now:
        status = "Expired"
    if status == "Accepted" and busy and concurrent_tx:
        status = "ConcurrentTx"
    info: dict[str, Any] = {"status": status}
    if tag.expiry_date is not None:
        info["expiryDate"] = isoformat_z(tag.expiry_date)
    if tag.parent_id_tag:
        info["parentIdTag"] = tag.parent_id_tag
    return info
