"""Remote control: every CSMS-initiated OCPP 1.6 action, friendly shortcuts, operation records."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from chargegrid.api.deps import Node, Operator, Viewer, visible_charge_point_id
from chargegrid.commands.catalog import ACTION_BY_SLUG
from chargegrid.commands.service import CommandError, Operation
from chargegrid.store.tables import connectors, transactions

router = APIRouter(prefix="/api/v1", tags=["commands"])

# Ids and connector numbers are 32-bit integers in the database (and in practice in OCPP); a
# larger number is a 422, not a database overflow.
INT32_MAX = 2**31 - 1


class OperationOut(BaseModel):
    """A CSMS-initiated operation: pending -> sent -> accepted | rejected | error | timeout."""

    id: int
    charge_point: str
    action: str
    status: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    error_code: str | None
    error_description: str | None
    requested_by: str | None
    created_at: str
    sent_at: str | None
    completed_at: str | None


def _wants_wait(wait: bool, prefer: str | None) -> bool:
    return wait or (prefer is not None and "wait" in prefer.lower())


async def _perform(
    node: Any,
    principal: Any,
    identity: str,
    action: str,
    payload: dict[str, Any],
    wait: bool,
) -> JSONResponse:
    await visible_charge_point_id(node, principal, identity)
    service = node.commands
    try:
        if wait:
            operation: Operation = await service.perform_now(
                identity, action, payload, requested_by=principal.user.username
            )
        else:
            operation = await service.perform_later(
                identity, action, payload, requested_by=principal.user.username
            )
    except CommandError as error:
        raise HTTPException(error.status, error.message) from None
    if not wait:
        return JSONResponse(operation.as_dict(), status_code=202)
    if operation.status == "timeout":
        # The operation stays recorded; its id lets the caller look again later.
        return JSONResponse(operation.as_dict(), status_code=504)
    return JSONResponse(operation.as_dict(), status_code=200)


WaitQuery = Annotated[
    bool, Query(description="Wait for the charge point's answer (504 on timeout).")
]
PreferHeader = Annotated[
    str | None, Header(description="`Prefer: wait` does what `?wait=true` does.")
]


@router.post(
    "/charge-points/{identity}/commands/{action}",
    response_model=OperationOut,
    status_code=202,
    responses={
        200: {"description": "answered (with wait)"},
        404: {"description": "unknown charge point or action"},
        409: {"description": "not connected, or not allowed in its registration state"},
        422: {"description": "the payload fails the action's OCPP schema"},
        504: {"description": "no answer in time (with wait); the operation stays recorded"},
    },
)
async def command(
    identity: str,
    action: str,
    node: Node,
    principal: Operator,
    payload: Annotated[dict[str, Any] | None, Body()] = None,
    wait: WaitQuery = False,
    prefer: PreferHeader = None,
) -> JSONResponse:
    """Send any CSMS-initiated OCPP 1.6 action; ``action`` in kebab-case (``reset``,
    ``remote-start-transaction``, ``change-configuration``, ...), the body is the OCPP payload."""
    ocpp_action = ACTION_BY_SLUG.get(action)
    if ocpp_action is None:
        raise HTTPException(
            404, f"unknown action {action!r}; one of: {', '.join(sorted(ACTION_BY_SLUG))}"
        )
    return await _perform(
        node, principal, identity, ocpp_action, payload or {}, _wants_wait(wait, prefer)
    )


class StartRequest(BaseModel):
    connector_id: int = Field(gt=0, le=INT32_MAX)
    id_tag: str = Field(min_length=1, max_length=20)


@router.post("/charge-points/{identity}/start", response_model=OperationOut, status_code=202)
async def start(
    identity: str,
    body: StartRequest,
    node: Node,
    principal: Operator,
    wait: WaitQuery = False,
    prefer: PreferHeader = None,
) -> JSONResponse:
    """Remote start on a connector with an id tag, only when that connector is available."""
    charge_point_id = await visible_charge_point_id(node, principal, identity)
    async with node.engine.connect() as connection:
        status = await connection.scalar(
            select(connectors.c.status).where(
                connectors.c.charge_point_id == charge_point_id,
                connectors.c.connector_id == body.connector_id,
            )
        )
    if status not in ("Available", "Preparing"):
        raise HTTPException(
            409,
            f"connector {body.connector_id} of {identity} is not available"
            f" (status {status or 'unknown'})",
        )
    payload = {"connectorId": body.connector_id, "idTag": body.id_tag}
    return await _perform(
        node, principal, identity, "RemoteStartTransaction", payload, _wants_wait(wait, prefer)
    )


class StopRequest(BaseModel):
    session_id: int | None = Field(
        default=None,
        ge=1,
        le=INT32_MAX,
        description="Defaults to the charge point's current session.",
    )


@router.post("/charge-points/{identity}/stop", response_model=OperationOut, status_code=202)
async def stop(
    identity: str,
    node: Node,
    principal: Operator,
    body: StopRequest | None = None,
    wait: WaitQuery = False,
    prefer: PreferHeader = None,
) -> JSONResponse:
    """Remote stop of a session, only when it is active."""
    charge_point_id = await visible_charge_point_id(node, principal, identity)
    t = transactions.c
    query = select(t.id).where(t.charge_point_id == charge_point_id, t.stopped_at.is_(None))
    if body is not None and body.session_id is not None:
        query = query.where(t.id == body.session_id)
    async with node.engine.connect() as connection:
        session_id = await connection.scalar(query.order_by(t.started_at.desc()).limit(1))
    if session_id is None:
        raise HTTPException(409, f"{identity} has no such active session")
    return await _perform(
        node,
        principal,
        identity,
        "RemoteStopTransaction",
        {"transactionId": int(session_id)},
        _wants_wait(wait, prefer),
    )


class ResetRequest(BaseModel):
    type: str = Field(default="Soft", pattern="^(Hard|Soft)$")


@router.post("/charge-points/{identity}/reset", response_model=OperationOut, status_code=202)
async def reset(
    identity: str,
    node: Node,
    principal: Operator,
    body: ResetRequest | None = None,
    wait: WaitQuery = False,
    prefer: PreferHeader = None,
) -> JSONResponse:
    payload = {"type": (body or ResetRequest()).type}
    return await _perform(node, principal, identity, "Reset", payload, _wants_wait(wait, prefer))


class UnlockRequest(BaseModel):
    connector_id: int = Field(gt=0, le=INT32_MAX)


@router.post("/charge-points/{identity}/unlock", response_model=OperationOut, status_code=202)
async def unlock(
    identity: str,
    body: UnlockRequest,
    node: Node,
    principal: Operator,
    wait: WaitQuery = False,
    prefer: PreferHeader = None,
) -> JSONResponse:
    payload = {"connectorId": body.connector_id}
    return await _perform(
        node, principal, identity, "UnlockConnector", payload, _wants_wait(wait, prefer)
    )


class AvailabilityRequest(BaseModel):
    connector_id: int = Field(
        default=0, ge=0, le=INT32_MAX, description="0: the whole charge point"
    )
    type: str = Field(pattern="^(Operative|Inoperative)$")


@router.post("/charge-points/{identity}/availability", response_model=OperationOut, status_code=202)
async def availability(
    identity: str,
    body: AvailabilityRequest,
    node: Node,
    principal: Operator,
    wait: WaitQuery = False,
    prefer: PreferHeader = None,
) -> JSONResponse:
    payload = {"connectorId": body.connector_id, "type": body.type}
    return await _perform(
        node, principal, identity, "ChangeAvailability", payload, _wants_wait(wait, prefer)
    )


@router.get("/operations/{operation_id}", response_model=OperationOut, tags=["operations"])
async def get_operation(
    operation_id: Annotated[int, Path(ge=1, le=INT32_MAX)], node: Node, principal: Viewer
) -> dict[str, Any]:
    operation = await node.commands.get(operation_id)
    if operation is None:
        raise HTTPException(404, f"no operation {operation_id}")
    await visible_charge_point_id(node, principal, operation.charge_point)
    result: dict[str, Any] = operation.as_dict()
    return result


@router.get(
    "/charge-points/{identity}/operations",
    response_model=list[OperationOut],
    tags=["operations"],
)
async def operation_history(
    identity: str,
    node: Node,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    await visible_charge_point_id(node, principal, identity)
    return [
        op.as_dict() for op in await node.commands.history(identity, limit=limit, offset=offset)
    ]
