"""User management (admin only): users, their API tokens, and groups of charge points.

Passwords and tokens are stored hashed; a password is never returned, a token only once, when it
is issued. A user with ``all_charge_points`` false sees only the charge points of its groups.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar, cast

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.api.deps import Admin, Node
from chargegrid.clock import isoformat_z
from chargegrid.store import groups as group_store
from chargegrid.store import users as user_store
from chargegrid.store.tables import charge_points
from chargegrid.store.tables import users as users_table

router = APIRouter(prefix="/api/v1", tags=["users"])

T = TypeVar("T")

USERNAME_PATTERN = r"^[A-Za-z0-9_.@+-]{1,64}$"
GROUP_PATTERN = r"^[^/\x00-\x1f]{1,64}$"

Username = Annotated[str, Path(description="The user's name.")]
GroupName = Annotated[str, Path(description="The group's name.")]


class UserOut(BaseModel):
    username: str
    role: user_store.Role
    all_charge_points: bool = Field(
        description="True: sees every charge point; false: only those of its groups."
    )
    disabled: bool
    has_password: bool = Field(description="False for a token-only user, who cannot log in.")
    groups: list[str]


class UserCreate(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN)
    role: user_store.Role
    password: str | None = Field(
        default=None,
        min_length=8,
        max_length=1024,
        description="At least 8 characters; omit for a token-only user.",
    )
    all_charge_points: bool = True
    groups: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Existing groups to grant (see all_charge_points).",
    )


class UserUpdate(BaseModel):
    role: user_store.Role | None = None
    password: str | None = Field(
        default=None,
        min_length=8,
        max_length=1024,
        description="A new password (at least 8 characters); null makes the user token-only.",
    )
    disabled: bool | None = None
    all_charge_points: bool | None = None


class TokenCreate(BaseModel):
    name: str = Field(default="api", min_length=1, max_length=64)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class TokenOut(BaseModel):
    token: str = Field(description="Shown once; only its hash is stored.")
    token_type: str = "bearer"
    name: str
    username: str
    expires_at: str | None


class Revoked(BaseModel):
    revoked: int


class GroupCreate(BaseModel):
    name: str = Field(pattern=GROUP_PATTERN)


class GroupOut(BaseModel):
    name: str
    charge_points: list[str]
    users: list[str]


async def _hash(password: str | None) -> str | None:
    """Argon2 takes tens of milliseconds: off the event loop, and outside the writer's batch."""
    return await asyncio.to_thread(user_store.hash_password, password) if password else None


async def _user_out(connection: AsyncConnection, user: user_store.User) -> UserOut:
    password_hash = await connection.scalar(
        select(users_table.c.password_hash).where(users_table.c.id == user.id)
    )
    return UserOut(
        username=user.username,
        role=user.role,
        all_charge_points=user.all_charge_points,
        disabled=user.disabled,
        has_password=password_hash is not None,
        groups=await group_store.user_group_names(connection, user.id),
    )


class _Refusal(Exception):
    """Raised inside a write unit; becomes an HTTP error once the unit's savepoint is undone."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def _write(node: Any, unit: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``unit`` through the node's single writer.

    Writes go through the group committer rather than a transaction of their own: on SQLite a
    transaction that reads and then writes fails at once with "database is locked" when the
    writer committed in between, and the writer is always busy with charge point traffic.
    """

    async def guarded(connection: AsyncConnection) -> T | _Refusal:
        try:
            async with connection.begin_nested():
                return await unit(connection)
        except _Refusal as refusal:  # rolled back; not a failure worth a stack trace
            return refusal

    result = await node.writer.run(guarded)
    if isinstance(result, _Refusal):
        raise HTTPException(result.status, result.detail)
    return cast(T, result)


