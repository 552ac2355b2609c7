"""Charge points: list, detail, provisioning, auth key rotation, and what is known about each."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import RowMapping, and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid import admin
from chargegrid.api.deps import Admin, Node, Viewer, visible_charge_point_id
from chargegrid.api.models import (
    ChargePointDetail,
    ChargePointOut,
    ChargingProfileOut,
    ConfigurationEntry,
    ConnectorOut,
    ReservationOut,
    SessionSummary,
    connector_out,
)
from chargegrid.api.pagination import Limit, Offset, Page, Refusal, count, iso, visible, write
from chargegrid.api.routes.commands import OperationOut
from chargegrid.api.routes.sessions import energy_so_far, session_summary
from chargegrid.commands.service import CommandError
from chargegrid.store import charge_points as cp_store
from chargegrid.store.tables import (
    charge_points,
    charging_profiles,
    configuration,
    connectors,
    reservations,
    transactions,
)

router = APIRouter(prefix="/api/v1", tags=["charge points"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such charge point, or not visible to this user"}
}

cp = charge_points.c

CHARGING = exists().where(connectors.c.charge_point_id == cp.id, connectors.c.status == "Charging")
AVAILABLE = and_(cp.connected.is_(True), cp.status == "Available")


async def current_sessions(
    connection: AsyncConnection, charge_point_ids: list[int]
) -> dict[int, SessionSummary]:
    """Each charge point's most recently started open session."""
    if not charge_point_ids:
        return {}
    t = transactions.c
    rows = list(
        (
            await connection.execute(
                select(transactions)
                .where(t.charge_point_id.in_(charge_point_ids), t.stopped_at.is_(None))
                .order_by(t.started_at.desc(), t.id.desc())
            )
        ).mappings()
    )
    latest: dict[int, RowMapping] = {}
    for row in rows:
        latest.setdefault(int(row["charge_point_id"]), row)
    energy = await energy_so_far(connection, ((r["id"], r["meter_start"]) for r in latest.values()))
    return {cp_id: session_summary(row, energy) for cp_id, row in latest.items()}


def _summary_fields(row: RowMapping, current: SessionSummary | None, live: bool) -> dict[str, Any]:
    return {
        "identity": row["identity"],
        "connected": bool(row["connected"]) or live,
        "status": row["status"],
        "error_code": row["error_code"],
        "registration_status": row["registration_status"],
        "security_profile": row["security_profile"],
        "vendor": row["vendor"],
        "model": row["model"],
        "firmware_version": row["firmware_version"],
        "last_seen_at": iso(row["last_seen_at"]),
        "last_heartbeat_at": iso(row["last_heartbeat_at"]),
        "current_session": current,
    }


async def charge_point_detail(node: Any, identity: str) -> ChargePointDetail:
    async with node.engine.connect() as connection:
        row = (
            (await connection.execute(select(charge_points).where(cp.identity == identity)))
            .mappings()
            .first()
        )
        if row is None:
            raise HTTPException(404, f"no charge point {identity!r}")
        connector_rows = (
            await connection.execute(
                select(connectors)
                .where(connectors.c.charge_point_id == row["id"])
                .order_by(connectors.c.connector_id)
            )
        ).mappings()
        current = await current_sessions(connection, [row["id"]])
    live = identity in node.registry
    return ChargePointDetail(
        **_summary_fields(row, current.get(row["id"]), live),
        live=live,
        has_auth_key=row["auth_key_hash"] is not None,
        serial_number=row["serial_number"],
        charge_box_serial_number=row["charge_box_serial_number"],
        iccid=row["iccid"],
        imsi=row["imsi"],
        meter_type=row["meter_type"],
        meter_serial_number=row["meter_serial_number"],
        local_list_version=row["local_list_version"],
        firmware_status=row["firmware_status"],
        firmware_status_at=iso(row["firmware_status_at"]),
        diagnostics_status=row["diagnostics_status"],
        diagnostics_status_at=iso(row["diagnostics_status_at"]),
        last_boot_at=iso(row["last_boot_at"]),
        connected_at=iso(row["connected_at"]),
        disconnected_at=iso(row["disconnected_at"]),
        created_at=iso(row["created_at"]) or "",
        updated_at=iso(row["updated_at"]) or "",
        connectors=[connector_out(c) for c in connector_rows],
    )


