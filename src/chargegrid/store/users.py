"""Operators: users, API tokens, and groups of charge points that limit what a user sees."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.tables import (
    api_tokens,
    charge_points,
    group_charge_points,
    groups,
    user_groups,
    users,
)

_hasher = PasswordHasher()


class Role(StrEnum):
    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # also sends commands
    ADMIN = "admin"  # also manages charge points, id tags, users

    @property
    def rank(self) -> int:
        return {"viewer": 0, "operator": 1, "admin": 2}[self.value]


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: Role
    all_charge_points: bool
    disabled: bool


class UserExists(Exception):
    pass


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: object) -> User:
    mapping = row._mapping  # type: ignore[attr-defined]
    return User(
        id=mapping["id"],
        username=mapping["username"],
        role=Role(mapping["role"]),
        all_charge_points=bool(mapping["all_charge_points"]),
        disabled=bool(mapping["disabled"]),
    )


_USER_COLUMNS = (
    users.c.id,
    users.c.username,
    users.c.role,
    users.c.all_charge_points,
    users.c.disabled,
)


async def add_user(
    connection: AsyncConnection,
    username: str,
    *,
    role: Role,
    now: datetime,
    password: str | None = None,
    all_charge_points: bool = True,
) -> int:
    if await get_user(connection, username) is not None:
        raise UserExists(username)
    result = await connection.execute(
        insert(users)
        .values(
            username=username,
            password_hash=hash_password(password) if password else None,
            role=role.value,
            all_charge_points=all_charge_points,
            disabled=False,
            created_at=now,
            updated_at=now,
        )
        .returning(users.c.id)
    )
    return int(result.scalar_one())


async def get_user(connection: AsyncConnection, username: str) -> User | None:
    row = (
        await connection.execute(select(*_USER_COLUMNS).where(users.c.username == username))
    ).first()
    return _user(row) if row else None


async def get_user_by_id(connection: AsyncConnection, user_id: int) -> User | None:
    row = (await connection.execute(select(*_USER_COLUMNS).where(users.c.id == user_id))).first()
    return _user(row) if row else None


async def list_users(connection: AsyncConnection) -> list[User]:
    rows = await connection.execute(select(*_USER_COLUMNS).order_by(users.c.username))
    return [_user(row) for row in rows]


async def update_user(
    connection: AsyncConnection, user_id: int, *, now: datetime, **values: object
) -> None:
    if "password" in values:
        password = values.pop("password")
        values["password_hash"] = hash_password(str(password)) if password else None
    if "role" in values and isinstance(values["role"], Role):
        values["role"] = values["role"].value
    await connection.execute(
        update(users).where(users.c.id == user_id).values(updated_at=now, **values)
    )


async def remove_user(connection: AsyncConnection, username: str) -> bool:
    result = await connection.execute(delete(users).where(users.c.username == username))
    return result.rowcount > 0


async def check_password(connection: AsyncConnection, username: str, password: str) -> User | None:
    """The user if ``password`` is right and the user is enabled; None otherwise."""
    row = (
        await connection.execute(
            select(*_USER_COLUMNS, users.c.password_hash).where(users.c.username == username)
        )
    ).first()
    if row is None or row.password_hash is None or row.disabled:
        # Spend the same time as a real check, so response times do not reveal usernames.
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password)
        return None
    try:
        _hasher.verify(row.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    return _user(row)


_DUMMY_HASH = _hasher.hash("not a password")


async def issue_token(
    connection: AsyncConnection,
    user_id: int,
    *,
    name: str,
    now: datetime,
    expires_at: datetime | None = None,
) -> str:
    """A new bearer token for ``user_id``; only its hash is stored, so show it now or never."""
    token = "cg_" + secrets.token_urlsafe(32)
    await connection.execute(
        insert(api_tokens).values(
            user_id=user_id,
            name=name,
            token_hash=_token_hash(token),
            created_at=now,
            expires_at=expires_at,
        )
    )
    return token


async def user_for_token(connection: AsyncConnection, token: str, now: datetime) -> User | None:
    row = (
        await connection.execute(
            select(*_USER_COLUMNS, api_tokens.c.expires_at)
            .join(api_tokens, api_tokens.c.user_id == users.c.id)
            .where(api_tokens.c.token_hash == _token_hash(token))
        )
    ).first()
    if row is None or row.disabled:
        return None
    if row.expires_at is not None and row.expires_at <= now:
        return None
    return _user(row)


async def revoke_token(connection: AsyncConnection, token: str) -> bool:
    result = await connection.execute(
        delete(api_tokens).where(api_tokens.c.token_hash == _token_hash(token))
    )
    return result.rowcount > 0


async def visible_charge_point_ids(
    connection: AsyncConnection, user: User
) -> frozenset[int] | None:
    """The charge point ids ``user`` may see through its groups; None means all of them."""
    if user.all_charge_points:
        return None
    rows = await connection.execute(
        select(group_charge_points.c.charge_point_id)
        .join(user_groups, user_groups.c.group_id == group_charge_points.c.group_id)
        .where(user_groups.c.user_id == user.id)
    )
    return frozenset(int(r[0]) for r in rows)


async def add_group(connection: AsyncConnection, name: str, now: datetime) -> int:
    result = await connection.execute(
        insert(groups).values(name=name, created_at=now).returning(groups.c.id)
    )
    return int(result.scalar_one())


async def group_id(connection: AsyncConnection, name: str) -> int | None:
    value = await connection.scalar(select(groups.c.id).where(groups.c.name == name))
    return int(value) if value is not None else None


async def add_to_group(connection: AsyncConnection, group: int, identity: str) -> bool:
    cp_id = await connection.scalar(
        select(charge_points.c.id).where(charge_points.c.identity == identity)
    )
    if cp_id is None:
        return False
    exists = await connection.scalar(
        select(group_charge_points.c.group_id).where(
            group_charge_points.c.group_id == group, group_charge_points.c.charge_point_id == cp_id
        )
    )
    if exists is None:
        await connection.execute(
            insert(group_charge_points).values(group_id=group, charge_point_id=cp_id)
        )
    return True


async def grant_group(connection: AsyncConnection, user_id: int, group: int) -> None:
    exists = await connection.scalar(
        select(user_groups.c.user_id).where(
            user_groups.c.user_id == user_id, user_groups.c.group_id == group
        )
    )
    if exists is None:
        await connection.execute(insert(user_groups).values(user_id=user_id, group_id=group))
