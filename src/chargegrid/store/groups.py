"""Groups of charge points and token housekeeping: what the users API needs beyond ``users``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.tables import (
    api_tokens,
    charge_points,
    group_charge_points,
    groups,
    user_groups,
    users,
)


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    name: str
    charge_points: tuple[str, ...]
    users: tuple[str, ...]


async def list_groups(connection: AsyncConnection) -> list[Group]:
    """Every group with its charge points' identities and its users' names, sorted by name."""
    group_rows = (
        await connection.execute(select(groups.c.id, groups.c.name).order_by(groups.c.name))
    ).all()
    members: dict[int, list[str]] = {int(r.id): [] for r in group_rows}
    grantees: dict[int, list[str]] = {int(r.id): [] for r in group_rows}
    cp_rows = await connection.execute(
        select(group_charge_points.c.group_id, charge_points.c.identity)
        .join(charge_points, charge_points.c.id == group_charge_points.c.charge_point_id)
        .order_by(charge_points.c.identity)
    )
    for group, identity in cp_rows:
        members.setdefault(int(group), []).append(identity)
    user_rows = await connection.execute(
        select(user_groups.c.group_id, users.c.username)
        .join(users, users.c.id == user_groups.c.user_id)
        .order_by(users.c.username)
    )
    for group, username in user_rows:
        grantees.setdefault(int(group), []).append(username)
    return [
        Group(
            id=int(r.id),
            name=r.name,
            charge_points=tuple(members[int(r.id)]),
            users=tuple(grantees[int(r.id)]),
        )
        for r in group_rows
    ]


async def get_group(connection: AsyncConnection, name: str) -> Group | None:
    for group in await list_groups(connection):
        if group.name == name:
            return group
    return None


async def remove_group(connection: AsyncConnection, group: int) -> None:
    # Memberships and grants go with it (ON DELETE CASCADE; SQLite runs with foreign keys on).
    await connection.execute(delete(groups).where(groups.c.id == group))


async def remove_from_group(connection: AsyncConnection, group: int, charge_point_id: int) -> bool:
    result = await connection.execute(
        delete(group_charge_points).where(
            group_charge_points.c.group_id == group,
            group_charge_points.c.charge_point_id == charge_point_id,
        )
    )
    return result.rowcount > 0


async def revoke_group(connection: AsyncConnection, user_id: int, group: int) -> bool:
    result = await connection.execute(
        delete(user_groups).where(user_groups.c.user_id == user_id, user_groups.c.group_id == group)
    )
    return result.rowcount > 0


async def user_group_names(connection: AsyncConnection, user_id: int) -> list[str]:
    rows = await connection.execute(
        select(groups.c.name)
        .join(user_groups, user_groups.c.group_id == groups.c.id)
        .where(user_groups.c.user_id == user_id)
        .order_by(groups.c.name)
    )
    return [r[0] for r in rows]


async def revoke_tokens(connection: AsyncConnection, user_id: int) -> int:
    """Revoke every API token of ``user_id``; how many there were."""
    result = await connection.execute(delete(api_tokens).where(api_tokens.c.user_id == user_id))
    return int(result.rowcount)


async def set_password_hash(
    connection: AsyncConnection, user_id: int, password_hash: str | None
) -> None:
    """Store an already computed password hash (None: token-only user)."""
    await connection.execute(
        update(users).where(users.c.id == user_id).values(password_hash=password_hash)
    )