async def _read(node: Any, unit: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    async with node.engine.connect() as connection:
        try:
            return await unit(connection)
        except _Refusal as refusal:
            raise HTTPException(refusal.status, refusal.detail) from None


async def _existing_user(connection: AsyncConnection, username: str) -> user_store.User:
    user = await user_store.get_user(connection, username)
    if user is None:
        raise _Refusal(404, f"no user {username!r}")
    return user


async def _existing_group(connection: AsyncConnection, name: str) -> int:
    group = await user_store.group_id(connection, name)
    if group is None:
        raise _Refusal(404, f"no group {name!r}")
    return group


async def _charge_point_id(connection: AsyncConnection, identity: str) -> int:
    value = await connection.scalar(
        select(charge_points.c.id).where(charge_points.c.identity == identity)
    )
    if value is None:
        raise _Refusal(404, f"no charge point {identity!r}")
    return int(value)


# --- users ---------------------------------------------------------------------------------------


@router.get("/users", response_model=list[UserOut])
async def list_users(node: Node, _: Admin) -> list[UserOut]:
    async def unit(c: AsyncConnection) -> list[UserOut]:
        return [await _user_out(c, user) for user in await user_store.list_users(c)]

    return await _read(node, unit)


@router.post("/users", response_model=UserOut, status_code=201, responses={409: {}, 404: {}})
async def create_user(body: UserCreate, node: Node, _: Admin) -> UserOut:
    """Add a user. Without a password it is token-only: it cannot log in, only use tokens."""
    password_hash = await _hash(body.password)

    async def unit(c: AsyncConnection) -> UserOut:
        group_ids = [await _existing_group(c, name) for name in body.groups]
        try:
            user_id = await user_store.add_user(
                c,
                body.username,
                role=body.role,
                now=node.clock.now(),
                all_charge_points=body.all_charge_points,
            )
        except user_store.UserExists:
            raise _Refusal(409, f"user {body.username!r} already exists") from None
        if password_hash is not None:
            await group_store.set_password_hash(c, user_id, password_hash)
        for group in group_ids:
            await user_store.grant_group(c, user_id, group)
        user = await user_store.get_user_by_id(c, user_id)
        assert user is not None
        return await _user_out(c, user)

    return await _write(node, unit)


@router.get("/users/{username}", response_model=UserOut, responses={404: {}})
async def get_user(username: Username, node: Node, _: Admin) -> UserOut:
    async def unit(c: AsyncConnection) -> UserOut:
        return await _user_out(c, await _existing_user(c, username))

    return await _read(node, unit)


@router.patch("/users/{username}", response_model=UserOut, responses={404: {}, 409: {}})
async def update_user(
    username: Username, body: UserUpdate, node: Node, principal: Admin
) -> UserOut:
    """Change role, password (null: token-only), disabled, or all_charge_points."""
    changes: dict[str, Any] = {
        field: getattr(body, field)
        for field in body.model_fields_set
        if field != "password" and getattr(body, field) is not None
    }
    set_password = "password" in body.model_fields_set
    password_hash = await _hash(body.password)

    async def unit(c: AsyncConnection) -> UserOut:
        user = await _existing_user(c, username)
        if user.id == principal.user.id and (
            changes.get("disabled") or changes.get("role", user.role) != user_store.Role.ADMIN
        ):
            raise _Refusal(409, "you cannot disable yourself or give up your admin role")
        if changes:
            await user_store.update_user(c, user.id, now=node.clock.now(), **changes)
        if set_password:
            await group_store.set_password_hash(c, user.id, password_hash)
        updated = await user_store.get_user_by_id(c, user.id)
        assert updated is not None
        return await _user_out(c, updated)

    return await _write(node, unit)


@router.delete("/users/{username}", status_code=204, responses={404: {}, 409: {}})
async def delete_user(username: Username, node: Node, principal: Admin) -> Response:
    """Remove a user with its tokens."""

    async def unit(c: AsyncConnection) -> None:
        user = await _existing_user(c, username)
        if user.id == principal.user.id:
            raise _Refusal(409, "you cannot remove yourself")
        await user_store.remove_user(c, username)

    await _write(node, unit)
    return Response(status_code=204)


@router.post(
    "/users/{username}/tokens", response_model=TokenOut, status_code=201, responses={404: {}}
)
async def issue_token(
    username: Username, node: Node, _: Admin, body: TokenCreate | None = None
) -> TokenOut:
    """A new API token for the user; it is shown in this answer and never again."""
    request = body or TokenCreate()
    now = node.clock.now()
    expires = now + timedelta(days=request.expires_in_days) if request.expires_in_days else None

    async def unit(c: AsyncConnection) -> str:
        user = await _existing_user(c, username)
        return await user_store.issue_token(
            c, user.id, name=request.name, now=now, expires_at=expires
        )

    token = await _write(node, unit)
    return TokenOut(
        token=token,
        name=request.name,
        username=username,
        expires_at=isoformat_z(expires) if expires else None,
    )


@router.delete("/users/{username}/tokens", response_model=Revoked, responses={404: {}})
async def revoke_tokens(username: Username, node: Node, _: Admin) -> Revoked:
    """Revoke every API token of the user."""

    async def unit(c: AsyncConnection) -> int:
        return await group_store.revoke_tokens(c, (await _existing_user(c, username)).id)

    return Revoked(revoked=await _write(node, unit))


# --- groups --------------------------------------------------------------------------------------


def _group_out(group: group_store.Group) -> GroupOut:
    return GroupOut(
        name=group.name, charge_points=list(group.charge_points), users=list(group.users)
    )


@router.get("/groups", response_model=list[GroupOut], tags=["groups"])
async def list_groups(node: Node, _: Admin) -> list[GroupOut]:
    async def unit(c: AsyncConnection) -> list[GroupOut]:
        return [_group_out(g) for g in await group_store.list_groups(c)]

    return await _read(node, unit)


@router.post(
    "/groups", response_model=GroupOut, status_code=201, tags=["groups"], responses={409: {}}
)
async def create_group(body: GroupCreate, node: Node, _: Admin) -> GroupOut:
    async def unit(c: AsyncConnection) -> None:
        if await user_store.group_id(c, body.name) is not None:
            raise _Refusal(409, f"group {body.name!r} already exists")
        await user_store.add_group(c, body.name, node.clock.now())

    await _write(node, unit)
    return GroupOut(name=body.name, charge_points=[], users=[])


@router.get("/groups/{name}", response_model=GroupOut, tags=["groups"], responses={404: {}})
async def get_group(name: GroupName, node: Node, _: Admin) -> GroupOut:
    async def unit(c: AsyncConnection) -> GroupOut:
        group = await group_store.get_group(c, name)
        if group is None:
            raise _Refusal(404, f"no group {name!r}")
        return _group_out(group)

    return await _read(node, unit)


@router.delete("/groups/{name}", status_code=204, tags=["groups"], responses={404: {}})
async def delete_group(name: GroupName, node: Node, _: Admin) -> Response:
    """Remove a group; its users lose what it gave them to see."""

    async def unit(c: AsyncConnection) -> None:
        await group_store.remove_group(c, await _existing_group(c, name))

    await _write(node, unit)
    return Response(status_code=204)


@router.put(
    "/groups/{name}/charge-points/{identity}",
    status_code=204,
    tags=["groups"],
    responses={404: {}},
)
async def add_group_charge_point(name: GroupName, identity: str, node: Node, _: Admin) -> Response:
    async def unit(c: AsyncConnection) -> None:
        group = await _existing_group(c, name)
        await _charge_point_id(c, identity)
        await user_store.add_to_group(c, group, identity)

    await _write(node, unit)
    return Response(status_code=204)


@router.delete(
    "/groups/{name}/charge-points/{identity}",
    status_code=204,
    tags=["groups"],
    responses={404: {}},
)
async def remove_group_charge_point(
    name: GroupName, identity: str, node: Node, _: Admin
) -> Response:
    async def unit(c: AsyncConnection) -> None:
        group = await _existing_group(c, name)
        await group_store.remove_from_group(c, group, await _charge_point_id(c, identity))

    await _write(node, unit)
    return Response(status_code=204)


@router.put(
    "/groups/{name}/users/{username}", status_code=204, tags=["groups"], responses={404: {}}
)
async def grant_group(name: GroupName, username: Username, node: Node, _: Admin) -> Response:
    """Let the user see the group's charge points (only matters without all_charge_points)."""

    async def unit(c: AsyncConnection) -> None:
        group = await _existing_group(c, name)
        await user_store.grant_group(c, (await _existing_user(c, username)).id, group)

    await _write(node, unit)
    return Response(status_code=204)


@router.delete(
    "/groups/{name}/users/{username}", status_code=204, tags=["groups"], responses={404: {}}
)
async def revoke_group(name: GroupName, username: Username, node: Node, _: Admin) -> Response:
    async def unit(c: AsyncConnection) -> None:
        group = await _existing_group(c, name)
        await group_store.revoke_group(c, (await _existing_user(c, username)).id, group)

    await _write(node, unit)
    return Response(status_code=204)
