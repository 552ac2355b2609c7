"""Shared request helpers for the resource routers: paging, time parameters, visibility."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar, cast

from fastapi import HTTPException, Path, Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.api.deps import Principal
from chargegrid.clock import isoformat_z, parse_timestamp

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=500, description="Page size (1-500).")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="Items to skip.")]
# Transaction ids are 32-bit integers (the OCPP transactionId, a PostgreSQL integer column).
SessionId = Annotated[int, Path(ge=1, le=2_147_483_647, description="The OCPP transactionId.")]
# Ids of our own rows (integer columns): out of range is a 422, not a database error.
RowId = Annotated[int, Path(ge=1, le=2_147_483_647)]
TimeParam = Annotated[
    str | None,
    Query(description="ISO 8601 date-time, e.g. `2024-05-01T10:00:00Z` (no offset: UTC)."),
]


class Page(BaseModel, Generic[T]):
    """One page of a list and how many items match in all."""

    items: list[T]
    total: int


def parse_time(name: str, value: str | None) -> datetime | None:
    """A query parameter as aware UTC, or 422 naming the parameter and the expected format."""
    if value is None or value == "":
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        raise HTTPException(
            422,
            f"{name} must be an ISO 8601 date-time such as 2024-05-01T10:00:00Z, got {value!r}",
        ) from None


def check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and until < since:
        raise HTTPException(422, "until must not be before since")


def iso(value: datetime | None) -> str | None:
    return isoformat_z(value) if value is not None else None


def visible(principal: Principal, column: Any) -> ColumnElement[bool]:
    """A WHERE clause keeping only the charge points ``principal`` may see."""
    if principal.visible is None:
        return true()
    return column.in_(sorted(principal.visible))  # type: ignore[no-any-return]


async def count(connection: AsyncConnection, query: Select[Any]) -> int:
    """How many rows ``query`` (without ordering, limit or offset) matches."""
    total = await connection.scalar(
        select(func.count()).select_from(query.order_by(None).subquery())
    )
    return int(total or 0)


class Refusal(Exception):
    """Raised inside a write unit: its savepoint is rolled back and it becomes an HTTP error."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def write(node: Any, unit: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``unit`` atomically through the node's group-commit writer.

    Not a transaction of its own: on SQLite a transaction that reads and then writes fails at
    once with "database is locked" when the writer committed in between. The unit runs in its
    own SAVEPOINT, so a :class:`Refusal` (or any error) undoes all of it and nothing else.
    """

    async def guarded(connection: AsyncConnection) -> T | Refusal:
        try:
            async with connection.begin_nested():
                return await unit(connection)
        except Refusal as refusal:
            return refusal

    result = await node.writer.run(guarded)
    if isinstance(result, Refusal):
        raise HTTPException(result.status, result.detail)
    return cast(T, result)
