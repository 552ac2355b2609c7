"""DataTransfer from the charge point (OCPP 1.6 §4.3) and SignCertificate (Security Whitepaper).

DataTransfer is recorded in the event log. A vendor handler registered in
``Services.data_transfer`` (see docs/ocpp.md) answers for its vendorId; otherwise the answer is
``UnknownVendorId``, as the spec asks of a CSMS that has no implementation for that vendor.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert

from chargegrid.csms.context import Context
from chargegrid.store import events as event_log
from chargegrid.store.tables import events

_INSERT_EVENT = insert(events)


async def data_transfer(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    vendor_id: str = request["vendorId"]
    handler = services.data_transfer.get(vendor_id)
    response: dict[str, Any] = (
        await handler(ctx, request) if handler is not None else {"status": "UnknownVendorId"}
    )
    row = event_log.row(
        ctx.charge_point.id,
        event_log.Category.DATA_TRANSFER,
        "DataTransfer",
        f"data transfer from vendor {vendor_id!r}, message {request.get('messageId')!r}: "
        f"{response['status']}",
        services.clock.now(),
        {"request": request, "response": response},
    )
    await services.writer.insert(_INSERT_EVENT, [row])
    return response


async def sign_certificate(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    """Rejected: chargegrid has no certificate authority to sign with yet (docs/ocpp.md).

    The request (its CSR) is kept in the event log so an operator can sign it by other means.
    """
    services = ctx.services
    row = event_log.row(
        ctx.charge_point.id,
        event_log.Category.SECURITY,
        "SignCertificate",
        "certificate signing request rejected: no certificate authority configured",
        services.clock.now(),
        request,
    )
    await services.writer.insert(_INSERT_EVENT, [row])
    return {"status": "Rejected"}