@router.get("/charge-points", response_model=Page[ChargePointOut])
async def list_charge_points(
    node: Node,
    principal: Viewer,
    connected: Annotated[bool | None, Query(description="Connected (or not).")] = None,
    available: Annotated[
        bool | None, Query(description="Connected and its status is Available (or not).")
    ] = None,
    charging: Annotated[
        bool | None, Query(description="Some connector is Charging (or none is).")
    ] = None,
    status: Annotated[
        str | None, Query(description="Status of connector 0, e.g. Available, Faulted.")
    ] = None,
    q: Annotated[
        str | None,
        Query(max_length=255, description="Case-insensitive substring of identity, vendor, model."),
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[ChargePointOut]:
    """Charge points ordered by identity, filtered like the reference's scopes."""
    query = select(charge_points).where(visible(principal, cp.id))
    if connected is not None:
        query = query.where(cp.connected.is_(connected))
    if available is not None:
        query = query.where(AVAILABLE if available else ~AVAILABLE)
    if charging is not None:
        query = query.where(CHARGING if charging else ~CHARGING)
    if status is not None:
        query = query.where(cp.status == status)
    if q:
        needle = q.lower()
        query = query.where(
            or_(
                *(
                    func.lower(column).contains(needle, autoescape=True)
                    for column in (cp.identity, cp.vendor, cp.model)
                )
            )
        )
    async with node.engine.connect() as connection:
        total = await count(connection, query)
        rows = list(
            (
                await connection.execute(query.order_by(cp.identity).limit(limit).offset(offset))
            ).mappings()
        )
        current = await current_sessions(connection, [r["id"] for r in rows])
    items = [
        ChargePointOut(**_summary_fields(r, current.get(r["id"]), r["identity"] in node.registry))
        for r in rows
    ]
    return Page[ChargePointOut](items=items, total=total)


@router.get("/charge-points/{identity}", response_model=ChargePointDetail, responses=NOT_FOUND)
async def get_charge_point(identity: str, node: Node, principal: Viewer) -> ChargePointDetail:
    """Everything known about a charge point: boot data, connectors, current session."""
    await visible_charge_point_id(node, principal, identity)
    return await charge_point_detail(node, identity)


class ChargePointCreate(BaseModel):
    identity: str = Field(description="The identity in its OCPP URL; 1-255 characters, no '/'.")
    auth_key: str | None = Field(
        default=None, description="AuthorizationKey (16-40 characters); needed for profiles 1, 2."
    )
    security_profile: int = Field(
        default=0,
        description="0, 1 (Basic auth), 2 (TLS + Basic) or 3 (TLS with a client certificate).",
    )
    registration_status: str = Field(
        default="Accepted",
        description="How its BootNotification is answered: "
        + ", ".join(admin.REGISTRATION_STATUSES),
    )


class ChargePointUpdate(BaseModel):
    registration_status: str | None = None
    security_profile: int | None = None
    auth_key: str | None = Field(
        default=None,
        description="Set the stored key directly (onboarding). For a connected charge point "
        "use `rotate-auth-key`, which switches only once it accepted the new key.",
    )


@router.post(
    "/charge-points",
    response_model=ChargePointDetail,
    status_code=201,
    responses={409: {"description": "it exists"}, 422: {"description": "invalid values"}},
)
async def create_charge_point(
    body: ChargePointCreate, node: Node, principal: Admin
) -> ChargePointDetail:
    """Provision a charge point (admin)."""

    async def unit(connection: AsyncConnection) -> None:
        if await cp_store.get_auth(connection, body.identity) is not None:
            raise Refusal(409, f"charge point {body.identity!r} already exists")
        try:
            await admin.add_charge_point(
                connection,
                body.identity,
                now=node.clock.now(),
                auth_key=body.auth_key,
                security_profile=body.security_profile,
                registration_status=body.registration_status,
                hash_iterations=node.settings.auth_key_hash_iterations,
            )
        except admin.AdminError as error:
            raise Refusal(422, str(error)) from None

    await write(node, unit)
    return await charge_point_detail(node, body.identity)


@router.patch(
    "/charge-points/{identity}",
    response_model=ChargePointDetail,
    responses={**NOT_FOUND, 422: {"description": "invalid values"}},
)
async def update_charge_point(
    identity: str, body: ChargePointUpdate, node: Node, principal: Admin
) -> ChargePointDetail:
    """Change registration status, security profile or the stored auth key (admin)."""
    await visible_charge_point_id(node, principal, identity)

    async def unit(connection: AsyncConnection) -> None:
        try:
            await admin.update_charge_point(
                connection,
                identity,
                now=node.clock.now(),
                auth_key=body.auth_key,
                security_profile=body.security_profile,
                registration_status=body.registration_status,
                hash_iterations=node.settings.auth_key_hash_iterations,
            )
        except admin.AdminError as error:
            raise Refusal(422, str(error)) from None

    await write(node, unit)
    node.admission.forget(identity)
    return await charge_point_detail(node, identity)


@router.delete("/charge-points/{identity}", status_code=204, responses=NOT_FOUND)
async def delete_charge_point(identity: str, node: Node, principal: Admin) -> Response:
    """Remove a charge point and everything stored about it; a live socket is closed (admin)."""
    await visible_charge_point_id(node, principal, identity)
    await write(node, lambda connection: cp_store.remove(connection, identity))
    node.admission.forget(identity)
    connection_ = node.registry.get(identity)
    if connection_ is not None:
        await connection_.close(1000, "removed")
    return Response(status_code=204)


class RotateKey(BaseModel):
    auth_key: str = Field(description="The new AuthorizationKey, 16-40 characters.")


@router.post(
    "/charge-points/{identity}/rotate-auth-key",
    response_model=OperationOut,
    responses={
        **NOT_FOUND,
        409: {"description": "not connected, or not allowed in its registration state"},
        422: {"description": "the key is not acceptable"},
        504: {"description": "no answer in time; the operation stays recorded"},
    },
)
async def rotate_auth_key(
    identity: str, body: RotateKey, node: Node, principal: Admin
) -> JSONResponse:
    """Send ChangeConfiguration AuthorizationKey and wait; the stored key switches only if the
    charge point answers Accepted (CONFORMANCE H8). The operation is returned either way."""
    await visible_charge_point_id(node, principal, identity)
    async with node.engine.connect() as connection:
        profile = await connection.scalar(
            select(cp.security_profile).where(cp.identity == identity)
        )
    try:
        admin.check_auth_key(body.auth_key, int(profile or 0), has_key=True)
    except admin.AdminError as error:
        raise HTTPException(422, str(error)) from None
    try:
        operation = await node.commands.perform_now(
            identity,
            "ChangeConfiguration",
            {"key": "AuthorizationKey", "value": body.auth_key},
            requested_by=principal.user.username,
        )
    except CommandError as error:
        raise HTTPException(error.status, error.message) from None
    return JSONResponse(
        operation.as_dict(), status_code=504 if operation.status == "timeout" else 200
    )


async def _rows(node: Any, query: Any) -> list[RowMapping]:
    async with node.engine.connect() as connection:
        return list((await connection.execute(query)).mappings())


@router.get(
    "/charge-points/{identity}/connectors",
    response_model=list[ConnectorOut],
    responses=NOT_FOUND,
)
async def list_connectors(identity: str, node: Node, principal: Viewer) -> list[ConnectorOut]:
    """Connector status as last reported (connector 0 is the charge point itself)."""
    cp_id = await visible_charge_point_id(node, principal, identity)
    rows = await _rows(
        node,
        select(connectors)
        .where(connectors.c.charge_point_id == cp_id)
        .order_by(connectors.c.connector_id),
    )
    return [connector_out(r) for r in rows]


@router.get(
    "/charge-points/{identity}/configuration",
    response_model=list[ConfigurationEntry],
    responses=NOT_FOUND,
)
async def get_configuration(
    identity: str, node: Node, principal: Viewer
) -> list[ConfigurationEntry]:
    """The known configuration: what GetConfiguration returned and ChangeConfiguration set.
    Secret keys (AuthorizationKey) are never kept."""
    cp_id = await visible_charge_point_id(node, principal, identity)
    c = configuration.c
    rows = await _rows(
        node, select(configuration).where(c.charge_point_id == cp_id).order_by(c.key)
    )
    return [
        ConfigurationEntry(
            key=r["key"],
            value=r["value"],
            readonly=r["readonly"],
            updated_at=iso(r["updated_at"]) or "",
        )
        for r in rows
    ]


@router.get(
    "/charge-points/{identity}/reservations",
    response_model=list[ReservationOut],
    responses=NOT_FOUND,
)
async def list_reservations(
    identity: str,
    node: Node,
    principal: Viewer,
    status: Annotated[str | None, Query(description="e.g. Accepted, cancelled")] = None,
) -> list[ReservationOut]:
    """Reservations requested through ReserveNow, newest first."""
    cp_id = await visible_charge_point_id(node, principal, identity)
    r_ = reservations.c
    query = select(reservations).where(r_.charge_point_id == cp_id)
    if status is not None:
        query = query.where(r_.status == status)
    rows = await _rows(node, query.order_by(r_.created_at.desc(), r_.id.desc()))
    return [
        ReservationOut(
            id=r["id"],
            connector_id=r["connector_id"],
            id_tag=r["id_tag"],
            parent_id_tag=r["parent_id_tag"],
            expiry_date=iso(r["expiry_date"]) or "",
            status=r["status"],
            operation_id=r["operation_id"],
            created_at=iso(r["created_at"]) or "",
            updated_at=iso(r["updated_at"]) or "",
        )
        for r in rows
    ]


@router.get(
    "/charge-points/{identity}/charging-profiles",
    response_model=list[ChargingProfileOut],
    responses=NOT_FOUND,
)
async def list_charging_profiles(
    identity: str,
    node: Node,
    principal: Viewer,
    status: Annotated[str | None, Query(description="installed | cleared")] = None,
) -> list[ChargingProfileOut]:
    """Charging profiles installed through SetChargingProfile (and cleared ones)."""
    cp_id = await visible_charge_point_id(node, principal, identity)
    p = charging_profiles.c
    query = select(charging_profiles).where(p.charge_point_id == cp_id)
    if status is not None:
        query = query.where(p.status == status)
    rows = await _rows(node, query.order_by(p.connector_id, p.stack_level.desc(), p.id))
    return [
        ChargingProfileOut(
            charging_profile_id=r["charging_profile_id"],
            connector_id=r["connector_id"],
            stack_level=r["stack_level"],
            purpose=r["purpose"],
            profile=r["profile"],
            status=r["status"],
            operation_id=r["operation_id"],
            created_at=iso(r["created_at"]) or "",
            updated_at=iso(r["updated_at"]) or "",
        )
        for r in rows
    ]
