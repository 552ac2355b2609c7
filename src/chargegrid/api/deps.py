"""Request dependencies: the node, the authenticated principal, role and charge point checks.

Every ``/api/v1`` route but token issuance needs ``Authorization: Bearer <token>`` (401 without).
Roles are ordered viewer < operator < admin (403 below the route's role). A user limited to groups
of charge points gets 404 for any other charge point, as if it did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from chargegrid.store import users as user_store
from chargegrid.store.tables import charge_points

if TYPE_CHECKING:
    from chargegrid.app import ChargeGrid

_bearer = HTTPBearer(auto_error=False, description="An API token from `POST /api/v1/auth/token`")


def get_node(request: Request) -> ChargeGrid:
    node: ChargeGrid = request.app.state.node
    return node


# Typed as Any for FastAPI, which resolves annotations at runtime and would otherwise need
# chargegrid.app (which imports the routers) while the routers are being imported.
Node = Annotated[Any, Depends(get_node)]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the user and the charge points it may see (None: all)."""

    user: user_store.User
    visible: frozenset[int] | None

    def can_see(self, charge_point_id: int) -> bool:
        return self.visible is None or charge_point_id in self.visible

    def at_least(self, role: user_store.Role) -> bool:
        return self.user.role.rank >= role.rank


async def principal_for_token(node: Any, token: str) -> Principal | None:
    """The principal a bearer token stands for, or None if it is unknown, expired or disabled."""
    async with node.engine.connect() as connection:
        user = await user_store.user_for_token(connection, token, node.clock.now())
        if user is None:
            return None
        visible = await user_store.visible_charge_point_ids(connection, user)
    return Principal(user, visible)


def token_from(headers: Any, cookies: Any, query: Any) -> str | None:
    """A bearer token from the Authorization header, the dashboard's cookie, or ``?token=``
    (browsers cannot set headers on EventSource and WebSocket)."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return str(credentials.strip())
    token = cookies.get("chargegrid_token") or query.get("token")
    return str(token) if token else None


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    node = get_node(request)
    token = credentials.credentials if credentials is not None else None
    if token is None:
        token = request.cookies.get("chargegrid_token")  # the dashboard's session
    if token is None and "text/event-stream" in request.headers.get("accept", ""):
        # EventSource cannot send headers; only event streams take the token from the URL.
        token = request.query_params.get("token")
    if not token:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    principal = await principal_for_token(node, token)
    if principal is None:
        raise HTTPException(401, "invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
    return principal


def require(role: user_store.Role) -> object:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.at_least(role):
            raise HTTPException(403, f"this needs the {role.value} role or higher")
        return principal

    return Depends(check)


Viewer = Annotated[Principal, require(user_store.Role.VIEWER)]
Operator = Annotated[Principal, require(user_store.Role.OPERATOR)]
Admin = Annotated[Principal, require(user_store.Role.ADMIN)]


async def visible_charge_point_id(node: ChargeGrid, principal: Principal, identity: str) -> int:
    """The id of charge point ``identity``, or 404 if it does not exist or is not visible."""
    async with node.engine.connect() as connection:
        charge_point_id = await connection.scalar(
            select(charge_points.c.id).where(charge_points.c.identity == identity)
        )
    if charge_point_id is None or not principal.can_see(int(charge_point_id)):
        raise HTTPException(404, f"no charge point {identity!r}")
    return int(charge_point_id)
